"""What a session tells its client, as plain data.

:mod:`runtime.service` turns these into ``runtime.v1`` messages; the turn
loop and the tests work with these dataclasses only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TurnStatus(enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    agent: str
    created: bool
    last_seq: int
    recovered: bool = True


@dataclass(frozen=True, slots=True)
class AssistantText:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TurnDone:
    status: TurnStatus
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    message: str
    retryable: bool = False


Event = SessionOpened | AssistantText | TurnDone | ErrorEvent


@dataclass(frozen=True, slots=True)
class Sequenced:
    """An event with its per-session sequence number."""

    seq: int
    event: Event
