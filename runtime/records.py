"""What the runtime keeps, as plain data: the rows :mod:`runtime.store` reads
and writes, a turn step's changes (:class:`Step`), and the statuses of a call.

Leaves: nothing here does I/O or imports another runtime module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AWAITING_DECISION = ("awaiting_approval", "awaiting_plan_approval")
"""Statuses of a call that waits for a human's decision (what ListPendingApprovals lists)."""
DECIDED_STATUSES = ("approved", "edited")
"""A human approved the call, as proposed or edited: the IDE's result is due now.
A plan's approval is the exception: it answers the plan's call (see :func:`is_pending`)."""
RUNNING = "running"
"""A model's call the runtime runs as IDE calls of its own (see :mod:`runtime.changes`):
it is answered when they are, and never offered to the IDE itself."""
EXECUTING = "executing"
"""A call the runtime runs itself (:mod:`runtime.executions`); one a restart cut off fails."""
PENDING_STATUSES = (
    *AWAITING_DECISION,
    "awaiting_result",
    *DECIDED_STATUSES,
    RUNNING,
    EXECUTING,
)
"""Every status a call the turn still waits on can have; any other status is final."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    owner: str
    title: str
    agent: str
    state: str
    last_seq: int
    message_count: int
    created_at: datetime
    updated_at: datetime
    seq_reserved: int = 0
    """How far text deltas may have been numbered (see :meth:`Store.reserve_seqs`)."""
    deleted_at: datetime | None = None
    """Set on a deleted session's tombstone (see :meth:`Store.delete_session`)."""
    model: str = ""
    """The model group the user chose (:mod:`runtime.models`); "": each agent's default."""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    position: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str = ""
    name: str = ""
    agent: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One log row: a single event (seq == last_seq) or a run of text deltas."""

    seq: int
    last_seq: int
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    tool_name: str
    agent: str
    status: str
    arguments: dict[str, Any]
    final_arguments: dict[str, Any] | None = None
    reason: str = ""
    plan_id: str = ""
    offered_seq: int = 0
    decided_by: str | None = None
    decided_at: datetime | None = None
    created_at: datetime | None = None
    parent_call_id: str = ""
    """For a call the runtime issued on a model's call's behalf, that call's id."""
    job: dict[str, Any] | None = None
    """For such a call, the state of the work it is part of (:mod:`runtime.changes`)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A file's state before and after one change an agent made, kept so it can be undone.

    ``None`` for a state means the file did not exist. ``turn`` is the
    position of the user message whose turn made the change.
    """

    turn: int
    path: str
    before: str | None
    after: str | None
    id: int = 0
    undone: bool = False
    created_at: datetime | None = None


def call_metadata(parent_call_id: str, job: dict[str, Any] | None) -> dict[str, str]:
    """What a client is told of a call the runtime issued itself (``job`` set):
    the model's call it serves and, for a call that changes a file, the diff
    a human approves. Empty for any other call."""
    if job is None:
        return {}
    metadata = {"parent_call_id": parent_call_id, "parent_tool": job["tool"]}
    if job.get("diff") and job.get("step") != "read":
        metadata["diff"] = job["diff"]
    return metadata


def is_pending(call: CallRecord) -> bool:
    """Whether the turn still waits on ``call``: offered again on reopen, answered once."""
    if call.status in DECIDED_STATUSES:
        # update_plan is the only call with a plan_id, and approving a plan answers it.
        return not call.plan_id
    return call.status in PENDING_STATUSES


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    from_agent: str
    to_agent: str
    reason: str
    confidence: float
    created_at: datetime | None = None


@dataclass(slots=True)
class Step:
    """Everything one turn step changes, written in one transaction."""

    session_id: str
    last_seq: int
    agent: str
    state: str
    message_count: int
    events: list[EventRecord] = field(default_factory=list)
    messages: list[MessageRecord] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    plans: dict[str, list[list[str]]] = field(default_factory=dict)
    switches: list[SwitchRecord] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    undone: list[int] = field(default_factory=list)
    """Ids of checkpoints an undo restored."""
    title: str | None = None
    seq_reserved: int | None = None
    """Raise the session's text-delta reservation (see :meth:`Store.reserve_seqs`)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A session's state as the turn loop needs it."""

    session: SessionRow
    messages: list[MessageRecord]
    pending: list[CallRecord]
    answered: set[str]
    plans: dict[str, list[list[str]]]


def aware(value: datetime) -> datetime:
    """``value`` as an aware datetime: SQLite hands back naive ones; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def message_from_row(row: Any) -> MessageRecord:
    """A row of ``messages`` (or of ``branch_messages``, which has the same columns)."""
    return MessageRecord(
        position=row.position,
        role=row.role,
        content=row.content,
        tool_calls=json.loads(row.tool_calls) if row.tool_calls else None,
        tool_call_id=row.tool_call_id,
        name=row.name,
        agent=row.agent,
        created_at=aware(row.created_at),
    )
