"""The offline model's rules: deterministic answers that drive every agent flow.

The offline model is a stand-in for a real LLM, good enough that the whole
system can be used and tested with no network. :func:`respond` looks at the
conversation the way a model would and returns either text or tool calls;
``None`` means "no rule applies" and the model echoes the message.

Rules, in order (documented in the README):

1. A routing request (system prompt "You route requests to agents") is
   answered with a JSON classification chosen by the request's first word;
   a summarizing request (system prompt "You condense conversations") with
   the first request it finds (kept from an earlier summary) and the last three.
2. After tool results: if the model's last call was ``update_plan`` and a step
   is not done yet, the next step is marked done (plan execution); otherwise
   the results are summarised in text.
3. A user message made of commands becomes tool calls, several joined by
   "and": ``read PATH``, ``list PATH``, ``search TEXT``, ``mkdir PATH``,
   ``delete PATH``, ``move A to B``, and (taking the rest of the message)
   ``find QUERY`` (``codebase_search``), ``write PATH: CONTENT``,
   ``edit PATH: OLD => NEW``, ``insert PATH at N: TEXT``, ``run COMMAND``,
   ``plan A; B; C`` (``plan with approval: …`` asks for approval),
   ``switch to AGENT``, ``done RESULT``, ``clarify QUESTION``,
   ``call TOOL {JSON}`` (any tool by name, e.g. an MCP server's
   ``mcp__SERVER__TOOL``, with a JSON object of arguments).

   ``edit`` is one ``apply_diff`` block: OLD is everything between the colon
   (and the one space or line break after it) and the first `` => ``, NEW the
   rest (empty: OLD is deleted), both verbatim, line breaks included. One
   block per message: a second would need a separator that code never
   contains, and ``;`` is not one. ``insert`` takes a line number (``at 0``
   or ``at end`` appends) and the text after the colon (and one space).

The rules emit tool calls whether or not the tool was offered, on purpose: a
real model sometimes calls what it should not, and the runtime's policy must
catch it.

One instruction in the system prompt is honoured, as a real model would:
a line ``Begin every answer with "TEXT".`` (a project's ``AGENTS.md`` may
say it) puts TEXT before every text answer, a rule's or the echo
(:func:`opening`). ``switch to NAME`` takes any agent name; the runtime
decides whether it exists.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROUTING_MARKER = "You route requests to agents"
CONDENSE_MARKER = "You condense conversations"
"""How the runtime's summarizing call begins (:mod:`runtime.condense`)."""

_ROUTES = {
    "coder": (
        "write",
        "edit",
        "insert",
        "create",
        "implement",
        "add",
        "delete",
        "move",
        "mkdir",
        "refactor",
        "fix",
        "call",
    ),
    "architect": ("design", "plan", "document", "architect"),
    "debug": ("run", "debug", "why", "crash", "trace"),
    "ask": ("read", "list", "search", "find", "what", "how", "explain", "where", "show"),
}
_AGENT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_OPENING = re.compile(r'^\s*(?:[-*]\s*)?begin every answer with "([^"\n]{1,200})"', re.I | re.M)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


def respond(messages: Sequence[Mapping[str, Any]]) -> Answer | None:
    """The rule-based answer to ``messages``, or None when no rule applies."""
    if not messages:
        return None
    first, last = messages[0], messages[-1]
    if first.get("role") == "system" and ROUTING_MARKER in _text(first):
        return _route(_text(last))
    if first.get("role") == "system" and CONDENSE_MARKER in _text(first):
        return Answer(text=_condensed(_text(last)))
    if last.get("role") == "tool":
        answer = _after_tools(messages)
        opening_text = opening(messages)
        if opening_text and answer.text and not answer.tool_calls:
            return Answer(text=f"{opening_text} {answer.text}")
        return answer
    if last.get("role") == "user":
        calls = _commands(_text(last).strip())
        if calls:
            return Answer(tool_calls=tuple(calls))
    return None


def opening(messages: Sequence[Mapping[str, Any]]) -> str:
    """What the system prompt says every answer begins with ("": nothing)."""
    if not messages or messages[0].get("role") != "system":
        return ""
    return _opening_of(_text(messages[0]))


