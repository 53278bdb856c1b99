"""A shell command line as approval rules read it; pure, no I/O.

A rule allows a *simple command* (``pytest -q``), never a command line as a
whole: :func:`split` cuts a line into its simple commands at ``;``, ``&&``,
``||``, ``|``, ``|&``, ``&`` and newlines, quote-aware, and says why a line
can never be auto-approved whatever the rules (command or process
substitution, output redirection, subshells, here-documents, a line it
cannot read). It is deliberately more cautious than a shell: anything it is
unsure of is asked, never allowed.

:data:`ALWAYS_ASK` is the built-in list of commands no rule auto-approves
(:func:`danger` finds them anywhere in a line, quoted or not: over-asking is
the safe failure). :func:`loose_segments` is the generous reading deny rules
use: every piece between any operator or bracket, inside substitutions too.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

Words = tuple[str, ...]

_BOUND = r"(?<![\w.-])"
"""Where a command word starts: not inside another word, path or option."""
_END = r"(?![\w.-])"


@dataclass(frozen=True, slots=True)
class Danger:
    """A command no rule auto-approves: a human is always asked."""

    name: str
    pattern: re.Pattern[str]


def _danger(name: str, pattern: str) -> Danger:
    return Danger(name, re.compile(pattern))


_SHELLS = r"(?:sudo\s+)?(?:ba|z|k|da|fi)?sh|python3?|perl|ruby|node"

ALWAYS_ASK: tuple[Danger, ...] = (
    _danger(
        "rm -r (recursive delete)", rf"{_BOUND}rm\s(?:[^;&|\n]*\s)?-(?:[a-zA-Z]*[rR]|-recursive)"
    ),
    _danger("sudo, su or doas (another user's rights)", rf"{_BOUND}(?:sudo|su|doas){_END}"),
    _danger(
        "a download piped to a shell (curl … | sh, wget … | bash)",
        rf"{_BOUND}(?:curl|wget){_END}[^\n]*\|\s*(?:{_SHELLS}){_END}",
    ),
    _danger(
        "chmod/chown -R, chmod 777",
        rf"{_BOUND}ch(?:mod|own|grp)\s(?:[^;&|\n]*\s)?-(?:[a-zA-Z]*R|-recursive)"
        rf"|{_BOUND}chmod{_END}[^;&|\n]*{_BOUND}0?777{_END}",
    ),
    _danger("mkfs (format a disk)", rf"{_BOUND}mkfs(?:\.\w+)?(?![\w-])"),
    _danger("dd (raw disk copy)", rf"{_BOUND}dd{_END}"),
    _danger(
        "git push --force (or -f, +refspec)",
        rf"{_BOUND}git{_END}[^;&|\n]*\spush\s(?:[^;&|\n]*\s)?(?:--force|-[a-zA-Z]*f{_END}|\+\S)",
    ),
    _danger("git reset --hard, git clean -f", r"\bgit\s[^;&|\n]*(?:reset\s+--hard|clean\s+-\w*f)"),
    _danger("a fork bomb (:(){ …)", r":\s*\(\s*\)\s*\{"),
    _danger(
        "shutdown, reboot, halt, poweroff", rf"{_BOUND}(?:shutdown|reboot|halt|poweroff){_END}"
    ),
    _danger(
        "writes to a device (> /dev/…, tee /dev/…)",
        r">\s*/dev/(?!null(?![\w/]))|\btee\s[^;&|\n]*/dev/(?!null(?![\w/]))",
    ),
)
"""The built-in list of commands always asked, whatever the user's rules allow."""


def danger(command: str) -> Danger | None:
    """The first :data:`ALWAYS_ASK` entry found anywhere in ``command``, or None."""
    return next((d for d in ALWAYS_ASK if d.pattern.search(command)), None)


@dataclass(frozen=True, slots=True)
class Split:
    """A command line cut into simple commands, or why it cannot be."""

    commands: tuple[Words, ...] = ()
    """Each simple command's words, as the shell would pass them (quotes removed)."""
    hazard: str = ""
    """Why no rule may auto-approve the line; empty when none."""


_SEPARATORS = ("&&", "||", "|&", ";", "|", "&", "\n")


