"""A session's export, as JSON and as Markdown, built from ``ExportSession``; pure.

:func:`as_json` is the whole session as data: the session, every message
(tool calls with their arguments, tool results, agent, time, ``undone``),
the agent switches and the turns that changed files (paths and changes,
never file contents). :func:`as_markdown` is a transcript for people: the
title, then a heading per message with its role, agent and time, its text,
each tool call's arguments as fenced JSON and each tool result fenced, cut
at :data:`MAX_RESULT_CHARS` with a note saying how much was left out.
"""

from __future__ import annotations

import json
import re

from gateway import views
from gateway.views import Body, Document
from mesh.structs import struct_to_dict
from runtime.v1 import runtime_pb2

MARKDOWN = "text/markdown; charset=utf-8"
MAX_RESULT_CHARS = 2000
"""A tool result's characters a Markdown export shows; the JSON export has them all."""

_BACKTICKS = re.compile(r"`+")


def as_json(response: runtime_pb2.ExportSessionResponse) -> Body:
    session = response.session
    return {
        "session": {
            "id": session.session_id,
            "title": session.title,
            "agent": session.agent,
            "message_count": session.message_count,
            "created_at": views.iso_time(session.created_at),
            "updated_at": views.iso_time(session.updated_at),
        },
        "messages": [
            {"position": position, **views.history_message(message)}
            for position, message in enumerate(response.messages)
        ],
        "agent_switches": views.agent_history(response.agent_switches),
        "checkpoints": [views.checkpoint_turn(turn) for turn in response.turns],
    }


def as_markdown(response: runtime_pb2.ExportSessionResponse) -> Document:
    session = response.session
    title = " ".join(session.title.split()) or "Untitled session"
    lines = [
        f"# {title}",
        "",
        f"- Session: `{session.session_id}`",
        f"- Created: {views.iso_time(session.created_at) or 'unknown'}",
        f"- Agent: {session.agent}",
        f"- Messages: {len(response.messages)}",
    ]
    for position, message in enumerate(response.messages):
        lines += ["", *_message(position, message)]
    if response.agent_switches:
        lines += ["", "## Agent switches", ""]
        lines += [
            f"- {views.iso_time(s.created_at) or ''} {s.from_agent} → {s.to_agent}: {s.reason}"
            for s in response.agent_switches
        ]
    if response.turns:
        lines += ["", "## Files changed", ""]
        for turn in response.turns:
            files = ", ".join(f"`{f.path}` ({f.change})" for f in turn.files)
            undone = " (undone)" if turn.undone else ""
            lines.append(f"- turn {turn.turn_id}{undone}: {files}")
    return Document(MARKDOWN, "\n".join(lines) + "\n")


def _message(position: int, message: runtime_pb2.HistoryMessage) -> list[str]:
    who = message.role.capitalize()
    if message.role == "tool":
        who = f"Tool result: {message.name or 'tool'}"
    elif message.agent:
        who = f"{who} ({message.agent})"
    when = views.iso_time(message.created_at)
    heading = f"## {position}. {who}" + (f" · {when}" if when else "")
    if message.undone:
        heading += " · undone"
    lines = [heading, ""]
    if message.role == "tool":
        content = message.content
        lines += _fenced(content[:MAX_RESULT_CHARS], "text")
        if len(content) > MAX_RESULT_CHARS:
            lines += [
                "",
                f"_(result cut: the first {MAX_RESULT_CHARS:,} of {len(content):,} characters; "
                "the JSON export has all of it)_",
            ]
        return lines
    if message.content:
        lines.append(message.content)
    for call in message.tool_calls:
        arguments = json.dumps(
            struct_to_dict(call.arguments), ensure_ascii=False, indent=2, sort_keys=True
        )
        lines += ["", f"Tool call `{call.tool_name}` (`{call.call_id}`):", ""]
        lines += _fenced(arguments, "json")
    return lines


def _fenced(text: str, language: str) -> list[str]:
    """``text`` in a code fence longer than any run of backticks in it."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text, fence]
