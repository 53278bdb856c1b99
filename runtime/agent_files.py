"""Agents defined in YAML: the operator's file and a project's ``.codelab/agents.yaml``.

Both files have one shape (Roo Code's custom modes, in our words)::

    agents:
      - name: sql                       # new, or the name of an agent to override
        description: Writes SQL migrations and queries.
        prompt: You are the SQL engineer: ...
        tools: [read, edit]             # groups: read, edit, command
        writable: ["*.sql"]             # globs a write may touch (absent: any)
        model: gpt-4o                   # model group (absent: the operator's default)
        keywords: [sql, migration]      # routing when the model's answer is unusable

A new agent needs ``description`` and ``prompt``; an override inherits what
it leaves out from the agent it replaces. :func:`parse` validates a file
(pydantic) and raises :class:`AgentsInvalid` naming the file, the agent and
the field; :func:`merge` adds the agents to a :class:`~runtime.agents.Roster`.

A project's file is the project's to write, not the operator's, so it is
held to :class:`ProjectLimits`: it may add agents only with the tool groups
and model groups the operator allows, may override an agent only to narrow
it (:func:`runtime.policy.widening`), and every call of its agents that
changes files or runs a command waits for a human, whatever the operator's
``APPROVAL_REQUIRED`` and the user's approval rules say. Pure: no I/O but
:func:`load_operator_file`'s read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from runtime.agents import NAME, TOOL_GROUPS, Agent, Roster
from runtime.errors import InvalidArgument
from runtime.policy import widening
from runtime.tools import DEFAULT_APPROVAL_REQUIRED, RUNTIME_TOOLS

MAX_AGENTS = 50
"""Agents in one file."""
MAX_FILE_BYTES = 256 * 1024
"""The largest agents file read."""
PROJECT = "project"
OPERATOR = "operator"


class AgentsInvalid(InvalidArgument):
    """An agents file that cannot be used; the message names the file, agent and field."""


Group = Literal["read", "edit", "command"]


class _AgentSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    name: str = pydantic.Field(pattern=f"^{NAME.pattern}$")
    description: str | None = pydantic.Field(None, min_length=1, max_length=300)
    prompt: str | None = pydantic.Field(None, min_length=1, max_length=8000)
    tools: list[Group] | None = pydantic.Field(None, max_length=len(TOOL_GROUPS))
    writable: list[pydantic.constr(min_length=1, max_length=200)] | None = pydantic.Field(  # type: ignore[valid-type]
        None, min_length=1, max_length=50
    )
    model: str | None = pydantic.Field(None, min_length=1, max_length=128)
    keywords: list[pydantic.constr(min_length=1, max_length=40)] | None = pydantic.Field(  # type: ignore[valid-type]
        None, max_length=50
    )


class _AgentsFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    agents: list[_AgentSpec] = pydantic.Field(max_length=MAX_AGENTS)


@dataclass(frozen=True, slots=True)
class ProjectLimits:
    """What the operator lets a project's agents file grant."""

    groups: frozenset[str] = frozenset(TOOL_GROUPS)
    """Tool groups a project's new agent may have (``PROJECT_AGENT_TOOLS``)."""
    models: frozenset[str] | None = None
    """Model groups a project's agent may name (None: none; the default is used)."""


def parse(text: str, source: str) -> list[_AgentSpec]:
    """The agents of a file's ``text``; AgentsInvalid names ``source`` and the field."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise AgentsInvalid(f"{source}: larger than {MAX_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AgentsInvalid(f"{source}: not valid YAML{where}") from None
    if data is None:
        data = {"agents": []}
    try:
        return _AgentsFile.model_validate(data).agents
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        raise AgentsInvalid(f"{source}: {_where(data, error['loc'])}: {error['msg']}") from None


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a reader finds it: ``agents[1] (sql).tools[0]``."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}]"]
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str) and len(parts) == 1:
                parts[-1] += f" ({node['name'][:40]})"
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "the file"


def merge(base: Roster, text: str, source: str, *, project: ProjectLimits | None = None) -> Roster:
    """``base`` with the agents of ``text`` added or overriding; raises AgentsInvalid.

    ``project``: the file is a project's, held to those limits (see the
    module's docstring); None: the operator's, trusted.
    """
    specs = parse(text, source)
    names = [spec.name for spec in specs]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise AgentsInvalid(f"{source}: agent {duplicate!r} is defined twice")
    agents = tuple(
        _agent(spec, base.get(spec.name), f"{source}: agent {spec.name!r}", project)
        for spec in specs
    )
    return base.with_agents(agents)


def _agent(
    spec: _AgentSpec, overridden: Agent | None, where: str, project: ProjectLimits | None
) -> Agent:
    if overridden is None and (spec.description is None or spec.prompt is None):
        raise AgentsInvalid(f"{where}: a new agent needs a description and a prompt")
    groups = spec.tools if spec.tools is not None or overridden is not None else ["read"]
    base = overridden or Agent(spec.name, "", "", RUNTIME_TOOLS)
    agent = replace(
        base,
        description=spec.description or base.description,
        role=spec.prompt or base.role,
        tools=base.tools
        if groups is None
        else frozenset().union(*(TOOL_GROUPS[group] for group in groups)) | RUNTIME_TOOLS,
        writable=base.writable if spec.writable is None else tuple(spec.writable),
        keywords=base.keywords if spec.keywords is None else tuple(spec.keywords),
        model=base.model if spec.model is None else spec.model,
        origin=OPERATOR if project is None else PROJECT,
    )
    if project is None:
        return agent
    if overridden is not None:
        gain = widening(overridden, agent)
        if gain is not None:
            raise AgentsInvalid(f"{where}: a project may only narrow an existing agent, but {gain}")
    else:
        refused = sorted(set(groups or ()) - project.groups)
        if refused:
            allowed = ", ".join(sorted(project.groups)) or "no tool groups"
            raise AgentsInvalid(
                f"{where}.tools: the operator lets a project's agents have only {allowed}, "
                f"not {', '.join(refused)}"
            )
    if spec.model is not None and spec.model not in (project.models or ()):
        offered = ", ".join(sorted(project.models or ())) or "none"
        raise AgentsInvalid(f"{where}.model: {spec.model!r} is not offered (offered: {offered})")
    return replace(agent, always_ask=agent.tools & DEFAULT_APPROVAL_REQUIRED)


def load_operator_file(path: str, base: Roster) -> Roster:
    """``base`` with the agents of the operator's file at ``path``; raises
    AgentsInvalid (naming the file and field) when it cannot be read or used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentsInvalid(f"{path}: cannot be read: {exc}") from None
    return merge(base, text, path)
