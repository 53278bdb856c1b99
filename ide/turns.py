"""Driving turns as an IDE does: stream text, run tools, ask for approvals.

:class:`IdeSession` sends a message and reacts to every frame until the final
``assistant_message``: it executes tool calls in its :class:`Workspace`, asks
its approver about calls (and plans) that need a human, and reports the rest
to an observer. An undo (``{"type": "undo"}``) is driven the same way: the
runtime restores files with ordinary tool calls; so are a retry and an edit
of a message (the history branches, then the turn runs again). The terminal client and the
end-to-end tests both drive the agent through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ide.connection import IdeConnection
from ide.workspace import ToolFailed, Workspace

Frame = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """A human's answer to a tool call or plan that needs approval."""

    decision: str  # approve | edit | reject
    modified_arguments: dict[str, Any] | None = None
    feedback: str = ""
    # With approve: the server adds a rule that approves this kind of call from now on.
    always_allow: bool = False


Approver = Callable[[Frame], Awaitable[Decision]]
Observer = Callable[[Frame], None]


async def approve_all(frame: Frame) -> Decision:
    return Decision("approve")


@dataclass(slots=True)
class Turn:
    """What one turn produced."""

    text: str = ""
    status: str = ""  # the final frame's status, or "refused" (see IdeSession.follow)
    frames: list[Frame] = field(default_factory=list)
    executed: list[Frame] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("type") == kind]


class IdeSession:
    """One connection plus the workspace its tools run in."""

    def __init__(
        self,
        connection: IdeConnection,
        workspace: Workspace,
        *,
        approve: Approver = approve_all,
        approve_plan: Approver = approve_all,
        observe: Observer | None = None,
    ) -> None:
        self.connection = connection
        self.workspace = workspace
        self._approve = approve
        self._approve_plan = approve_plan
        self._observe = observe

    async def say(self, content: str) -> Turn:
        """Send a user message and handle everything until the turn ends."""
        await self.connection.send_message(content)
        return await self.follow()

    async def switch(self, agent: str, content: str = "", reason: str = "") -> Turn:
        """Switch agents; with ``content``, run it as the new agent's turn."""
        await self.connection.send(
            {"type": "switch_agent", "agent_type": agent, "content": content, "reason": reason}
        )
        return await self.follow()

    async def undo(self, turn_id: str | None = None) -> Turn:
        """Ask the runtime to restore the workspace to how it was before a turn
        (default: the last turn that changed files) and handle the restoring
        turn: its write_file / delete_file calls run here, approvals are asked."""
        frame: Frame = {"type": "undo"}
        if turn_id is not None:
            frame["turn_id"] = turn_id
        await self.connection.send(frame)
        return await self.follow()

    async def retry(self, keep_changes: bool = False) -> Turn:
        """Run the last message again; the answer it replaces is kept as a branch."""
        await self.connection.send({"type": "retry", "keep_changes": keep_changes})
        return await self.follow()

    async def edit(self, index: int, content: str, keep_changes: bool = False) -> Turn:
        """Replace the user message at ``index`` (its position in the history)
        with ``content`` and run from it; what followed is kept as a branch."""
        await self.connection.send(
            {
                "type": "edit_message",
                "index": index,
                "content": content,
                "keep_changes": keep_changes,
            }
        )
        return await self.follow()

    async def fork(self, index: int | None = None) -> Frame:
        """Copy the session through message ``index`` (None: all) into a new
        session; the answer: a ``session_changed`` frame naming it, or an ``error``."""
        frame: Frame = {"type": "fork"}
        if index is not None:
            frame["index"] = index
        await self.connection.send(frame)
        while True:
            answer = await self.connection.next_frame()
            if self._observe is not None:
                self._observe(answer)
            if answer.get("type") in ("session_changed", "error") and not answer.get("seq"):
                return answer

    async def condense(self) -> Frame:
        """Ask the runtime to summarize the session's older turns; returns its
        ``context_condensed`` frame, or the ``error`` frame that refused it."""
        await self.connection.send({"type": "condense"})
        while True:
            frame = await self.connection.next_frame()
            if self._observe is not None:
                self._observe(frame)
            if frame.get("type") in ("context_condensed", "error"):
                return frame

    async def follow(self) -> Turn:
        """Handle frames until the final assistant frame.

        An ``error`` that is no event of the session (``seq`` null or 0) and
        comes before anything else refused the request that was to start the
        turn (a turn already running, a frame this server does not know): no
        turn follows, so this one ends with status ``refused``.
        """
        turn = Turn()
        parts: list[str] = []
        while True:
            frame = await self.connection.next_frame()
            turn.frames.append(frame)
            kind = frame.get("type")
            if self._observe is not None:
                self._observe(frame)
            if kind == "error" and not frame.get("seq") and len(turn.frames) == 1:
                turn.status = "refused"
                return turn
            if kind == "assistant_message":
                if frame.get("is_final"):
                    turn.text = "".join(parts)
                    turn.status = str((frame.get("metadata") or {}).get("status", ""))
                    return turn
                parts.append(str(frame.get("content", "")))
            elif kind == "tool_call":
                await self._on_tool_call(frame, turn)
            elif kind == "plan_update" and (frame.get("metadata") or {}).get("requires_approval"):
                decision = await self._approve_plan(frame)
                await self.connection.send(
                    {
                        "type": "plan_approval",
                        "plan_id": frame["plan_id"],
                        "decision": decision.decision,
                        "feedback": decision.feedback,
                    }
                )

    async def _on_tool_call(self, frame: Frame, turn: Turn) -> None:
        if frame.get("requires_approval"):
            decision = await self._approve(frame)
            message: Frame = {
                "type": "hitl_decision",
                "call_id": frame["call_id"],
                "decision": decision.decision,
                "feedback": decision.feedback,
            }
            if decision.modified_arguments is not None:
                message["modified_arguments"] = decision.modified_arguments
            if decision.always_allow and decision.decision == "approve":
                message["always_allow"] = True
            # Approved calls come back as a tool_call without requires_approval:
            # that one is executed, never this one.
            await self.connection.send(message)
            return
        turn.executed.append(frame)
        try:
            result = await self.workspace.run(frame["tool_name"], frame.get("arguments") or {})
        except ToolFailed as exc:
            await self.connection.send(
                {"type": "tool_result", "call_id": frame["call_id"], "error": str(exc)}
            )
            return
        await self.connection.send(
            {"type": "tool_result", "call_id": frame["call_id"], "result": result}
        )
