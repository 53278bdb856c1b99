"""What a person at the terminal sees of a turn, and how they answer approvals.

:class:`Console` prints each frame (streamed text, agent switches, plans,
tool calls) and asks about calls and plans that need a human. A call that
needs approval is shown whole before the question (:func:`describe_call`):
the tool, its reason and, when the runtime sent one (``metadata.diff``), the
diff of what it will change, in place of the raw ``content`` argument. The
runtime may repeat that diff in ``reason`` for IDEs that show only
``reason``; it is printed once. The answers: approve, always allow (approve
and ask the server to add an approval rule for this kind of call), edit the
arguments, reject; and, for a diff cut to the terminal's height, show it all.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ide.diffs import classify, diff_stat, printable, render_diff
from ide.turns import Decision

Frame = dict[str, Any]
Ask = Callable[[str], Awaitable[str]]

ARGUMENTS_SHOWN = 200  # characters of a call's arguments on its line
UNANSWERED = "no answer: the person's input ended"
"""The feedback of a call or plan rejected because stdin ended (never approved)."""
DIFF_STARTS = ("--- ", "diff --git ", "@@ ")


async def read_line(prompt: str) -> str:
    """One line from stdin, without blocking the event loop; EOFError at the end."""
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, input, prompt)
    return answer.strip()


def diff_of(frame: Frame) -> str:
    diff = (frame.get("metadata") or {}).get("diff")
    return diff if isinstance(diff, str) else ""


def reason_without_diff(reason: str, diff: str) -> str:
    """``reason`` without the copy of ``diff`` it may carry: the words only."""
    body = diff.strip("\n")
    if body and body in reason:
        return reason.replace(body, "").strip()
    lines = reason.split("\n")
    for number, line in enumerate(lines):
        if line.startswith(DIFF_STARTS):
            return "\n".join(lines[:number]).strip()
    return reason.strip()


def call_line(frame: Frame, state: str) -> str:
    """``[tool STATE] NAME ARGUMENTS``: with a diff, its size instead of ``content``."""
    arguments = frame.get("arguments")
    diff = diff_of(frame)
    if diff and isinstance(arguments, dict):
        arguments = {key: value for key, value in arguments.items() if key != "content"}
    text = json.dumps(arguments, ensure_ascii=False)
    if len(text) > ARGUMENTS_SHOWN:
        text = text[:ARGUMENTS_SHOWN] + "…"
    line = f"[tool {state}] {frame.get('tool_name', '?')} {text}"
    if diff:
        added, removed = diff_stat(diff)
        line += f" (+{added} -{removed})"
    return printable(line)


def describe_call(frame: Frame, *, color: bool, max_lines: int | None) -> str:
    """Everything a person needs to decide on a call that needs approval."""
    diff = diff_of(frame)
    lines = [call_line(frame, "needs approval")]
    metadata = frame.get("metadata") or {}
    if metadata.get("parent_tool"):
        lines.append(f"  for: {metadata['parent_tool']} {metadata.get('parent_call_id', '')}")
    reason = str(frame.get("reason") or "")
    if diff:
        reason = reason_without_diff(reason, diff)
    if reason:
        lines.append("  why: " + reason.replace("\n", "\n       "))
    text = printable("\n".join(lines))
    if diff:
        text += "\n" + render_diff(diff, color=color, max_lines=max_lines)
    return text


def is_cut(frame: Frame, max_lines: int | None) -> bool:
    """Whether :func:`describe_call` shows only part of the call's diff."""
    diff = diff_of(frame)
    return bool(diff) and max_lines is not None and sum(1 for _ in classify(diff)) > max_lines


def context_meter(context: Frame) -> str:
    """``[context #......... 1,843 / 32,768 tokens, 6%]`` for a final frame's ``context``."""
    percent = int(context.get("percent", 0))
    window = int(context.get("window", 0))
    filled = min(10, round(percent / 10))
    bar = "#" * filled + "." * (10 - filled)
    of = f" / {window:,}" if window else ""
    return f"[context {bar} {int(context.get('tokens', 0)):,}{of} tokens, {percent}%]"