@functools.lru_cache(maxsize=64)
def _opening_of(system: str) -> str:
    # Cached: a session sends the same system prompt on every call, and the
    # search tries every position of a prompt of many kilobytes.
    match = _OPENING.search(system)
    return match.group(1).strip() if match else ""


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _condensed(transcript: str) -> str:
    """A deterministic summary of a transcript (lines ``role: text``): the
    first request (kept from an earlier summary's ``first:``) and the last three."""
    earlier = re.search(r"first: (.*?) \| lately:", transcript)
    asked = [line[6:][:80] for line in transcript.splitlines() if line.startswith("user: ")]
    first = earlier.group(1) if earlier else (asked[0] if asked else "nothing")
    return f"The user asked, first: {first} | lately: {' / '.join(asked[-3:]) or 'nothing'}"


def _route(request: str) -> Answer:
    words = re.findall(r"[a-z]+", request.lower())
    first = words[0] if words else ""
    for agent, verbs in _ROUTES.items():
        if first in verbs:
            choice = {"agent": agent, "confidence": 0.9, "rationale": f"the request says {first!r}"}
            return Answer(text=json.dumps(choice))
    for agent, verbs in _ROUTES.items():
        if any(word in verbs for word in words):
            choice = {"agent": agent, "confidence": 0.6, "rationale": "a keyword in the request"}
            return Answer(text=json.dumps(choice))
    choice = {"agent": "ask", "confidence": 0.4, "rationale": "nothing more specific fits"}
    return Answer(text=json.dumps(choice))


def _after_tools(messages: Sequence[Mapping[str, Any]]) -> Answer:
    results: list[Mapping[str, Any]] = []
    index = len(messages) - 1
    while index >= 0 and messages[index].get("role") == "tool":
        results.insert(0, messages[index])
        index -= 1
    calls = messages[index].get("tool_calls") or [] if index >= 0 else []
    plan = _plan_to_continue(calls, results)
    if plan is not None:
        return Answer(tool_calls=(plan,))
    return Answer(text=" ".join(_summary(result) for result in results))


def _plan_to_continue(
    calls: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
) -> ToolCall | None:
    """Mark the next step of the plan done, if the last call was a plan update."""
    if len(calls) != 1 or calls[0].get("function", {}).get("name") != "update_plan":
        return None
    if "error" in _payload(results[0]):
        return None
    try:
        arguments = json.loads(calls[0]["function"].get("arguments") or "{}")
    except json.JSONDecodeError:
        return None
    steps = [dict(step) for step in arguments.get("steps", [])]
    pending = [step for step in steps if step.get("status") != "done"]
    if not pending:
        return None
    pending[0]["status"] = "done"
    if len(pending) > 1:
        pending[1]["status"] = "in_progress"
    return ToolCall("update_plan", {"plan_id": arguments.get("plan_id", "plan-1"), "steps": steps})


def _payload(message: Mapping[str, Any]) -> dict[str, Any]:
    try:
        payload = json.loads(_text(message))
    except json.JSONDecodeError:
        return {"result": _text(message)}
    return payload if isinstance(payload, dict) else {"result": payload}


def _summary(message: Mapping[str, Any]) -> str:
    name = message.get("name") or "the tool"
    payload = _payload(message)
    if "error" in payload:
        error = str(payload["error"])
        end = "" if error.endswith((".", "!", "?")) else "."
        feedback = f" Feedback: {payload['feedback']}." if payload.get("feedback") else ""
        return f"{name} failed: {error}{end}{feedback}"
    result = payload.get("result")
    if isinstance(result, dict) and isinstance(result.get("matches"), list):  # codebase_search
        found = [
            f"{m.get('path')}:{m.get('start_line')}-{m.get('end_line')}"
            for m in result["matches"]
            if isinstance(m, dict)
        ]
        return f"{name} found: {', '.join(found) or result.get('note', 'nothing')}"
    if isinstance(result, dict):
        shown = result.get("content", result.get("output", result))
    else:
        shown = result
    text = shown if isinstance(shown, str) else json.dumps(shown, ensure_ascii=False)
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{name} returned: {text}"


_GREEDY = ("find", "write", "edit", "insert", "run", "plan", "switch", "done", "clarify", "call")
"""Verbs that take the rest of the message, "and" included, verbatim."""


