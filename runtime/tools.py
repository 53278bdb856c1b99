"""The tools an agent may call: each declared once, here.

A :class:`Tool` says everything the runtime knows of it: the JSON schema the
model sees, which side runs it (IDE tools are executed by the IDE, which gets
``tool_call`` and answers ``tool_result``; runtime tools are executed here),
what it does to the workspace, which arguments are workspace paths, and
whether a human approves it by default. The agents' tool groups
(:data:`READ_TOOLS`, :data:`IDE_TOOLS`, :data:`RUNTIME_TOOLS`,
:data:`SEARCH_TOOLS`), the policy and the default approvals
(:data:`DEFAULT_APPROVAL_REQUIRED`) are derived from these declarations;
adding a tool is one entry in :data:`TOOLS` (plus its implementation in the
IDE, in :mod:`runtime.dispatch` for a runtime tool, or in an executor,
:mod:`runtime.executors`). :func:`runtime.policy.check` is the one gate a
call passes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import jsonschema

from runtime.llm import ToolSpec


class Side(enum.Enum):
    IDE = "ide"
    """The IDE runs it: it gets ``tool_call`` and answers ``tool_result``."""
    RUNTIME = "runtime"
    """The runtime runs it, with no workspace access (switch, finish, ask, plan)."""
    COMPOSED = "composed"
    """The runtime runs it as IDE calls of the tools in :attr:`Tool.made_of`
    (an edit: ``read_file``, then a ``write_file`` of the edited content), so
    it works with every IDE that implements those."""
    EXECUTOR = "executor"
    """The runtime runs it, with I/O, once it may (:mod:`runtime.executions`):
    approved like an IDE tool, run by the executor that claims its name (an
    MCP server's tool, :mod:`runtime.mcp`; ``codebase_search``,
    :mod:`runtime.search`), its result recorded like an IDE's."""


class Effect(enum.Enum):
    """What a tool does to the workspace; policy and approvals key on it."""

    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    side: Side
    effect: Effect
    path_fields: tuple[str, ...] = ()
    """Argument names holding workspace paths (checked by the policy)."""
    approval: bool = False
    """Whether a human approves a call by default (``APPROVAL_REQUIRED`` overrides)."""
    made_of: tuple[str, ...] = ()
    """For a :attr:`Side.COMPOSED` tool, the IDE tools it is run with."""

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


