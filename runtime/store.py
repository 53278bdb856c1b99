"""The runtime's durable state in SQL: sessions, messages, tool calls, plans,
agent switches and an append-only event log numbered per session.

Writes come as one :class:`Step` per turn step (a user message, a model
call's outcome, a tool result, a decision) and are one short transaction
each, or one for the steps many sessions write at once (:mod:`runtime.commits`);
nothing is written per token (the text deltas of a model call are one
event row) and nothing already written is rewritten, except the status of a
tool call and the session's summary columns. The cost of a step does not
grow with the session's length: every statement is an insert or an update
by primary key. Deleting a session (:meth:`Store.delete_session`) deletes
its data in one transaction and leaves its row as a tombstone.

The tables are in :mod:`runtime.schema`; the schema in the database belongs
to Alembic (``runtime/migrations``), and :func:`migrate` applies it. Works
on SQLite (aiosqlite) and PostgreSQL (asyncpg). Which replica serves a
session (its lease) is :mod:`runtime.leases`, reached as :attr:`Store.leases`;
each user's approval rules are :mod:`runtime.rules_store`, as :attr:`Store.rules`;
forking a session is :mod:`runtime.forks`, as :attr:`Store.forks`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh import database
from runtime.branches import BRANCH_DATA, Branches
from runtime.checkpoints import Checkpoints
from runtime.commits import GroupCommit, SessionGone  # noqa: F401 - Store.commit raises it
from runtime.errors import InvalidArgument
from runtime.forks import Forks
from runtime.index_store import IndexStore
from runtime.instructions import InstructionsStore
from runtime.leases import Leases
from runtime.models import ModelChoices
from runtime.owner_reads import OwnerReads
from runtime.records import (
    PENDING_STATUSES,
    CallRecord,
    EventRecord,
    Loaded,
    MessageRecord,
    SessionRow,
    Step,
    SwitchRecord,
    aware,
    is_pending,
    message_from_row,
    now,
)
from runtime.rules_store import RulesStore
from runtime.schema import (
    agent_switches,
    checkpoints,
    events,
    messages,
    plans,
    search_chunks,
    sessions,
    tool_calls,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _session(row: Any) -> SessionRow:
    return SessionRow(
        id=row.id,
        owner=row.owner,
        title=row.title,
        agent=row.agent,
        state=row.state,
        last_seq=row.last_seq,
        message_count=row.message_count,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        seq_reserved=row.seq_reserved,
        deleted_at=aware(row.deleted_at) if row.deleted_at is not None else None,
        model=row.model,
    )


def _call(row: sa.Row[Any]) -> CallRecord:
    return CallRecord(
        call_id=row.call_id,
        tool_name=row.tool_name,
        agent=row.agent,
        status=row.status,
        arguments=json.loads(row.arguments),
        final_arguments=json.loads(row.final_arguments) if row.final_arguments else None,
        reason=row.reason,
        plan_id=row.plan_id,
        offered_seq=row.offered_seq,
        decided_by=row.decided_by,
        decided_at=aware(row.decided_at) if row.decided_at else None,
        created_at=aware(row.created_at),
        parent_call_id=row.parent_call_id,
        job=json.loads(row.job) if row.job else None,
    )


def encode_page_token(updated_at: datetime, session_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        stamp, session_id = json.loads(raw)
        return aware(datetime.fromisoformat(stamp)), str(session_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc


class SessionExists(Exception):
    """A session with that id already exists."""


_SESSION_DATA = (
    events,
    messages,
    tool_calls,
    plans,
    agent_switches,
    checkpoints,
    *BRANCH_DATA,
    search_chunks,
)
"""Every table holding a session's data, by ``session_id`` (deleted with it)."""


_SID: sa.BindParameter[str] = sa.bindparam("b_session_id")
# What opening a session (and waking a resting one) reads, built once with
# the session id bound: building a statement per call cost SQLAlchemy about
# as much CPU as SQLite's answer.
_SESSION_ROW = sessions.select().where(sessions.c.id == _SID)
_MESSAGES = messages.select().where(messages.c.session_id == _SID).order_by(messages.c.position)
_CALLS = (
    tool_calls.select()
    .where(tool_calls.c.session_id == _SID)
    .order_by(tool_calls.c.created_at, tool_calls.c.call_id)
)
_PLANS = plans.select().where(plans.c.session_id == _SID)
_HISTORY_COLUMNS = (
    sa.select(
        messages.c.role,
        messages.c.content,
        messages.c.tool_calls,
        messages.c.tool_call_id,
        messages.c.name,
        messages.c.agent,
    )
    .where(messages.c.session_id == _SID)
    .order_by(messages.c.position)
)
_INSERT_SESSION = sessions.insert()


