"""A project's own files the agents heed: its rules and its agents, read through the IDE.

The runtime has no access to the workspace: it learns of these files from
the listing it makes at a session's first turn (:func:`runtime.subcalls.fetch_view`)
and reads them with ``read_file`` calls of its own, before the turn's first
model call, like the listing itself (no approval: they only read). Read:

- rules, added to every agent's system prompt with their origin
  (:mod:`runtime.prompts`): ``AGENTS.md`` at the root, ``.codelab/rules/*.md``,
  and the files other agents use, ``.clinerules`` and ``.roorules``, each a
  file or a folder of ``.md``/``.txt`` files;
- ``.codelab/agents.yaml``: the project's agents (:mod:`runtime.agent_files`,
  within what the operator allows).

At most :data:`MAX_FILES` files and :data:`MAX_RULES_CHARS` characters of
rules; the prompt says what was cut. The reads are IDE calls the runtime
issues itself (:func:`runtime.subcalls.read_project`). What was read is kept
with the live session (:class:`ProjectFiles`, in memory) and read again when the IDE
reports a change to one of these paths (``file_changed``), at the next
turn's start. The rules are the project's, so they are treated as such: they
add instructions, and can change no tool's policy or approval.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime import listing
from runtime.agent_files import AgentsInvalid, ProjectLimits, merge
from runtime.agents import BUILT_IN, Roster

AGENTS_FILE = ".codelab/agents.yaml"
RULE_FOLDERS = (".codelab/rules/", ".clinerules/", ".roorules/")
RULE_FILES = ("AGENTS.md", ".clinerules", ".roorules")
MAX_FILES = 20
"""Project files read at most (the agents file among them)."""
MAX_RULES_CHARS = 16_000
"""Characters of rules put in the prompt at most (about 4,000 tokens)."""
MAX_USER_CHARS = 8_000
"""Characters of a user's custom instructions (:mod:`runtime.instructions`)."""


def kind(path: str) -> str | None:
    """``"rules"``, ``"agents"`` or None: what the workspace-relative ``path`` is to us."""
    path = posixpath.normpath(path.replace("\\", "/")) if path else path
    if path == AGENTS_FILE:
        return "agents"
    if path in RULE_FILES:
        return "rules"
    name = posixpath.basename(path)
    if name.startswith("."):
        return None
    if path.startswith(".codelab/rules/"):
        return "rules" if name.endswith(".md") else None
    if path.startswith(RULE_FOLDERS) and name.endswith((".md", ".txt")):
        return "rules"
    return None


def order(path: str) -> tuple[int, str]:
    """AGENTS.md, then .codelab/rules, .clinerules, .roorules, then the agents file."""
    for rank, prefix in enumerate(("AGENTS.md", ".codelab/rules/", ".clinerules", ".roorules")):
        if path.startswith(prefix):
            return rank, path
    return 9, path


def discover(result: Mapping[str, Any]) -> list[str]:
    """The project files a ``list_files`` answer names, in prompt order, at most MAX_FILES."""
    found = {path for path, is_dir in listing.entries(result) if not is_dir and kind(path)}
    ordered = sorted(found, key=order)
    if AGENTS_FILE in found and len(ordered) > MAX_FILES:
        ordered = [*ordered[: MAX_FILES - 1], AGENTS_FILE]
    return ordered[:MAX_FILES]


@dataclass(frozen=True, slots=True)
class Guidance:
    """What every system prompt of a session adds: the project's rules and the
    user's own instructions. Hashable: prompts are cached by it."""

    rules: tuple[tuple[str, str], ...] = ()
    """(the file it comes from, its text), in order."""
    omitted: str = ""
    """What was cut to stay within :data:`MAX_RULES_CHARS`, said in the prompt."""
    user: str = ""
    """The user's custom instructions."""


@dataclass(slots=True)
class ProjectFiles:
    """A live session's project files, as read (in memory only)."""

    operator: Roster = BUILT_IN
    """The agents without the project's: built-ins and the operator's file."""
    limits: ProjectLimits = field(default_factory=ProjectLimits)
    contents: dict[str, str] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    """Paths to read (again) at the next turn's start."""
    agents: Roster = BUILT_IN
    guidance: Guidance = field(default_factory=Guidance)
    user: str = ""

    def __post_init__(self) -> None:
        self.agents = self.operator

    def changed(self, path: str) -> None:
        """The IDE saw ``path`` change: read it again if it is one of ours."""
        if kind(path) is not None and len(self.stale) < MAX_FILES:
            self.stale.add(posixpath.normpath(path.replace("\\", "/")))

    def read(self, path: str, content: str | None) -> None:
        """``path`` was read (None: it could not be, so it is gone)."""
        if content is None:
            self.contents.pop(path, None)
        elif len(self.contents) < MAX_FILES or path in self.contents:
            self.contents[path] = content

    def compose(self) -> str | None:
        """Build the rules and agents from what was read; the agents file's
        problem, if it has one (the operator's agents are used then)."""
        rules: list[tuple[str, str]] = []
        budget, cut = MAX_RULES_CHARS, []
        for path in sorted(self.contents, key=order):
            text = self.contents[path].strip()
            if kind(path) != "rules" or not text:
                continue
            if len(text) > budget:
                cut.append(f"{len(text) - budget:,} characters of {path}")
                text = text[:budget]
            if text:
                rules.append((path, text))
            budget -= len(text)
        omitted = ""
        if cut:
            omitted = f"(cut to {MAX_RULES_CHARS:,} characters: {'; '.join(cut)} not shown)"
        self.guidance = Guidance(tuple(rules), omitted, self.user)
        agents_file = self.contents.get(AGENTS_FILE)
        self.agents = self.operator
        if agents_file is None:
            return None
        try:
            self.agents = merge(self.operator, agents_file, AGENTS_FILE, project=self.limits)
        except AgentsInvalid as exc:
            return f"{exc}; the project's agents are not used"
        return None

    def set_user(self, text: str) -> None:
        """The user's custom instructions, as stored (read at each turn's start)."""
        if text != self.user:
            self.user = text
            self.guidance = Guidance(self.guidance.rules, self.guidance.omitted, text)