def split(command: str) -> Split:
    """Cut ``command`` into its simple commands, quote-aware.

    Never auto-approved (:attr:`Split.hazard` says which): command
    substitution (`` `…` ``, ``$(…)``), process substitution (``<(…)``,
    ``>(…)``), output redirection to a file (``>``, ``>>``, ``&>``; a
    descriptor copy such as ``2>&1`` and ``/dev/null`` are fine), subshells
    and groups in parentheses, here-documents, an unclosed quote, and a line
    with no command. A ``#`` comment is dropped.
    """
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    i, n = 0, len(command)
    while i < n:
        c, ahead = command[i], command[i + 1 : i + 2]
        if quote == "'":
            current.append(c)
            quote = "" if c == "'" else quote
            i += 1
            continue
        if c == "\\":
            if ahead != "\n":  # a backslash-newline joins lines
                current.append(command[i : i + 2])
            i += 2
            continue
        if c == "`" or (c == "$" and ahead == "("):
            return Split(hazard="command substitution ($(…) or `…`) is never auto-approved")
        if quote:  # inside double quotes
            current.append(c)
            quote = "" if c == '"' else quote
            i += 1
            continue
        if c in "'\"":
            quote = c
            current.append(c)
            i += 1
            continue
        if c in "<>" and ahead == "(":
            return Split(hazard="process substitution (<(…), >(…)) is never auto-approved")
        if c == "<" and ahead == "<":
            return Split(hazard="here-documents and here-strings (<<, <<<) are never auto-approved")
        if c in "()":
            return Split(hazard="subshells and groups in parentheses are never auto-approved")
        if c == ">" or (c == "&" and ahead == ">"):
            end = _redirection(command, i)
            if end is None:
                return Split(hazard="output redirection (>, >>) is never auto-approved")
            current.append(command[i:end])
            i = end
            continue
        if c == "#" and (not current or current[-1].isspace()):
            while i < n and command[i] != "\n":
                i += 1
            continue
        separator = next((s for s in _SEPARATORS if command.startswith(s, i)), None)
        if separator is not None:
            parts.append("".join(current))
            current = []
            i += len(separator)
            continue
        current.append(c)
        i += 1
    if quote:
        return Split(hazard="the command has an unclosed quote")
    parts.append("".join(current))
    commands: list[Words] = []
    for part in parts:
        try:
            words = tuple(shlex.split(part))
        except ValueError:
            return Split(hazard="the command could not be read")
        if words:
            commands.append(words)
    if not commands:
        return Split(hazard="the command is empty")
    return Split(tuple(commands))


_DUPLICATE = re.compile(r">>?&(?:\d+|-)(?![^\s;&|<>()])")
_TO_FILE = re.compile(r"(?:&>>?|>>?)\s*(\S+)")


def _redirection(command: str, start: int) -> int | None:
    """Where the redirection at ``start`` ends, if it only copies a
    descriptor (``>&2``) or discards output (``>/dev/null``); else None."""
    duplicate = _DUPLICATE.match(command, start)
    if duplicate is not None:
        return duplicate.end()
    target = _TO_FILE.match(command, start)
    if target is not None and re.match(r"/dev/null(?![^\s;&|<>()])", target.group(1)):
        return target.start(1) + len("/dev/null")
    return None


_LOOSE = re.compile(r"\$\(|`|[<>]\(|[(){};|&\n]")
_WRAPPERS = frozenset(
    {"sudo", "doas", "env", "nohup", "time", "nice", "command", "exec", "builtin", "xargs"}
)


def loose_segments(command: str) -> list[Words]:
    """Every piece of ``command`` between any operator or bracket, inside
    substitutions and quotes too, with leading ``VAR=value`` assignments and
    wrappers (``sudo``, ``env``, ``xargs``…) dropped: what deny rules match,
    generously. Never raises."""
    segments = []
    for piece in _LOOSE.split(command):
        words = [word.strip("'\"") for word in piece.split()]
        while words and ("=" in words[0].split("/")[0] or words[0] in _WRAPPERS):
            words.pop(0)
        if words:
            segments.append(tuple(words))
    return segments
