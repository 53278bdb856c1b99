"""A user's approval rules: the calls that run without asking them, and those that never run.

Modelled on Claude Code's permission rules (``allow``/``deny`` lists of
``Tool(specifier)`` strings; deny wins) and Roo Code's auto-approve (per
kind of action, a cap on auto-approved requests). Pure: parsing,
validating and deciding, no I/O; :mod:`runtime.rules_store` keeps each
user's rules, :meth:`runtime.dispatch.Dispatcher.approval_for` applies them
with the operator's floor (:class:`OperatorLimits`).

A rule is ``TOOL`` or ``TOOL(SPECIFIER)``. ``TOOL`` is an IDE-side tool
(``write_file``, ``execute_command``…), an MCP server's tool
(``mcp__SERVER__TOOL``, never with a specifier) or a group: ``edit`` (every
tool that changes the workspace: write_file, apply_diff, insert_content,
create_directory, delete_file, move_file) or ``read`` (read_file,
list_files, search_in_code). Alone, it matches every call of the tool.

- ``execute_command(pytest:*)``: a command whose words start with these
  (word-boundary: ``pytest`` and ``pytest -q``, not ``pytestx``);
  ``execute_command(npm test)``: exactly that command. A line of several
  commands (``a && b``, ``a | b``…) is allowed only if each is
  (:mod:`runtime.shell`).
- ``edit(src/**)``, ``read(.env)``: a glob on the workspace-relative path
  (``*`` within a folder, ``**`` across folders, ``?``, ``[…]``); a leading
  ``/`` is the workspace root; a pattern without ``/`` matches a file's name
  in any folder. A move must match with both paths to be allowed, and is
  denied if either matches.

:func:`decide` answers one call: DENY (a deny rule matches: refused, the
model is told), ALLOW (allow rules cover it, nothing forbids it) or ASK.
Never allowed, whatever the rules: :data:`runtime.shell.ALWAYS_ASK` commands,
lines :func:`runtime.shell.split` cannot vouch for, writes under ``.git/``
(hooks run code). :func:`suggest_rule` is what "always allow this" adds.
"""

from __future__ import annotations

import enum
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from runtime import shell
from runtime.errors import InvalidArgument
from runtime.tools import DEFAULT_APPROVAL_REQUIRED, READ_TOOLS, TOOLS, WRITE_TOOLS, Side

MAX_RULES = 200
"""Rules in each list (allow, deny)."""
MAX_RULE_CHARS = 1000
"""Characters in one rule."""
MAX_AUTO_APPROVALS_PER_TURN = 25
"""The operator's default cap on calls auto-approved in one turn."""

GROUPS: Mapping[str, frozenset[str]] = {"edit": WRITE_TOOLS, "read": READ_TOOLS}
"""Names a rule may use for several tools."""
RULE_TOOLS = frozenset(name for name, tool in TOOLS.items() if tool.side is not Side.RUNTIME)
"""The tools rules apply to: the IDE's (the runtime's own are decided elsewhere)."""
COMMAND_TOOL = "execute_command"
MCP_TOOL = re.compile(r"mcp__[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*__[A-Za-z0-9_-]+")
"""An MCP server's tool (:func:`runtime.mcp.tool_name`): a rule may name one no server lists yet."""
GIT_DIR_WRITES = "writes under .git/ (hooks run code)"
ALWAYS_ASK = (*(d.name for d in shell.ALWAYS_ASK), GIT_DIR_WRITES)
"""What no rule auto-approves, as the user is shown it."""


class RulesInvalid(InvalidArgument):
    """Rules that cannot be used; the message names the rule and what is wrong."""