def _commands(message: str) -> list[ToolCall]:
    calls: list[ToolCall] = []
    start = 0
    for separator in [*re.finditer(r"\s+and\s+", message), None]:
        end = len(message) if separator is None else separator.start()
        verb, _, rest = message[start:end].strip().partition(" ")
        verb = verb.lower()
        if verb in _GREEDY:
            # The rest of the message as written: "and", spacing and line
            # breaks are part of a file's content or an edit's text.
            tail = message[start:].lstrip()[len(verb) :].lstrip(" ")
            call = _greedy(verb, tail)
            if call is not None:
                calls.append(call)
            return calls
        call = _simple(verb, rest.strip())
        if call is None:
            return calls if calls else []
        calls.append(call)
        if separator is not None:
            start = separator.end()
    return calls


def _simple(verb: str, rest: str) -> ToolCall | None:
    if not rest:
        return None
    if verb == "read":
        lines = re.fullmatch(r"(\S+)\s+lines?\s+(\d+)\s*-\s*(\d+)", rest)
        if lines:
            start, end = int(lines.group(2)), int(lines.group(3))
            return ToolCall(
                "read_file", {"path": lines.group(1), "start_line": start, "end_line": end}
            )
        return ToolCall("read_file", {"path": rest})
    if verb == "list":
        return ToolCall("list_files", {"path": rest, "recursive": True})
    if verb == "search":
        return ToolCall("search_in_code", {"query": rest, "path": "."})
    if verb == "mkdir":
        return ToolCall("create_directory", {"path": rest})
    if verb == "delete":
        return ToolCall("delete_file", {"path": rest})
    if verb == "move":
        source, sep, destination = rest.partition(" to ")
        if sep:
            return ToolCall(
                "move_file", {"source": source.strip(), "destination": destination.strip()}
            )
    return None


def _greedy(verb: str, rest: str) -> ToolCall | None:
    if not rest:
        return None
    if verb == "find":
        return ToolCall("codebase_search", {"query": rest.strip()})
    if verb == "write":
        path, sep, content = rest.partition(":")
        if not sep:
            path, sep, content = rest.partition(" with ")
        if not sep:
            return None
        content, path = content.strip(), path.strip()
        write: dict[str, Any] = {"path": path, "content": content + "\n" if content else ""}
        if "/" in path:
            write["create_dirs"] = True  # as a model would, for a folder that may be new
        return ToolCall("write_file", write)
    if verb == "edit":
        path, sep, change = rest.partition(":")
        change = change[1:] if change[:1] in (" ", "\n") else change
        search, arrow, replace = change.partition(" => ")
        if not arrow and change.endswith(" =>"):  # "=> nothing": the message was stripped
            search, arrow, replace = change[:-3], " =>", ""
        if not sep or not arrow or not path.strip() or not search:
            return None
        return ToolCall(
            "apply_diff",
            {"path": path.strip(), "blocks": [{"search": search, "replace": replace}]},
        )
    if verb == "insert":
        where = re.fullmatch(r"(\S+)\s+at\s+(\d+|end)\s*:\s?(.+)", rest, re.DOTALL)
        if where is None:
            return None
        line = 0 if where.group(2) == "end" else int(where.group(2))
        return ToolCall(
            "insert_content", {"path": where.group(1), "line": line, "content": where.group(3)}
        )
    if verb == "run":
        return ToolCall("execute_command", {"command": rest})
    if verb == "plan":
        approval = rest.lower().startswith("with approval:")
        body = rest.split(":", 1)[1] if approval else rest
        descriptions = [step.strip() for step in re.split(r"[;\n]", body) if step.strip()]
        steps = [
            {"id": str(i), "description": text, "status": "pending"}
            for i, text in enumerate(descriptions, start=1)
        ]
        arguments: dict[str, Any] = {"plan_id": "plan-1", "steps": steps}
        if approval:
            arguments["requires_approval"] = True
        return ToolCall("update_plan", arguments)
    if verb == "switch":
        target = rest.removeprefix("to ").strip().lower()
        if _AGENT_NAME.fullmatch(target):
            return ToolCall("switch_mode", {"agent": target, "reason": "asked to switch"})
        return None
    if verb == "done":
        return ToolCall("attempt_completion", {"result": rest})
    if verb == "call":
        name, _, text = rest.partition(" ")
        try:
            arguments = json.loads(text or "{}")
        except json.JSONDecodeError:
            return None
        return ToolCall(name, arguments) if isinstance(arguments, dict) else None
    if verb == "clarify":
        return ToolCall("ask_followup_question", {"question": rest})
    return None