class Console:
    """Prints frames and asks for decisions; ``ask`` reads one answer."""

    def __init__(self, *, color: bool, max_lines: int | None, ask: Ask = read_line) -> None:
        self.color = color
        self.max_lines = max_lines
        self._ask = ask

    def show(self, frame: Frame) -> None:
        """Print one frame for a human (the observer of an IdeSession)."""
        kind = frame.get("type")
        if kind == "assistant_message":
            if frame.get("is_final"):
                status = (frame.get("metadata") or {}).get("status", "")
                print("" if status == "completed" else f"\n[turn {status}]", flush=True)
                if frame.get("context"):
                    print(context_meter(frame["context"]), flush=True)
            else:
                print(frame.get("content", ""), end="", flush=True)
        elif kind == "context_condensed":
            print(
                f"\n[context condensed] {frame['messages_replaced']} messages summarized "
                f"({frame['tokens_before']:,} -> {frame['tokens_after']:,} tokens): "
                f"{frame.get('content', '')}",
                flush=True,
            )
        elif kind == "agent_switched":
            print(
                f"\n[agent] {frame['from_agent']} -> {frame['to_agent']}: "
                f"{frame.get('reason', '')} (confidence {frame.get('confidence', 1):.2f})",
                flush=True,
            )
        elif kind == "tool_call":
            if frame.get("requires_approval"):
                text = describe_call(frame, color=self.color, max_lines=self.max_lines)
            else:
                text = call_line(frame, "running")
            print(f"\n{text}", flush=True)
        elif kind == "plan_update":
            print(f"\n[plan {frame['plan_id']}]", flush=True)
            for step in frame.get("steps", []):
                print(f"  {step['id']}. [{step['status']}] {step['desc']}", flush=True)
        elif kind == "plan_progress":
            print(
                f"\n[plan {frame['plan_id']}] step {frame['step_id']} {frame['status']}",
                flush=True,
            )
        elif kind == "session_changed":
            print(f"\n{describe_change(frame)}", flush=True)
        elif kind == "error":
            print(
                f"\n[error {frame.get('code')}] {frame.get('content')}",
                file=sys.stderr,
                flush=True,
            )

    async def approve_call(self, frame: Frame) -> Decision:
        """Ask about a call that :meth:`show` has just described; the
        terminal's input ending before an answer rejects it."""
        try:
            return await self._approve_call(frame)
        except EOFError:
            return self._unanswered()

    async def approve_plan(self, frame: Frame) -> Decision:
        """Ask about a plan; the terminal's input ending before an answer rejects it."""
        try:
            answer = (await self._ask("Approve this plan? [y]es / [n]o: ")).lower()
            if answer in ("y", "yes"):
                return Decision("approve")
            return Decision("reject", feedback=await self._ask("Why (optional)? "))
        except EOFError:
            return self._unanswered()

    @staticmethod
    def _unanswered() -> Decision:
        print("\n[no answer: the input ended; rejected]", file=sys.stderr, flush=True)
        return Decision("reject", feedback=UNANSWERED)

    async def _approve_call(self, frame: Frame) -> Decision:
        full_diff = is_cut(frame, self.max_lines)
        choices = "[y]es / [a]lways / [n]o / [e]dit" + (" / [d]iff in full" if full_diff else "")
        while True:
            answer = (await self._ask(f"Allow {frame['tool_name']}? {choices}: ")).lower()
            if answer in ("y", "yes"):
                return Decision("approve")
            if answer in ("a", "always"):
                return Decision("approve", always_allow=True)
            if answer in ("n", "no"):
                return Decision("reject", feedback=await self._ask("Why (optional)? "))
            if answer in ("e", "edit"):
                current = json.dumps(frame.get("arguments"), ensure_ascii=False)
                print(f"current arguments: {printable(current)}")
                try:
                    edited = json.loads(await self._ask("New arguments as JSON: "))
                except json.JSONDecodeError as exc:
                    print(f"not JSON: {exc}")
                    continue
                return Decision("edit", modified_arguments=edited)
            if answer in ("d", "diff") and full_diff:
                print(render_diff(diff_of(frame), color=self.color), flush=True)
                continue
            print(f"answer one of {choices}")


def describe_change(frame: Frame) -> str:
    """A ``session_changed`` frame for a person."""
    if frame.get("reason") == "fork":
        fork = frame.get("session_id")
        return (
            f"[fork] new session {fork} with {frame.get('from_message')} messages "
            f"(scripts/chat --session {fork})"
        )
    return (
        f"[{frame.get('reason')}] messages from {frame.get('from_message')} on are kept as "
        f"branch {frame.get('branch')} (/branches lists them)"
    )
