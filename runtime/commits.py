"""Group commits: the steps many sessions write at once go out in one transaction.

:meth:`runtime.store.Store.commit` hands each step to a :class:`GroupCommit`.
A step that finds no write in flight is written at once; steps that arrive
while one is in flight queue and go out together in the next transaction
(at most :data:`MAX_BATCH`), so under load the database sees one short
transaction per batch instead of one per step, and on SQLite one writer
instead of many connections contending for its lock. Nothing waits for a
batch to fill: the batching is what queued meanwhile, no more.

Durability is unchanged: a step's :meth:`GroupCommit.commit` returns only
after the transaction holding it committed. So are the outcomes: a step
whose session was deleted raises :class:`SessionGone` and writes nothing,
the others in its batch are written; when a batch fails for any other
reason, each of its steps is retried in a transaction of its own and its
caller gets that transaction's outcome, as if it had been written alone.

How one step is written lives here too (:func:`write_steps`, a synchronous
function run by :func:`mesh.database.transact`: on SQLite the transaction is
one trip to SQLite's thread): every statement is an insert or an update by
primary key.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.database import transact
from runtime import checkpoints as checkpoint_rows
from runtime.records import CallRecord, Step, now
from runtime.schema import agent_switches, events, messages, plans, sessions, tool_calls

MAX_BATCH = 64
"""Most steps written in one transaction. No backpressure is needed beyond
it: each live session has at most one step in flight (its stream writes
them one at a time), so the queue is bounded by the live sessions."""


class SessionGone(Exception):
    """The session was deleted: a step for it is not written."""


@dataclass(slots=True)
class _Queued:
    step: Step
    done: asyncio.Future[None]


class GroupCommit:
    """Writes steps, batching those that arrive while a write is in flight.

    One writer task at a time, started by the first step that finds none and
    ending when nothing is queued; it belongs to this object.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None

    async def commit(self, step: Step) -> None:
        """Write ``step``; returns once its transaction committed.

        Raises :class:`SessionGone` (nothing of the step written) when its
        session was deleted, or what writing it alone raised. Safe to
        cancel: a step still queued is dropped unwritten; one already being
        written is written in full or not at all.
        """
        queued = _Queued(step, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_queued())
        try:
            await queued.done
        except asyncio.CancelledError:
            if queued in self._queue:
                self._queue.remove(queued)
            raise

    async def _write_queued(self) -> None:
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._write(batch)
        except BaseException:
            # Cancelled (the loop is closing): nobody waits forever.
            for queued in (*batch, *self._queue):
                queued.done.cancel()
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _write(self, batch: list[_Queued]) -> None:
        try:
            steps = [queued.step for queued in batch]
            gone = await transact(self._engine, write_steps, steps, now())
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One step's failure must not fail the others: each on its own.
            for queued in batch:
                await self._write([queued])
            return
        for queued in batch:
            step = queued.step
            _settle(queued, SessionGone(step.session_id) if id(step) in gone else None)


def _settle(queued: _Queued, error: BaseException | None = None) -> None:
    if queued.done.done():  # its caller was cancelled meanwhile
        return
    if error is None:
        queued.done.set_result(None)
    else:
        queued.done.set_exception(error)


def write_steps(conn: sa.Connection, steps: list[Step], stamp: datetime) -> set[int]:
    """Write ``steps`` in ``conn``'s transaction; returns the ``id()`` of each
    step whose session was deleted (nothing of those is written).

    The sessions' summary rows are updated first, in one statement; the
    log rows of the live steps then go out as one insert per table.
    """
    gone_sessions = _update_sessions(conn, steps, stamp)
    gone = {id(step) for step in steps if step.session_id in gone_sessions}
    live = [step for step in steps if id(step) not in gone]
    event_rows = [
        {
            "session_id": step.session_id,
            "seq": e.seq,
            "last_seq": e.last_seq,
            "kind": e.kind,
            "payload": json.dumps(e.payload, ensure_ascii=False),
            "created_at": stamp,
        }
        for step in live
        for e in step.events
    ]
    if event_rows:
        conn.execute(events.insert(), event_rows)
    message_rows = [
        {
            "session_id": step.session_id,
            "position": m.position,
            "role": m.role,
            "content": m.content,
            "tool_calls": json.dumps(m.tool_calls) if m.tool_calls else None,
            "tool_call_id": m.tool_call_id,
            "name": m.name,
            "agent": m.agent,
            "created_at": stamp,
        }
        for step in live
        for m in step.messages
    ]
    if message_rows:
        conn.execute(messages.insert(), message_rows)
    for step in live:
        for call in step.calls:
            _upsert_call(conn, step.session_id, call, stamp)
        for plan_id, plan_steps in step.plans.items():
            _upsert_plan(conn, step.session_id, plan_id, plan_steps, stamp)
        checkpoint_rows.write(conn, step, stamp)
        if step.switches:
            conn.execute(
                agent_switches.insert(),
                [
                    {
                        "session_id": step.session_id,
                        "from_agent": s.from_agent,
                        "to_agent": s.to_agent,
                        "reason": s.reason,
                        "confidence": s.confidence,
                        "created_at": stamp,
                    }
                    for s in step.switches
                ],
            )
    return gone


