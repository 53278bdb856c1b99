"""Group commits and grouped owner reads, on SQLite and PostgreSQL: steps of
sessions committing at once share one transaction and keep each one's outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.database import create_engine
from runtime.owner_reads import OwnerSettings
from runtime.records import EventRecord, MessageRecord, Step
from runtime.rules import ApprovalRules, Rule
from runtime.schema import events, messages
from runtime.store import SessionGone, Store, migrate
from tests.runtime import test_store
from tests.support import eventually

empty_url = test_store.empty_url
"""A database of each kind: a SQLite file, a fresh PostgreSQL one (the fixture)."""


@pytest.fixture
async def engine(empty_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(empty_url)
    engine = create_engine(empty_url)
    yield engine
    await engine.dispose()


def counting(engine: AsyncEngine, what: str) -> list[str]:
    """Every transaction commit (``what`` "commit") or statement ("statement") from now on."""
    seen: list[str] = []
    if what == "commit":
        sa.event.listen(engine.sync_engine, "commit", lambda conn: seen.append("commit"))
    else:

        def statement(*args: Any) -> None:
            seen.append(args[2])

        sa.event.listen(engine.sync_engine, "before_cursor_execute", statement)
    return seen


def turn_step(session_id: str, seq: int, text: str, title: str | None = None) -> Step:
    step = Step(session_id=session_id, last_seq=seq, agent="ask", state="idle", message_count=1)
    step.messages = [MessageRecord(0, "assistant", text)]
    step.events = [EventRecord(seq, seq, "turn_done", {"n": seq})]
    step.title = title
    return step


async def logged(engine: AsyncEngine, session_id: str) -> tuple[list[str], list[int]]:
    async with engine.connect() as conn:
        texts = await conn.execute(
            sa.select(messages.c.content).where(messages.c.session_id == session_id)
        )
        seqs = await conn.execute(sa.select(events.c.seq).where(events.c.session_id == session_id))
        return list(texts.scalars()), list(seqs.scalars())


async def test_steps_of_sessions_committing_at_once_share_one_transaction(
    engine: AsyncEngine,
) -> None:
    store = Store(engine)
    names = [f"s{i:02}" for i in range(20)]
    for name in names:
        await store.create_session(name, "alice", "ask", title="first")
    commits = counting(engine, "commit")
    await asyncio.gather(
        *(
            store.commit(turn_step(n, 7, f"answer {n}", "renamed" if n == "s03" else None))
            for n in names
        )
    )
    assert len(commits) < len(names), "fewer transactions than steps"
    for name in names:
        assert await logged(engine, name) == ([f"answer {name}"], [7])
        row = await store.get_session(name)
        assert row is not None
        assert (row.last_seq, row.message_count) == (7, 1)
        assert row.title == ("renamed" if name == "s03" else "first"), "no title: kept"


async def test_a_deleted_sessions_step_in_a_batch_is_refused_and_the_others_written(
    engine: AsyncEngine,
) -> None:
    store = Store(engine)
    for name in ("a", "gone", "b"):
        await store.create_session(name, "alice", "ask")
    assert await store.delete_session("gone")
    results = await asyncio.gather(
        *(store.commit(turn_step(n, 3, f"to {n}")) for n in ("a", "gone", "b", "never")),
        return_exceptions=True,
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], SessionGone)
    assert isinstance(results[3], SessionGone)
    assert await logged(engine, "gone") == ([], []), "nothing of a deleted session comes back"
    assert await logged(engine, "a") == (["to a"], [3])
    assert await logged(engine, "b") == (["to b"], [3])


async def test_a_step_alone_is_written_or_refused_without_a_query_for_its_session(
    engine: AsyncEngine,
) -> None:
    """A batch of one (a light load) learns from its update's row count
    whether its session is gone, on both databases (asyncpg reports no
    count for a batch of several, which then asks)."""
    store = Store(engine)
    for name in ("a", "gone"):
        await store.create_session(name, "alice", "ask")
    assert await store.delete_session("gone")
    statements = counting(engine, "statement")

    await store.commit(turn_step("a", 3, "to a"))
    for name in ("gone", "never"):
        with pytest.raises(SessionGone):
            await store.commit(turn_step(name, 3, f"to {name}"))

    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert await logged(engine, "a") == (["to a"], [3])
    assert await logged(engine, "gone") == ([], [])


async def test_a_batch_learns_which_sessions_are_gone_from_its_update_alone(
    engine: AsyncEngine,
) -> None:
    """Steps committing at once, one of a deleted session and one of a
    session never made among them: the others are written and those two
    refused, with no query asking which sessions live (on PostgreSQL one
    statement updates the batch and returns the ids it updated; SQLite's
    row count says when all were, and only when one is gone does it ask)."""
    store = Store(engine)
    names = [f"s{i:02}" for i in range(12)]
    for name in [*names, "gone"]:
        await store.create_session(name, "alice", "ask", title="first")
    assert await store.delete_session("gone")
    commits = counting(engine, "commit")
    statements = counting(engine, "statement")

    def selects() -> list[str]:
        return [s for s in statements if s.lstrip().upper().startswith("SELECT")]

    await asyncio.gather(*(store.commit(turn_step(n, 4, f"to {n}")) for n in names))
    assert len(commits) < len(names), "the steps went out in batches"
    assert not selects()

    def second(name: str) -> Step:
        step = turn_step(name, 9, f"again {name}", "renamed" if name == "s05" else None)
        step.messages = [MessageRecord(1, "assistant", f"again {name}")]
        step.message_count = 2
        return step

    results = await asyncio.gather(
        *(store.commit(second(n)) for n in [*names[:6], "gone", *names[6:], "never"]),
        return_exceptions=True,
    )
    assert [i for i, r in enumerate(results) if r is not None] == [6, len(results) - 1]
    assert isinstance(results[6], SessionGone)
    assert isinstance(results[-1], SessionGone)
    if engine.dialect.name == "postgresql":
        assert not selects()
    for name in names:
        assert await logged(engine, name) == ([f"to {name}", f"again {name}"], [4, 9])
        row = await store.get_session(name)
        assert row is not None
        assert (row.last_seq, row.message_count) == (9, 2)
        assert row.title == ("renamed" if name == "s05" else "first"), "no title: kept"
    assert await logged(engine, "gone") == ([], [])
    assert await store.get_session("never") is None


async def test_a_batch_on_sqlite_is_one_trip_to_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of a step's transaction and its commit run on SQLite's
    thread in one trip (mesh.database.transact), not a trip each."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}"
    await migrate(url)
    engine = create_engine(url)
    try:
        store = Store(engine)
        await store.create_session("a", "alice", "ask")
        trips: list[str] = []
        real = aiosqlite.Connection._execute

        async def counting(self: aiosqlite.Connection, fn: Any, *args: Any) -> Any:
            trips.append(fn.__name__)
            return await real(self, fn, *args)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
        step = turn_step("a", 4, "to a")
        step.messages.append(MessageRecord(1, "user", "and more"))
        await store.commit(step)
        assert trips == ["_inline"]
        assert await logged(engine, "a") == (["to a", "and more"], [4])
    finally:
        await engine.dispose()


async def test_a_failing_step_fails_alone_and_the_others_in_its_batch_are_written(
    engine: AsyncEngine,
) -> None:
    store = Store(engine)
    for name in ("a", "b", "c"):
        await store.create_session(name, "alice", "ask")
    await store.commit(turn_step("b", 5, "first"))
    duplicate = turn_step("b", 5, "again")  # seq 5 is in b's log already
    duplicate.messages = [MessageRecord(1, "assistant", "again")]
    results = await asyncio.gather(
        store.commit(turn_step("a", 5, "to a")),
        store.commit(duplicate),
        store.commit(turn_step("c", 5, "to c")),
        return_exceptions=True,
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert await logged(engine, "b") == (["first"], [5]), "the failed step wrote nothing"
    assert await logged(engine, "a") == (["to a"], [5])
    assert await logged(engine, "c") == (["to c"], [5])


async def test_a_commit_cancelled_while_queued_writes_nothing(
    engine: AsyncEngine, empty_url: str
) -> None:
    store = Store(engine)
    for name in ("a", "b"):
        await store.create_session(name, "alice", "ask")
    blocker = create_engine(empty_url)
    try:
        # Another transaction holds a's row (on SQLite: the write lock), so
        # a's write waits in flight and b's step queues behind it.
        async with blocker.begin() as conn:
            await conn.execute(sa.text("UPDATE sessions SET title = 'held' WHERE id = 'a'"))
            first = asyncio.create_task(store.commit(turn_step("a", 2, "to a")))
            commits = store._commits
            # a's step is taken off the queue by the writer: it is in flight
            await eventually(lambda: commits._writer is not None and not commits._queue)
            queued = asyncio.create_task(store.commit(turn_step("b", 2, "to b")))
            await eventually(lambda: bool(store._commits._queue))
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
        await first
    finally:
        await blocker.dispose()
    assert await logged(engine, "a") == (["to a"], [2])
    assert await logged(engine, "b") == ([], []), "the cancelled step was dropped unwritten"


async def test_owners_asked_for_at_once_are_read_in_one_query_and_current(
    engine: AsyncEngine,
) -> None:
    store = Store(engine)
    pytest_rule = Rule.parse("execute_command(pytest:*)")
    await store.rules.set("alice", ApprovalRules(allow=(pytest_rule,)))
    await store.instructions.set("bob", "Answer in German.")
    statements = counting(engine, "statement")
    owners = ["alice", "bob", "carol"] * 10
    got = await asyncio.gather(*(store.owner_reads.get(owner) for owner in owners))
    assert len(statements) == 1, "one query answers every read asked for at once"
    expected = {
        "alice": OwnerSettings(ApprovalRules(allow=(pytest_rule,)), ""),
        "bob": OwnerSettings(ApprovalRules(), "Answer in German."),
        "carol": OwnerSettings(ApprovalRules(), ""),
    }
    assert got == [expected[owner] for owner in owners]
    await store.rules.set("alice", ApprovalRules())
    await store.instructions.set("alice", "Be brief.")
    assert await store.owner_reads.get("alice") == OwnerSettings(ApprovalRules(), "Be brief."), (
        "a change holds for the next read"
    )