class Kind(enum.Enum):
    ANY = "any"
    """``TOOL`` alone: every call."""
    EXACT = "exact"
    """A command, word for word."""
    PREFIX = "prefix"
    """A command starting with these words."""
    GLOB = "glob"
    """A path pattern."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule; :attr:`text` is how it is stored and shown."""

    text: str
    tools: frozenset[str]
    kind: Kind
    words: shell.Words = ()
    pattern: re.Pattern[str] | None = None
    by_name: bool = False
    """The glob has no ``/``: it matches a file's name in any folder."""

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Read a rule; raises RulesInvalid saying what is wrong with it."""
        if not isinstance(text, str):
            raise RulesInvalid(f"a rule must be a string, not {json.dumps(text)[:60]}")
        stripped = text.strip()
        if not stripped or len(stripped) > MAX_RULE_CHARS:
            raise RulesInvalid(f"a rule has 1 to {MAX_RULE_CHARS} characters")
        name, paren, rest = stripped.partition("(")
        name = name.strip()
        if MCP_TOOL.fullmatch(name):  # declared at run time: its name alone
            if paren:
                raise RulesInvalid(f"{stripped!r}: an MCP tool's rule is its name alone")
            return cls(name, frozenset({name}), Kind.ANY)
        tools = GROUPS.get(name) or (frozenset({name}) if name in RULE_TOOLS else None)
        if tools is None:
            known = ", ".join(sorted({*GROUPS, *RULE_TOOLS}))
            raise RulesInvalid(f"{stripped!r}: {name!r} is not a tool rules apply to ({known})")
        if not paren:
            return cls(name, tools, Kind.ANY)
        if not rest.endswith(")") or not rest[:-1].strip():
            raise RulesInvalid(f"{stripped!r} is not TOOL or TOOL(SPECIFIER)")
        specifier = rest[:-1].strip()
        if name == COMMAND_TOOL:
            return _command_rule(stripped, specifier)
        return _path_rule(name, tools, specifier)

    def covers(self, tool_name: str) -> bool:
        return tool_name in self.tools

    def matches_command(self, words: shell.Words) -> bool:
        if self.kind is Kind.ANY:
            return True
        if self.kind is Kind.EXACT:
            return words == self.words
        return self.kind is Kind.PREFIX and words[: len(self.words)] == self.words

    def matches_path(self, path: str) -> bool:
        if self.kind is Kind.ANY:
            return True
        if self.pattern is None:
            return False
        subject = path.rsplit("/", 1)[-1] if self.by_name else path
        return self.pattern.fullmatch(subject) is not None


def _command_rule(text: str, specifier: str) -> Rule:
    kind = Kind.EXACT
    for suffix in (":*", " *"):
        if specifier.endswith(suffix):
            kind, specifier = Kind.PREFIX, specifier[: -len(suffix)].rstrip()
            break
    if "*" in specifier:
        raise RulesInvalid(
            f"{text!r}: * may only end a command rule, as :* (execute_command(npm run:*))"
        )
    parsed = shell.split(specifier)
    if parsed.hazard or len(parsed.commands) != 1:
        raise RulesInvalid(
            f"{text!r}: a command rule names one simple command "
            f"({parsed.hazard or 'no ;, &&, |, & or newlines'})"
        )
    words = parsed.commands[0]
    shown = shlex.join(words) + (":*" if kind is Kind.PREFIX else "")
    return Rule(f"{COMMAND_TOOL}({shown})", frozenset({COMMAND_TOOL}), kind, words)


def _path_rule(name: str, tools: frozenset[str], specifier: str) -> Rule:
    text = f"{name}({specifier})"
    pattern = specifier.replace("\\", "/")
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    segments = pattern.split("/")
    if not pattern or "\x00" in pattern or ".." in segments or pattern.startswith("~"):
        raise RulesInvalid(
            f"{text!r}: a path pattern is workspace-relative (no .., ~ or empty pattern)"
        )
    by_name = not anchored and "/" not in pattern.rstrip("/")
    return Rule(text, tools, Kind.GLOB, pattern=_glob(pattern.rstrip("/")), by_name=by_name)


def _glob(pattern: str) -> re.Pattern[str]:
    """``pattern`` as a regular expression over a whole path."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            negated = body.startswith("!")
            body = re.escape(body[1:] if negated else body).replace("\\-", "-")
            out.append(f"[{'^' if negated else ''}{body}]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True, slots=True)
class ApprovalRules:
    """One user's rules: ``allow`` and ``deny`` lists and their own per-turn cap."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    max_auto_approvals_per_turn: int | None = None
    """At most this many auto-approved calls per turn; None: the operator's cap."""

    @classmethod
    def from_json(cls, data: Any) -> ApprovalRules:
        """Read ``{"allow": [...], "deny": [...], "max_auto_approvals_per_turn": N}``
        (every key optional; null cap: the operator's). Raises RulesInvalid
        naming the key or rule that is wrong."""
        if not isinstance(data, Mapping):
            raise RulesInvalid("approval rules are a JSON object")
        unknown = sorted(set(data) - {"allow", "deny", "max_auto_approvals_per_turn"})
        if unknown:
            raise RulesInvalid(f"unknown keys {', '.join(unknown)} (allow, deny, max_…)")
        cap = data.get("max_auto_approvals_per_turn")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise RulesInvalid("max_auto_approvals_per_turn is a whole number from 0, or null")
        return cls(_rules(data, "allow"), _rules(data, "deny"), cap)

    def to_json(self) -> dict[str, Any]:
        return {
            "allow": [rule.text for rule in self.allow],
            "deny": [rule.text for rule in self.deny],
            "max_auto_approvals_per_turn": self.max_auto_approvals_per_turn,
        }

    def allowing(self, rule: Rule) -> ApprovalRules:
        """These rules with ``rule`` allowed too (no change if it already is).
        Raises RulesInvalid past :data:`MAX_RULES`."""
        if any(existing.text == rule.text for existing in self.allow):
            return self
        if len(self.allow) >= MAX_RULES:
            raise RulesInvalid(f"there are {MAX_RULES} allow rules already, the most there can be")
        return replace(self, allow=(*self.allow, rule))


def _rules(data: Mapping[str, Any], key: str) -> tuple[Rule, ...]:
    texts = data.get(key)
    if texts is None:
        return ()
    if not isinstance(texts, list):
        raise RulesInvalid(f"{key} is a list of rules")
    if len(texts) > MAX_RULES:
        raise RulesInvalid(f"{key} has more than {MAX_RULES} rules")
    parsed: dict[str, Rule] = {}
    for position, text in enumerate(texts):
        try:
            rule = Rule.parse(text)
        except RulesInvalid as exc:
            raise RulesInvalid(f"{key}[{position}]: {exc}") from None
        parsed.setdefault(rule.text, rule)
    return tuple(parsed.values())


@dataclass(frozen=True, slots=True)
class OperatorLimits:
    """The floor the operator sets under every user's rules."""

    user_auto_approve: frozenset[str] = DEFAULT_APPROVAL_REQUIRED
    """The tools rules may auto-approve (``AGENT_RUNTIME__USER_AUTO_APPROVE``)."""
    max_auto_approvals_per_turn: int = MAX_AUTO_APPROVALS_PER_TURN
    """The cap a user's own can only lower (``AGENT_RUNTIME__MAX_AUTO_APPROVALS_PER_TURN``)."""

    def cap(self, rules: ApprovalRules) -> int:
        """Calls one turn may auto-approve under ``rules``."""
        own = rules.max_auto_approvals_per_turn
        limit = self.max_auto_approvals_per_turn
        return limit if own is None else min(own, limit)

    def approval(
        self,
        rules: ApprovalRules,
        decision: Decision,
        tool_name: str,
        requires_approval: bool,
        take_auto_approval: Callable[[int], bool],
    ) -> Approval:
        """Whether a call ``rules`` did not deny waits for a human, under this floor.

        One that needs no approval runs. One that does is auto-approved when
        ``decision`` allows it, the tool is in :attr:`user_auto_approve`, and
        ``take_auto_approval(cap)`` counts it against the turn's cap (False at
        the cap). Asked otherwise, with a note saying why when the user has
        rules for the tool.
        """
        if not requires_approval:
            return Approval(ask=False)
        if decision.outcome is not Outcome.ALLOW:
            speaks = any(rule.covers(tool_name) for rule in rules.allow)
            return Approval(ask=True, note=decision.reason if speaks else "")
        if tool_name not in self.user_auto_approve:
            return Approval(True, f"the operator lets no rule auto-approve {tool_name}")
        cap = self.cap(rules)
        if not take_auto_approval(cap):
            return Approval(True, f"this turn's {cap} auto-approved calls are used up")
        return Approval(ask=False, note=f"auto-approved by your rule {decision.rule}")

    def check(self, rules: ApprovalRules) -> None:
        """Raise RulesInvalid when ``rules`` ask for more than the operator allows."""
        own = rules.max_auto_approvals_per_turn
        if own is not None and own > self.max_auto_approvals_per_turn:
            raise RulesInvalid(
                f"max_auto_approvals_per_turn is at most {self.max_auto_approvals_per_turn} "
                "(the operator's cap)"
            )


@dataclass(frozen=True, slots=True)
class Approval:
    """Whether a call the policy let through waits for a human
    (:meth:`runtime.dispatch.Dispatcher.approval_for`)."""

    ask: bool
    note: str = ""
    """Not asked: the rule that auto-approved it; asked: why the user's rules
    did not apply (empty when they say nothing of the tool)."""

    def reason(self, policy_reason: str) -> str:
        """The call's reason as the IDE and its row show it, from the policy's."""
        if not self.note:
            return policy_reason
        if not self.ask or not policy_reason:
            return self.note
        return f"{policy_reason} ({self.note})"


DEFAULT_LIMITS = OperatorLimits()
"""The floor when the operator sets none: rules may auto-approve what needs approval."""


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    rule: str = ""
    """DENY: the deny rule; ALLOW: the allow rule(s) that matched."""
    reason: str = ""
    """DENY: what the rule matched; ASK: why no rule auto-approves the call."""


def decide(rules: ApprovalRules, tool_name: str, arguments: Mapping[str, Any]) -> Decision:
    """How ``rules`` answer a call of ``tool_name`` with (checked, normalised) ``arguments``.

    Deny rules first, then what is always asked, then allow rules; a call
    no rule speaks of is ASK (whether a human is asked at all is the
    caller's: a tool that needs no approval runs).
    """
    if tool_name == COMMAND_TOOL:
        return _decide_command(rules, str(arguments.get("command", "")))
    paths = _paths(tool_name, arguments)
    for rule in rules.deny:
        if rule.covers(tool_name):
            if rule.kind is Kind.ANY:
                return Decision(Outcome.DENY, rule.text, f"{rule.text} matches {tool_name}")
            hit = next((p for p in paths if rule.matches_path(p)), None)
            if hit is not None:
                return Decision(Outcome.DENY, rule.text, f"{rule.text} matches {hit}")
    if tool_name in WRITE_TOOLS and any(p == ".git" or p.startswith(".git/") for p in paths):
        return Decision(Outcome.ASK, reason=f"always asked: {GIT_DIR_WRITES}")
    matched = []
    for path in paths or ("",):
        allowing = next(
            (r for r in rules.allow if r.covers(tool_name) and r.matches_path(path)), None
        )
        if allowing is None:
            return Decision(Outcome.ASK, reason=f"no rule allows {tool_name} of {path or 'this'}")
        matched.append(allowing.text)
    return _allowed(matched)


def _paths(tool_name: str, arguments: Mapping[str, Any]) -> tuple[str, ...]:
    tool = TOOLS.get(tool_name)
    if tool is None:
        return ()
    paths = tuple(str(arguments[f]) for f in tool.path_fields if f in arguments)
    return paths or ((".",) if tool.path_fields else ())


def _decide_command(rules: ApprovalRules, command: str) -> Decision:
    denies = [rule for rule in rules.deny if rule.covers(COMMAND_TOOL)]
    for words in shell.loose_segments(command) or [()] if denies else ():
        # /usr/bin/rm is rm too.
        named = (words[0].rsplit("/", 1)[-1], *words[1:]) if words else words
        rule = next(
            (r for r in denies if r.matches_command(words) or r.matches_command(named)), None
        )
        if rule is not None:
            shown = shlex.join(words) or "the command"
            return Decision(Outcome.DENY, rule.text, f"{rule.text} matches {shown}")
    dangerous = shell.danger(command)
    if dangerous is not None:
        return Decision(Outcome.ASK, reason=f"always asked: {dangerous.name}")
    parsed = shell.split(command)
    if parsed.hazard:
        return Decision(Outcome.ASK, reason=parsed.hazard)
    matched = []
    for words in parsed.commands:
        rule = next(
            (r for r in rules.allow if r.covers(COMMAND_TOOL) and r.matches_command(words)), None
        )
        if rule is None:
            return Decision(Outcome.ASK, reason=f"no rule allows {shlex.join(words)}")
        matched.append(rule.text)
    return _allowed(matched)


def _allowed(rules: Iterable[str]) -> Decision:
    return Decision(Outcome.ALLOW, ", ".join(dict.fromkeys(rules)))


SUBCOMMAND_TOOLS = frozenset(
    {
        *("npm", "yarn", "pnpm", "bun", "npx", "deno", "git", "cargo", "go", "make", "just"),
        *("uv", "poetry", "pip", "pip3", "pdm", "hatch", "pipenv", "tox", "nox"),
        *("docker", "kubectl", "dotnet", "mvn", "gradle", "composer", "bundle", "rake"),
    }
)
"""Commands whose rule names a subcommand too: ``npm test:*``, not ``npm:*``."""
_RUNNERS = frozenset({"run", "exec", "x", "dlx"})
"""Subcommands that run what follows (``uv run pytest``): the rule names that too."""
_RUNS_ANYTHING = frozenset(
    {
        *("bash", "sh", "zsh", "dash", "ksh", "fish", "python", "python3", "node", "perl"),
        *("ruby", "php", "env", "xargs", "eval", "exec", "nohup", "time", "timeout"),
        *("nice", "watch", "command", "builtin", "source", ".", "ssh"),
    }
)
"""Commands that run any other: their rule is the exact command (``python -m X`` aside)."""
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]*")