class ArgumentsInvalid(ValueError):
    """The arguments do not match the tool's schema; the message says where."""


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "read_file",
            "Read a text file of the workspace, optionally only a range of lines.",
            _object(
                {
                    "path": _PATH | {"description": "workspace-relative path"},
                    "start_line": {"type": "integer", "minimum": 1},
                    "end_line": {"type": "integer", "minimum": 1},
                },
                ["path"],
            ),
            Side.IDE,
            Effect.READ,
            ("path",),
        ),
        Tool(
            "write_file",
            "Create or overwrite a text file of the workspace with the given content.",
            _object(
                {
                    "path": _PATH | {"description": "workspace-relative path"},
                    "content": {"type": "string", "maxLength": 4_000_000},
                    "create_dirs": {
                        "type": "boolean",
                        "description": (
                            "create missing parent directories; IDEs default to false, so "
                            "send true to write into a folder that does not exist yet"
                        ),
                    },
                },
                ["path", "content"],
            ),
            Side.IDE,
            Effect.WRITE,
            ("path",),
            approval=True,
        ),
        Tool(
            "apply_diff",
            (
                "Change part of an existing text file: each block's `search` text must occur "
                "exactly once in the file (copy it, whitespace included, from a fresh "
                "read_file) and is replaced by `replace`. Prefer this to write_file for any "
                "change to an existing file; the user approves the resulting diff."
            ),
            _object(
                {
                    "path": _PATH | {"description": "workspace-relative path of an existing file"},
                    "blocks": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 50,
                        "items": _object(
                            {
                                "search": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": 200_000,
                                    "description": "exact text to find, occurring once",
                                },
                                "replace": {"type": "string", "maxLength": 200_000},
                            },
                            ["search", "replace"],
                        ),
                    },
                },
                ["path", "blocks"],
            ),
            Side.COMPOSED,
            Effect.WRITE,
            ("path",),
            approval=True,
            made_of=("read_file", "write_file"),
        ),
        Tool(
            "insert_content",
            (
                "Insert lines into an existing text file before line `line` (1-based); "
                "line 0 appends at the end. The user approves the resulting diff."
            ),
            _object(
                {
                    "path": _PATH | {"description": "workspace-relative path of an existing file"},
                    "line": {"type": "integer", "minimum": 0},
                    "content": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
                },
                ["path", "line", "content"],
            ),
            Side.COMPOSED,
            Effect.WRITE,
            ("path",),
            approval=True,
            made_of=("read_file", "write_file"),
        ),
        Tool(
            "list_files",
            "List files under a workspace directory, optionally recursively and by glob.",
            _object(
                {
                    "path": _PATH | {"description": "workspace-relative directory, '.' for root"},
                    "recursive": {"type": "boolean"},
                    "pattern": {"type": "string", "maxLength": 256, "description": "glob"},
                    "include_hidden": {
                        "type": "boolean",
                        "description": "also list names starting with a dot",
                    },
                },
                ["path"],
            ),
            Side.IDE,
            Effect.READ,
            ("path",),
        ),
        Tool(
            "search_in_code",
            "Search the workspace's files for a regular expression.",
            _object(
                {
                    "query": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "path": _PATH | {"description": "directory to search, '.' for root"},
                    "file_pattern": {
                        "type": "string",
                        "maxLength": 256,
                        "description": "glob the searched files' names must match",
                    },
                    "case_sensitive": {"type": "boolean"},
                    "regex": {"type": "boolean"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                ["query"],
            ),
            Side.IDE,
            Effect.READ,
            ("path",),
        ),
        Tool(
            "create_directory",
            "Create a directory (and its parents) in the workspace.",
            _object({"path": _PATH}, ["path"]),
            Side.IDE,
            Effect.WRITE,
            ("path",),
            approval=True,
        ),
        Tool(
            "execute_command",
            "Run a shell command in the workspace and return its output.",
            _object(
                {
                    "command": {"type": "string", "minLength": 1, "maxLength": 8192},
                    "cwd": _PATH | {"description": "workspace-relative working directory"},
                    "timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
                },
                ["command"],
            ),
            Side.IDE,
            Effect.EXECUTE,
            ("cwd",),
            approval=True,
        ),
        Tool(
            "delete_file",
            "Delete a file of the workspace.",
            _object({"path": _PATH}, ["path"]),
            Side.IDE,
            Effect.WRITE,
            ("path",),
            approval=True,
        ),
        Tool(
            "move_file",
            "Move or rename a file of the workspace.",
            _object({"source": _PATH, "destination": _PATH}, ["source", "destination"]),
            Side.IDE,
            Effect.WRITE,
            ("source", "destination"),
            approval=True,
        ),
        Tool(
            "switch_mode",
            "Hand the conversation to another agent, which continues the same request.",
            _object(
                {
                    # One of the session's agents (checked when it runs): the
                    # built-ins, the operator's and the project's (runtime.agents).
                    "agent": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"},
                    "reason": {"type": "string", "maxLength": 1000},
                },
                ["agent", "reason"],
            ),
            Side.RUNTIME,
            Effect.NONE,
        ),
        Tool(
            "attempt_completion",
            "Declare the task done and give the user the final result.",
            _object({"result": {"type": "string", "maxLength": 100_000}}, ["result"]),
            Side.RUNTIME,
            Effect.NONE,
        ),
        Tool(
            "ask_followup_question",
            "Ask the user a question when the request is ambiguous; the turn ends here.",
            _object(
                {"question": {"type": "string", "minLength": 1, "maxLength": 4000}}, ["question"]
            ),
            Side.RUNTIME,
            Effect.NONE,
        ),
        Tool(
            "codebase_search",
            (
                "Semantic search: find the code most related to a natural-language query "
                "among the files this session has read in full or written, ranked by "
                "similarity, with path, line range and text. Files not read yet are not "
                "searched: use search_in_code for exact text anywhere in the workspace."
            ),
            _object(
                {
                    "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "path": _PATH | {"description": "only files at or under this path"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                ["query"],
            ),
            Side.EXECUTOR,
            Effect.READ,
            ("path",),
        ),
        Tool(
            "update_plan",
            "Publish the plan (all steps) or update step statuses.",
            _object(
                {
                    "plan_id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "steps": {
                        "type": "array",
                        "maxItems": 100,
                        "items": _object(
                            {
                                "id": {"type": "string", "minLength": 1, "maxLength": 64},
                                "description": {"type": "string", "maxLength": 2000},
                                "status": {
                                    "type": "string",
                                    "enum": ["pending", "in_progress", "done", "failed", "skipped"],
                                },
                            },
                            ["id", "description", "status"],
                        ),
                    },
                    "requires_approval": {"type": "boolean"},
                },
                ["plan_id", "steps"],
            ),
            Side.RUNTIME,
            Effect.NONE,
        ),
    )
}


