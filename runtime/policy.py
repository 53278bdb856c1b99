"""Whether an agent may make a tool call, and whether a human must approve it.

:func:`check` is the one gate every call passes, the model's and a human's
edit of it alike: it refuses an unknown tool, arguments that are not JSON or
do not match the tool's schema, a tool the agent may not use and a path it
may not touch. It runs in the runtime on the complete arguments, before
anything reaches the IDE. A refused call goes back to the model as a tool
error carrying :attr:`Refused.reason`, so the model can recover.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import posixpath
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.agents import Agent
from runtime.tools import (
    DEFAULT_APPROVAL_REQUIRED,
    TOOLS,
    ArgumentsInvalid,
    Effect,
    Tool,
    validate_arguments,
)

_DRIVE = re.compile(r"^[A-Za-z]:")

MAX_PATH_LENGTH = 4096
"""Characters in a workspace path (Linux's PATH_MAX); longer ones are refused."""


class PathRefused(ValueError):
    """A path is absolute, escapes the workspace or is otherwise unusable."""


def workspace_path(raw: str) -> str:
    """Normalise a workspace-relative path, or raise PathRefused.

    Backslashes count as separators (Windows IDEs); absolute paths, drive
    letters, ``~``, NUL bytes and anything that resolves outside the
    workspace with ``..`` are refused. ``""`` and ``"."`` mean the root.
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise PathRefused(f"path is longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in raw:
        raise PathRefused("path contains a NUL byte")
    path = raw.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise PathRefused(f"absolute paths are not allowed: {raw!r}")
    if path.startswith("~"):
        raise PathRefused(f"home-relative paths are not allowed: {raw!r}")
    normal = posixpath.normpath(path) if path else "."
    if normal == ".." or normal.startswith("../"):
        raise PathRefused(f"path escapes the workspace: {raw!r}")
    return normal


@dataclass(frozen=True, slots=True)
class Allowed:
    arguments: dict[str, Any]
    """The arguments with their paths normalised."""
    requires_approval: bool
    reason: str = ""


class Grounds(enum.Enum):
    """Why a call was refused: the call is malformed, or the agent may not make it."""

    UNKNOWN_TOOL = "unknown_tool"
    NOT_JSON = "not_json"
    INVALID = "invalid"
    """The arguments do not match the tool's schema."""
    DENIED = "denied"
    """A well-formed call the agent may not make (tool or path)."""
    RULE = "rule"
    """A call the user's own approval rules deny (:mod:`runtime.rules`)."""


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    grounds: Grounds = Grounds.DENIED

    def to_model(self) -> str:
        """The refusal as the model is told it (in the call's tool message)."""
        match self.grounds:
            case Grounds.INVALID:
                return f"invalid arguments: {self.reason}"
            case Grounds.DENIED:
                return f"refused by policy: {self.reason}"
            case Grounds.RULE:
                return f"denied by your approval rules: {self.reason}"
        return self.reason

    def to_editor(self) -> str:
        """The refusal of a human's edit, as the one who edited is told it."""
        if self.grounds in (Grounds.NOT_JSON, Grounds.INVALID):
            return f"edited arguments are invalid: {self.reason}"
        return f"edited call refused: {self.reason}"


Verdict = Allowed | Refused


def check(
    agent: Agent,
    tool_name: str,
    arguments: str | dict[str, Any],
    *,
    approval_required: Collection[str] = DEFAULT_APPROVAL_REQUIRED,
    tools: Mapping[str, Tool] = TOOLS,
) -> Verdict:
    """Decide one call of ``tool_name`` by ``agent``.

    ``arguments`` is the model's JSON text (empty for none) or a decoded
    object (a human's edit). Allowed carries them checked against the
    tool's schema and with their paths normalised. ``tools``: the tools a
    call may name (with those declared at run time, :mod:`runtime.executors`).
    """
    tool = tools.get(tool_name)
    if tool is None:
        return Refused(f"unknown tool {tool_name!r}", Grounds.UNKNOWN_TOOL)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return Refused("the arguments are not valid JSON", Grounds.NOT_JSON)
    try:
        arguments = validate_arguments(tool, arguments)
    except ArgumentsInvalid as exc:
        return Refused(str(exc), Grounds.INVALID)
    if tool_name not in agent.tools:
        return Refused(f"the {agent.name} agent may not use {tool_name}")
    normalised = dict(arguments)
    for field in tool.path_fields:
        if field in normalised:
            try:
                normalised[field] = workspace_path(normalised[field])
            except PathRefused as exc:
                return Refused(str(exc))
    if tool.effect is Effect.WRITE and agent.writable is not None:
        for field in tool.path_fields:
            path = normalised.get(field)
            if path is not None and not writable(path, agent.writable):
                allowed = ", ".join(agent.writable)
                return Refused(f"the {agent.name} agent may only write {allowed}, not {path!r}")
    if tool_name in approval_required or tool_name in agent.always_ask:
        return Allowed(normalised, True, f"{tool_name} changes the workspace or runs a command")
    return Allowed(normalised, False)


def writable(path: str, patterns: Collection[str]) -> bool:
    """Whether the normalised ``path`` matches one of ``patterns``, case-insensitively:
    a pattern without ``/`` (``*.md``) matches the file's name in any folder, one
    with ``/`` (``db/*.sql``) the whole workspace-relative path."""
    name, lowered = posixpath.basename(path).lower(), path.lower()
    return any(
        fnmatch.fnmatchcase(lowered if "/" in pattern else name, pattern.lower().lstrip("/"))
        for pattern in patterns
    )


def widening(current: Agent, target: Agent) -> str | None:
    """What ``target`` may do that ``current`` may not, or None if nothing.

    A switch the model asks for that widens the session's rights (more
    tools, wider write paths) is approved by a human like any dangerous
    call; a switch to an agent that may do no more happens at once.
    """
    gained = sorted(target.tools - current.tools)
    if gained:
        return f"the {target.name} agent may also use {', '.join(gained)}"
    if target.writes and current.writable is not None:
        if target.writable is None:
            return f"the {target.name} agent may write any file"
        wider = sorted(set(target.writable) - set(current.writable))
        if wider:
            return f"the {target.name} agent may also write {', '.join(wider)}"
    return None