def suggest_rule(tool_name: str, arguments: Mapping[str, Any]) -> str | None:
    """The allow rule an "always allow this" adds for this call, or None
    when no rule fits (:func:`why_no_rule` says why).

    A command: its first word, plus a subcommand for tools such as npm,
    git, cargo, uv (``execute_command(npm test:*)``; ``python -m pytest:*``);
    exact for commands that run any other (``bash x.sh``). An edit or read:
    its file's exact path (``edit(src/a.py)``, ``edit(/a.py)`` at the root).
    """
    return _suggestion(tool_name, arguments)[0]


def why_no_rule(tool_name: str, arguments: Mapping[str, Any]) -> str:
    """Why :func:`suggest_rule` has no rule for this call ("" when it has one)."""
    return _suggestion(tool_name, arguments)[1]


def _suggestion(tool_name: str, arguments: Mapping[str, Any]) -> tuple[str | None, str]:
    if tool_name == COMMAND_TOOL:
        return _command_suggestion(str(arguments.get("command", "")))
    if MCP_TOOL.fullmatch(tool_name):
        return tool_name, ""
    if tool_name == "move_file":
        return None, "a move changes two paths: allow both with edit(…) rules of your own"
    group = "edit" if tool_name in WRITE_TOOLS else "read" if tool_name in READ_TOOLS else None
    if group is None:
        return None, f"{tool_name} is decided by a human each time"
    path = next(iter(_paths(tool_name, arguments)), ".")
    if group == "edit" and (path == ".git" or path.startswith(".git/")):
        return None, f"always asked: {GIT_DIR_WRITES}"
    escaped = re.sub(r"([*?\[])", r"[\1]", path)
    return f"{group}({escaped if '/' in path else '/' + escaped})", ""