def _names(
    *, sides: frozenset[Side], effects: frozenset[Effect] = frozenset(Effect)
) -> frozenset[str]:
    return frozenset(
        name for name, tool in TOOLS.items() if tool.side in sides and tool.effect in effects
    )


_IDE = frozenset({Side.IDE})
READ_TOOLS = _names(sides=_IDE, effects=frozenset({Effect.READ}))
"""The IDE tools that only read: every agent has them."""
IDE_TOOLS = _names(sides=_IDE)
EDIT_TOOLS = _names(sides=frozenset({Side.COMPOSED}), effects=frozenset({Effect.WRITE}))
"""Targeted edits of a file (``apply_diff``, ``insert_content``), run as IDE reads and writes."""
RUNTIME_TOOLS = _names(sides=frozenset({Side.RUNTIME}))
"""The runtime's own tools (switch agents, finish, ask, plan): every agent has them."""
SEARCH_TOOLS = _names(sides=frozenset({Side.EXECUTOR}), effects=frozenset({Effect.READ}))
"""Reads the runtime runs over what it holds of the workspace (``codebase_search``):
they go with the IDE's reads (the ``read`` group of an agents file); an agent lacking
one would make a switch to one that has it wait for a human
(:func:`runtime.policy.widening`)."""
WRITE_TOOLS = _names(sides=frozenset({Side.IDE, Side.COMPOSED}), effects=frozenset({Effect.WRITE}))
DEFAULT_APPROVAL_REQUIRED = frozenset(name for name, tool in TOOLS.items() if tool.approval)
"""The tools a human approves unless ``APPROVAL_REQUIRED`` says otherwise."""

_VALIDATORS = {
    name: jsonschema.Draft202012Validator(tool.parameters) for name, tool in TOOLS.items()
}


def validate_arguments(tool: str | Tool, arguments: Any) -> dict[str, Any]:
    """Return ``arguments`` if they match the tool's schema.

    ``tool``: a name in :data:`TOOLS`, or a declaration made at run time (an
    MCP server's tool, whose schema says which JSON Schema draft it is).
    Raises KeyError for an unknown tool name and ArgumentsInvalid, naming the
    first problem's location, for arguments that do not match.
    """
    validator: jsonschema.protocols.Validator
    if isinstance(tool, str) or tool.name in _VALIDATORS:
        validator = _VALIDATORS[tool if isinstance(tool, str) else tool.name]
    else:
        cls = jsonschema.validators.validator_for(tool.parameters, jsonschema.Draft202012Validator)
        validator = cls(tool.parameters)
    if not isinstance(arguments, dict):
        raise ArgumentsInvalid("arguments must be a JSON object")
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        raise ArgumentsInvalid(f"{where}: {error.message}")
    return arguments
