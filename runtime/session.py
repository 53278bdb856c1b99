"""Sessions and who owns them (in memory until the SQL store lands).

A session belongs to the user who created it; any other user asking for it
gets :class:`runtime.errors.PermissionDenied`. Each session numbers its events
with a strictly increasing ``seq`` and holds the state a turn needs: the
conversation, the tool calls waiting for the IDE, plans, agent switches and
the file changes the IDE reported.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidArgument, PermissionDenied
from runtime.events import PlanStep
from runtime.llm import ChatMessage

_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if well formed, else raise InvalidArgument."""
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidArgument("session_id must be 1-128 characters of [A-Za-z0-9._:-]")
    return session_id


class CallState(enum.Enum):
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_RESULT = "awaiting_result"
    AWAITING_PLAN_APPROVAL = "awaiting_plan_approval"


@dataclass(slots=True)
class PendingCall:
    """A tool call the turn waits on."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    state: CallState
    reason: str = ""
    edited: bool = False
    plan_id: str = ""
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    from_agent: str
    to_agent: str
    reason: str
    confidence: float
    at: float


@dataclass(slots=True)
class Session:
    session_id: str
    owner: str
    agent: str
    messages: list[ChatMessage] = field(default_factory=list)
    last_seq: int = 0
    pending: dict[str, PendingCall] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    switches: list[SwitchRecord] = field(default_factory=list)
    plans: dict[str, tuple[PlanStep, ...]] = field(default_factory=dict)
    file_changes: dict[str, float] = field(default_factory=dict)

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def pending_plan(self, plan_id: str) -> PendingCall | None:
        for call in self.pending.values():
            if call.state is CallState.AWAITING_PLAN_APPROVAL and call.plan_id == plan_id:
                return call
        return None


class SessionRegistry:
    """The sessions this process knows, keyed by id. Not shared across replicas."""

    def __init__(self, default_agent: str) -> None:
        self._default_agent = default_agent
        self._sessions: dict[str, Session] = {}

    def open(self, session_id: str, owner: str) -> tuple[Session, bool]:
        """Return the owner's session, creating it if new; ``(session, created)``.

        Raises InvalidArgument for a malformed id and PermissionDenied when the
        session belongs to someone else.
        """
        check_session_id(session_id)
        session = self._sessions.get(session_id)
        if session is None:
            session = Session(session_id, owner, self._default_agent)
            self._sessions[session_id] = session
            return session, True
        if session.owner != owner:
            raise PermissionDenied("session belongs to another user")
        return session, False