def _command_suggestion(command: str) -> tuple[str | None, str]:
    dangerous = shell.danger(command)
    if dangerous is not None:
        return None, f"always asked: {dangerous.name}"
    parsed = shell.split(command)
    if parsed.hazard:
        return None, parsed.hazard
    if len(parsed.commands) != 1:
        return None, "a line of several commands is asked each time; allow each one instead"
    words = parsed.commands[0]
    if not _PLAIN.fullmatch(words[0]) and not words[0].startswith("./"):
        return None, f"{words[0]!r} is not a command name a rule can start with"
    prefix: shell.Words | None = words[:1]
    if words[0] in ("python", "python3") and words[1:2] == ("-m",) and len(words) > 2:
        prefix = words[:3] if _PLAIN.fullmatch(words[2]) else None
    elif words[0] in _RUNS_ANYTHING:
        prefix = None
    elif words[0] in SUBCOMMAND_TOOLS:
        prefix = words[:2] if len(words) > 1 and _PLAIN.fullmatch(words[1]) else None
        if prefix is not None and words[1] in _RUNNERS:
            prefix = words[:3] if len(words) > 2 and _PLAIN.fullmatch(words[2]) else None
    text = f"{COMMAND_TOOL}({shlex.join(prefix or words)}{':*' if prefix else ''})"
    try:
        Rule.parse(text)
    except RulesInvalid:
        return None, "no rule can name this command (it has a *)"
    return text, ""
