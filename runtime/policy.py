"""Whether an agent may make a tool call, and whether a human must approve it.

Runs in the runtime on the complete, schema-validated arguments, before
anything reaches the IDE. A refused call goes back to the model as a tool
error carrying :attr:`Refused.reason`, so the model can recover.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from runtime.agents import Agent
from runtime.tools import TOOLS, Effect

DEFAULT_APPROVAL_REQUIRED = frozenset(
    {"write_file", "delete_file", "move_file", "create_directory", "execute_command"}
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


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Verdict = Allowed | Refused


def check(
    agent: Agent,
    tool_name: str,
    arguments: dict[str, Any],
    *,
    approval_required: Collection[str] = DEFAULT_APPROVAL_REQUIRED,
) -> Verdict:
    """Decide one call of ``tool_name`` by ``agent`` with validated ``arguments``."""
    tool = TOOLS.get(tool_name)
    if tool is None:
        return Refused(f"unknown tool {tool_name!r}")
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
            if path is not None and not any(
                fnmatch.fnmatchcase(posixpath.basename(path).lower(), pattern)
                for pattern in agent.writable
            ):
                allowed = ", ".join(agent.writable)
                return Refused(f"the {agent.name} agent may only write {allowed}, not {path!r}")
    if tool_name in approval_required:
        return Allowed(normalised, True, f"{tool_name} changes the workspace or runs a command")
    return Allowed(normalised, False)


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