_UPDATE_SESSION = (
    sessions.update()
    .where(sessions.c.id == sa.bindparam("b_id"), sessions.c.deleted_at.is_(None))
    .values(
        last_seq=sa.bindparam("b_last_seq"),
        agent=sa.bindparam("b_agent"),
        state=sa.bindparam("b_state"),
        message_count=sa.bindparam("b_message_count"),
        updated_at=sa.bindparam("b_updated_at"),
        # None keeps the column as it is.
        title=sa.func.coalesce(sa.bindparam("b_title", type_=sa.String), sessions.c.title),
        seq_reserved=sa.func.coalesce(
            sa.bindparam("b_seq_reserved", type_=sa.BigInteger), sessions.c.seq_reserved
        ),
    )
)


def _update_sessions(conn: sa.Connection, steps: list[Step], stamp: datetime) -> set[str]:
    """Move each step's session summary columns with it, in one statement (in
    session id order, so two writers lock rows in the same order); returns
    the ids of the sessions that are deleted (or not there), not updated."""
    ordered = sorted(steps, key=lambda step: step.session_id)
    rows = [
        {
            "b_id": step.session_id,
            "b_last_seq": step.last_seq,
            "b_agent": step.agent,
            "b_state": step.state,
            "b_message_count": step.message_count,
            "b_updated_at": stamp,
            "b_title": step.title[:200] if step.title is not None else None,
            "b_seq_reserved": step.seq_reserved,
        }
        for step in ordered
    ]
    if len(rows) == 1:
        # One row (a batch of one, as under a light load): a plain execute,
        # whose row count every driver reports.
        result = conn.execute(_UPDATE_SESSION, rows[0])
        return set() if result.rowcount == 1 else {steps[0].session_id}
    ids = {step.session_id for step in steps}
    if conn.dialect.name == "postgresql":
        # asyncpg's executemany reports no row count: one statement takes
        # the rows as arrays and says which it updated.
        updated = conn.execute(
            _UPDATE_SESSIONS_PG,
            {
                "ids": [row["b_id"] for row in rows],
                "last_seqs": [row["b_last_seq"] for row in rows],
                "agents": [row["b_agent"] for row in rows],
                "states": [row["b_state"] for row in rows],
                "counts": [row["b_message_count"] for row in rows],
                "titles": [row["b_title"] for row in rows],
                "reserved": [row["b_seq_reserved"] for row in rows],
                "stamp": stamp,
            },
        )
        return ids - set(updated.scalars())
    result = conn.execute(_UPDATE_SESSION, rows)
    if conn.dialect.supports_sane_multi_rowcount and result.rowcount == len(steps):
        return set()
    # Some session is gone, or the driver cannot tell: ask. The rows this
    # transaction updated are locked by it, so what it reads here holds.
    live = conn.execute(_LIVE_SESSIONS, {"ids": list(ids)})
    return ids - set(live.scalars())


_LIVE_SESSIONS = sa.select(sessions.c.id).where(
    sessions.c.id.in_(sa.bindparam("ids", expanding=True)), sessions.c.deleted_at.is_(None)
)

