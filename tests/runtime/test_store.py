"""The runtime's SQL store and its migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from mesh.database import alembic_config, create_engine, current_revision
from runtime.errors import InvalidArgument
from runtime.records import CallRecord, EventRecord, MessageRecord, Step, SwitchRecord
from runtime.schema import (
    VERSION_TABLE,
    agent_switches,
    events,
    messages,
    metadata,
    plans,
    tool_calls,
)
from runtime.store import MIGRATIONS_DIR, SessionExists, SessionGone, Store, head_revision, migrate
from tests.conftest import fresh_postgres


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
        return
    async with fresh_postgres("test_runtime_store") as url:
        yield url


@pytest.fixture
async def store(empty_url: str) -> AsyncIterator[Store]:
    await migrate(empty_url)
    engine = create_engine(empty_url)
    yield Store(engine)
    await engine.dispose()


def revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(MIGRATIONS_DIR))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def schema_differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            def compare(connection: sa.Connection) -> list[object]:
                context = MigrationContext.configure(
                    connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
                )
                return list(compare_metadata(context, metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def test_migrations_from_empty_and_from_each_revision(empty_url: str) -> None:
    steps = revisions()
    assert steps[-1] == head_revision()
    for revision in steps:  # each upgrade starts from the revision before it
        await migrate(empty_url, revision)
    await migrate(empty_url)  # idempotent at head
    engine = create_engine(empty_url)
    try:
        assert await current_revision(engine, VERSION_TABLE) == head_revision()
    finally:
        await engine.dispose()
    assert await schema_differences(empty_url) == [], "migrations build exactly the models"


async def test_a_step_round_trips_and_history_is_append_only(store: Store) -> None:
    await store.create_session("s1", "alice", "coder")
    with pytest.raises(SessionExists):
        await store.create_session("s1", "bob", "coder")
    step = Step(session_id="s1", last_seq=4, agent="coder", state="waiting", message_count=2)
    step.messages = [
        MessageRecord(0, "user", "write a"),
        MessageRecord(
            1,
            "assistant",
            "",
            tool_calls=[{"call_id": "c1", "name": "write_file", "arguments_json": "{}"}],
        ),
    ]
    step.events = [
        EventRecord(1, 3, "text", {"chunks": [[1, "a"], [2, "b"], [3, "c"]]}),
        EventRecord(4, 4, "tool_call", {"call_id": "c1"}),
    ]
    step.calls = [CallRecord("c1", "write_file", "coder", "awaiting_approval", {"path": "a"})]
    step.plans = {"p": [["1", "read", "pending"]]}
    await store.commit(step)
    loaded = await store.load("s1")
    assert loaded.session.last_seq == 4
    assert loaded.session.state == "waiting"
    assert [m.content for m in loaded.messages] == ["write a", ""]
    assert loaded.messages[1].tool_calls == [
        {"call_id": "c1", "name": "write_file", "arguments_json": "{}"}
    ]
    assert [c.call_id for c in loaded.pending] == ["c1"]
    assert loaded.plans == {"p": [["1", "read", "pending"]]}
    assert [e.seq for e in await store.events_after("s1", 2)] == [1, 4], "the text row holds 3"
    assert [e.seq for e in await store.events_after("s1", 3)] == [4]
    decided = Step(session_id="s1", last_seq=5, agent="coder", state="running", message_count=3)
    decided.calls = [
        CallRecord(
            "c1", "write_file", "coder", "edited", {"path": "a"}, final_arguments={"path": "b"}
        )
    ]
    await store.commit(decided)
    (call,) = (await store.load("s1")).pending
    assert (call.status, call.final_arguments) == ("edited", {"path": "b"}), "its result is due"
    assert [c.call_id for c in await store.pending_calls("s1")] == ["c1"]
    answered = Step(session_id="s1", last_seq=6, agent="coder", state="idle", message_count=4)
    answered.calls = [CallRecord("c1", "write_file", "coder", "completed", {"path": "a"})]
    await store.commit(answered)
    assert (await store.load("s1")).pending == []
    assert await store.pending_calls("s1") == []
    assert "c1" in (await store.load("s1")).answered


async def test_sessions_page_newest_first_per_owner(store: Store) -> None:
    for index in range(5):
        await store.create_session(f"a{index}", "alice", "coder")
    await store.create_session("b0", "bob", "coder")
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_sessions("alice", limit=2, page_token=token)
        seen += [row.id for row in page]
        if not token:
            break
    assert seen == ["a4", "a3", "a2", "a1", "a0"]
    with pytest.raises(InvalidArgument):
        await store.list_sessions("alice", limit=2, page_token="garbage!")


async def _rows_of(store_url_engine: sa.ext.asyncio.AsyncEngine, session_id: str) -> int:
    total = 0
    async with store_url_engine.connect() as conn:
        for table in (events, messages, tool_calls, plans, agent_switches):
            query = sa.select(sa.func.count()).where(table.c.session_id == session_id)
            total += int((await conn.execute(query)).scalar_one())
    return total


async def test_a_deleted_session_leaves_only_a_tombstone_that_keeps_its_id(
    empty_url: str,
) -> None:
    await migrate(empty_url)
    engine = create_engine(empty_url)
    store = Store(engine)
    try:
        for session_id in ("gone", "kept"):
            await store.create_session(session_id, "alice", "coder", title="secret plans")
            step = Step(
                session_id=session_id, last_seq=2, agent="ask", state="idle", message_count=1
            )
            step.messages = [MessageRecord(0, "user", "read a")]
            step.events = [EventRecord(1, 2, "text", {"chunks": [[1, "a"], [2, "b"]]})]
            step.calls = [CallRecord(f"c-{session_id}", "read_file", "coder", "completed", {})]
            step.plans = {"p": [["1", "read", "pending"]]}
            step.switches = [SwitchRecord("coder", "ask", "asked", 1.0)]
            await store.commit(step)
        assert len(await store.agent_switches("kept")) == 1
        assert await store.count_sessions("alice") == 2

        assert await store.delete_session("gone") is True
        assert await store.delete_session("gone") is False, "already deleted"
        assert await store.delete_session("never") is False

        assert await _rows_of(engine, "gone") == 0, "nothing of it is left"
        assert await _rows_of(engine, "kept") == 5, "another session is untouched"
        tombstone = await store.get_session("gone")
        assert tombstone is not None
        assert tombstone.deleted_at is not None
        assert (tombstone.title, tombstone.message_count) == ("", 0)
        page, _ = await store.list_sessions("alice", limit=10)
        assert [row.id for row in page] == ["kept"]
        assert await store.count_sessions("alice") == 1
        with pytest.raises(SessionExists):
            await store.create_session("gone", "bob", "coder")
        late = Step(session_id="gone", last_seq=3, agent="ask", state="idle", message_count=2)
        late.messages = [MessageRecord(1, "assistant", "a late answer")]
        late.events = [EventRecord(3, 3, "turn_done", {})]
        with pytest.raises(SessionGone):
            await store.commit(late)
        assert await _rows_of(engine, "gone") == 0, "a late step writes nothing"
        assert await store.rename_session("gone", "back") is None
    finally:
        await engine.dispose()


async def test_a_rename_sets_the_title_and_moves_the_session_up(store: Store) -> None:
    await store.create_session("a", "alice", "coder", title="old")
    await store.create_session("b", "alice", "coder")
    renamed = await store.rename_session("a", "new")
    assert renamed is not None
    assert renamed.title == "new"
    page, _ = await store.list_sessions("alice", limit=10)
    assert [(row.id, row.title) for row in page] == [("a", "new"), ("b", "")]
    assert await store.rename_session("missing", "x") is None


async def test_one_replica_holds_a_session_lease_until_it_expires(store: Store) -> None:
    await store.create_session("leased", "alice", "coder")
    assert await store.leases.acquire("leased", "r1", ttl=60)
    assert await store.leases.acquire("leased", "r1", ttl=60), "the holder renews"
    assert not await store.leases.acquire("leased", "r2", ttl=60), "never two holders"
    assert await store.leases.renew("r1", ["leased"], ttl=60) == {"leased"}
    assert await store.leases.renew("r2", ["leased"], ttl=60) == set()
    assert await store.leases.acquire("leased", "r1", ttl=-1), "expired at once"
    assert await store.leases.acquire("leased", "r2", ttl=60), "an expired lease moves"
    assert await store.leases.owner("leased") == "r2"
    await store.leases.release("leased", "r1")  # not the holder: no effect
    assert await store.leases.owner("leased") == "r2"
    await store.leases.release("leased", "r2")
    assert await store.leases.owner("leased") is None


async def migrated_at_once(url: str, replicas: int) -> str | None:
    """Migrate ``url`` from ``replicas`` coroutines at once; its revision after."""
    import asyncio

    await asyncio.gather(*(migrate(url) for _ in range(replicas)))
    engine = create_engine(url)
    try:
        return await current_revision(engine, VERSION_TABLE)
    finally:
        await engine.dispose()


async def test_many_replicas_creating_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    """The first connections to a new SQLite file race to switch it to WAL,
    which SQLite refuses at once ("database is locked") instead of waiting:
    before the switch was retried, about half of these rounds failed."""
    for round_ in range(10):
        url = f"sqlite+aiosqlite:///{tmp_path / f'round-{round_}.db'}"
        assert await migrated_at_once(url, 6) == head_revision()


async def test_replicas_migrating_at_once_do_not_collide(empty_url: str) -> None:
    assert await migrated_at_once(empty_url, 3) == head_revision()