class Store:
    """Queries and writes; each method is one short transaction, safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.leases = Leases(engine)
        """Which replica serves each session (:class:`runtime.leases.Leases`)."""
        self.checkpoints = Checkpoints(engine)
        """The checkpoints of sessions' changes (:class:`runtime.checkpoints.Checkpoints`)."""
        self.rules = RulesStore(engine)
        """Each user's approval rules (:class:`runtime.rules_store.RulesStore`)."""
        self.instructions = InstructionsStore(engine)
        self.owner_reads = OwnerReads(engine)
        """What each turn reads of its owner (:class:`runtime.owner_reads.OwnerReads`)."""
        self.forks = Forks(engine)
        """Forks of sessions (:class:`runtime.forks.Forks`)."""
        self.models = ModelChoices(engine)
        """Sessions' model choices (:class:`runtime.models.ModelChoices`)."""
        self.branches = Branches(engine)
        """Branches of sessions' histories (:class:`runtime.branches.Branches`)."""
        self._commits = GroupCommit(engine)
        self.index = IndexStore(engine)
        """Sessions' search indexes (:class:`runtime.index_store.IndexStore`)."""

    async def create_session(
        self, session_id: str, owner: str, agent: str, title: str = ""
    ) -> SessionRow:
        """Insert a new session; raises SessionExists if the id is taken."""
        stamp = now()
        values = {
            "id": session_id,
            "owner": owner,
            "title": title[:200],
            "agent": agent,
            "state": "idle",
            "last_seq": 0,
            "message_count": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(_INSERT_SESSION, values)
        except IntegrityError:
            raise SessionExists(session_id) from None
        return SessionRow(**values)  # type: ignore[arg-type]

    async def get_session(self, session_id: str) -> SessionRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_SESSION_ROW, {"b_session_id": session_id})).first()
        return None if row is None else _session(row)

    async def list_sessions(
        self, owner: str, *, limit: int, page_token: str = ""
    ) -> tuple[list[SessionRow], str]:
        """The owner's sessions, most recently updated first; returns (page, next token)."""
        query = sessions.select().where(sessions.c.owner == owner, sessions.c.deleted_at.is_(None))
        if page_token:
            stamp, last_id = decode_page_token(page_token)
            query = query.where(
                sa.or_(
                    sessions.c.updated_at < stamp,
                    sa.and_(sessions.c.updated_at == stamp, sessions.c.id < last_id),
                )
            )
        query = query.order_by(sessions.c.updated_at.desc(), sessions.c.id.desc()).limit(limit + 1)
        async with self._engine.connect() as conn:
            rows = [_session(row) for row in await conn.execute(query)]
        if len(rows) <= limit:
            return rows, ""
        page = rows[:limit]
        return page, encode_page_token(page[-1].updated_at, page[-1].id)

    async def count_sessions(self, owner: str) -> int:
        """How many sessions the owner has (deleted ones not counted)."""
        query = (
            sa.select(sa.func.count())
            .select_from(sessions)
            .where(sessions.c.owner == owner, sessions.c.deleted_at.is_(None))
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def rename_session(self, session_id: str, title: str) -> SessionRow | None:
        """Set the title of a session that is not deleted; None when there is none."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.deleted_at.is_(None))
                .values(title=title[:200], updated_at=now())
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(sessions.select().where(sessions.c.id == session_id))).one()
        return _session(row)

    async def delete_session(self, session_id: str) -> bool:
        """Delete everything of the session in one transaction and leave its
        row as a tombstone (``deleted_at`` set, title cleared, lease freed);
        False when there is no such session or it is already deleted.

        The tombstone keeps the id taken: :meth:`create_session` refuses it,
        and :meth:`commit` refuses any step for it (:class:`SessionGone`).
        """
        stamp = now()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.deleted_at.is_(None))
                .values(
                    deleted_at=stamp,
                    updated_at=stamp,
                    title="",
                    state="idle",
                    message_count=0,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if result.rowcount != 1:
                return False
            for table in _SESSION_DATA:
                await conn.execute(table.delete().where(table.c.session_id == session_id))
        return True

    async def agent_switches(self, session_id: str) -> list[SwitchRecord]:
        """The session's agent switches, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                agent_switches.select()
                .where(agent_switches.c.session_id == session_id)
                .order_by(agent_switches.c.id)
            )
            return [
                SwitchRecord(r.from_agent, r.to_agent, r.reason, r.confidence, aware(r.created_at))
                for r in rows
            ]

    async def load(self, session_id: str) -> Loaded:
        """Everything the turn loop needs to serve the session in this process."""
        bound = {"b_session_id": session_id}
        async with self._engine.connect() as conn:
            row = (await conn.execute(_SESSION_ROW, bound)).one()
            history = [message_from_row(m) for m in await conn.execute(_MESSAGES, bound)]
            calls = [_call(c) for c in await conn.execute(_CALLS, bound)]
            plan_rows = await conn.execute(_PLANS, bound)
            session_plans = {p.plan_id: json.loads(p.steps) for p in plan_rows}
        return Loaded(
            session=_session(row),
            messages=history,
            pending=[c for c in calls if is_pending(c)],
            answered={c.call_id for c in calls if not is_pending(c)},
            plans=session_plans,
        )

    async def commit(self, step: Step) -> None:
        """Write one step; the session's summary columns move with it.

        Returns once the transaction holding it committed; steps of many
        sessions committing at once share one (:mod:`runtime.commits`).
        Raises :class:`SessionGone` (and writes nothing) when the session
        was deleted meanwhile, so nothing of a deleted session comes back.
        """
        await self._commits.commit(step)

    async def reserve_seqs(self, session_id: str, upto: int) -> None:
        """Record that text deltas of the session may be numbered up to ``upto``.

        Deltas are sent before they are written; whoever serves the session
        after a crash numbers on after ``upto``, so no seq a client saw is
        reused. Only ever raises the mark.
        """
        async with self._engine.begin() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.seq_reserved < upto)
                .values(seq_reserved=upto)
            )

    async def events_after(self, session_id: str, after_seq: int) -> list[EventRecord]:
        """Log rows holding any event with seq > after_seq, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                events.select()
                .where(events.c.session_id == session_id, events.c.last_seq > after_seq)
                .order_by(events.c.seq)
            )
            return [EventRecord(r.seq, r.last_seq, r.kind, json.loads(r.payload)) for r in rows]

    async def history(self, session_id: str) -> list[MessageRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                messages.select()
                .where(messages.c.session_id == session_id)
                .order_by(messages.c.position)
            )
            return [message_from_row(r) for r in rows]

    async def history_columns(
        self, session_id: str
    ) -> Sequence[tuple[str, str, str | None, str, str, str]]:
        """The session's messages in order, only the columns a live history
        holds: ``role, content, tool_calls`` (JSON text or None),
        ``tool_call_id, name, agent``. What a resting session reads back
        (:func:`runtime.resting.recall`): no records and no timestamps
        parsed: a third to a half of :meth:`history`'s cost a message."""
        async with self._engine.connect() as conn:
            return (await conn.execute(_HISTORY_COLUMNS, {"b_session_id": session_id})).all()

    async def pending_calls(self, session_id: str) -> list[CallRecord]:
        """The calls the session's turn waits on (:func:`is_pending`), oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                tool_calls.select()
                .where(
                    tool_calls.c.session_id == session_id,
                    tool_calls.c.status.in_(PENDING_STATUSES),
                )
                .order_by(tool_calls.c.created_at, tool_calls.c.call_id)
            )
            return [call for call in map(_call, rows) if is_pending(call)]


async def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the runtime's schema to ``revision`` (default newest); idempotent."""
    await database.upgrade(database_url, MIGRATIONS_DIR, revision)


def head_revision() -> str:
    """The newest revision in ``runtime/migrations``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(database.alembic_config(MIGRATIONS_DIR)).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError("runtime/migrations has no revision")
    return head