# PostgreSQL: the steps' summary columns as arrays, one row each. The rows
# are locked in id order first (two writers never wait on each other in
# opposite orders), a deleted session's row is left alone, and the ids
# updated come back.
_UPDATE_SESSIONS_PG = sa.text(
    """
    WITH v AS (
        SELECT * FROM unnest(
            CAST(:ids AS VARCHAR[]), CAST(:last_seqs AS BIGINT[]),
            CAST(:agents AS VARCHAR[]), CAST(:states AS VARCHAR[]),
            CAST(:counts AS INTEGER[]), CAST(:titles AS VARCHAR[]),
            CAST(:reserved AS BIGINT[])
        ) AS v (id, last_seq, agent, state, message_count, title, seq_reserved)
    ), locked AS MATERIALIZED (
        SELECT s.id FROM sessions AS s JOIN v ON s.id = v.id
        WHERE s.deleted_at IS NULL
        ORDER BY s.id
        FOR UPDATE OF s
    )
    UPDATE sessions AS s SET
        last_seq = v.last_seq,
        agent = v.agent,
        state = v.state,
        message_count = v.message_count,
        updated_at = :stamp,
        title = COALESCE(v.title, s.title),
        seq_reserved = COALESCE(v.seq_reserved, s.seq_reserved)
    FROM v JOIN locked ON locked.id = v.id
    WHERE s.id = v.id
    RETURNING s.id
    """
).bindparams(
    sa.bindparam("ids", type_=ARRAY(sa.String)),
    sa.bindparam("last_seqs", type_=ARRAY(sa.BigInteger)),
    sa.bindparam("agents", type_=ARRAY(sa.String)),
    sa.bindparam("states", type_=ARRAY(sa.String)),
    sa.bindparam("counts", type_=ARRAY(sa.Integer)),
    sa.bindparam("titles", type_=ARRAY(sa.String)),
    sa.bindparam("reserved", type_=ARRAY(sa.BigInteger)),
    sa.bindparam("stamp", type_=sa.DateTime(timezone=True)),
)


# Built once, their compiled forms cached (building a statement with its
# values per write cost SQLAlchemy about as much CPU as SQLite's work). An
# update sets the columns its parameters name; the "b_" ones are its WHERE.
_UPDATE_CALL = tool_calls.update().where(tool_calls.c.call_id == sa.bindparam("b_call_id"))
_INSERT_CALL = tool_calls.insert()
_UPDATE_PLAN = plans.update().where(
    plans.c.session_id == sa.bindparam("b_session_id"),
    plans.c.plan_id == sa.bindparam("b_plan_id"),
)
_INSERT_PLAN = plans.insert()


def _upsert_call(conn: sa.Connection, session_id: str, call: CallRecord, stamp: datetime) -> None:
    values = {
        "status": call.status,
        "final_arguments": (
            json.dumps(call.final_arguments) if call.final_arguments is not None else None
        ),
        "offered_seq": call.offered_seq,
        "decided_by": call.decided_by,
        "decided_at": call.decided_at,
        # A sub-call's work moves on with it (an edit changes what its change writes).
        "job": json.dumps(call.job, ensure_ascii=False) if call.job is not None else None,
        "updated_at": stamp,
    }
    result = conn.execute(_UPDATE_CALL, {"b_call_id": call.call_id, **values})
    if result.rowcount == 0:
        conn.execute(
            _INSERT_CALL,
            {
                "call_id": call.call_id,
                "session_id": session_id,
                "tool_name": call.tool_name,
                "agent": call.agent,
                "arguments": json.dumps(call.arguments),
                "reason": call.reason,
                "plan_id": call.plan_id,
                "parent_call_id": call.parent_call_id,
                "created_at": stamp,
                **values,
            },
        )


def _upsert_plan(
    conn: sa.Connection,
    session_id: str,
    plan_id: str,
    plan_steps: list[list[str]],
    stamp: datetime,
) -> None:
    text = json.dumps(plan_steps, ensure_ascii=False)
    result = conn.execute(
        _UPDATE_PLAN,
        {"b_session_id": session_id, "b_plan_id": plan_id, "steps": text, "updated_at": stamp},
    )
    if result.rowcount == 0:
        conn.execute(
            _INSERT_PLAN,
            {"session_id": session_id, "plan_id": plan_id, "steps": text, "updated_at": stamp},
        )
