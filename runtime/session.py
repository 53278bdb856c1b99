"""Sessions and who owns them (in memory until the SQL store lands).

A session belongs to the user who created it; any other user asking for it
gets :class:`runtime.errors.PermissionDenied`. Each session numbers its events
with a strictly increasing ``seq``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runtime.errors import InvalidArgument, PermissionDenied
from runtime.llm import ChatMessage

_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if well formed, else raise InvalidArgument."""
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidArgument("session_id must be 1-128 characters of [A-Za-z0-9._:-]")
    return session_id


@dataclass(slots=True)
class Session:
    session_id: str
    owner: str
    agent: str
    messages: list[ChatMessage] = field(default_factory=list)
    last_seq: int = 0

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq


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
