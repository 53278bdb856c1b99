"""mesh.sqlite_driver: a SQLite statement is one trip to its connection's
thread, and what comes back is what SQLAlchemy's own aiosqlite adapter gives."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh import sqlite_driver
from mesh.database import create_engine, transact

items = sa.Table(
    "items",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, unique=True, nullable=False),
)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Every function aiosqlite runs on a connection's thread, by name."""
    counted: collections.Counter[str] = collections.Counter()
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counted[getattr(fn, "__name__", repr(fn))] += 1
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return counted


@pytest.fixture(params=[False, True], ids=["deferred", "immediate"])
def immediate(request: pytest.FixtureRequest) -> bool:
    """Whether transactions begin with a ``BEGIN IMMEDIATE`` statement."""
    return bool(request.param)


@pytest.fixture
async def engine(immediate: bool, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}", immediate=immediate)
    async with engine.begin() as conn:
        await conn.run_sync(items.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


def test_the_mesh_engine_uses_the_one_trip_driver(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert isinstance(engine.dialect.dbapi, sqlite_driver.Dbapi)
    postgres = create_engine("postgresql+asyncpg://u@127.0.0.1/x")
    assert not isinstance(postgres.dialect.dbapi, sqlite_driver.Dbapi)


async def test_a_statement_is_one_trip_and_an_idle_connection_returns_without_one(
    engine: AsyncEngine, immediate: bool, trips: collections.Counter[str]
) -> None:
    async with engine.connect() as conn:  # a connection opened before counting
        await conn.execute(sa.text("SELECT 1"))
    trips.clear()

    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(items.c.name))).all()
    assert rows == []
    if immediate:  # BEGIN IMMEDIATE opens a transaction even to read, and it is rolled back
        assert trips == {"_execute": 2, "rollback": 1}
    else:  # the query, and nothing for the pool's reset: no transaction was open
        assert trips == {"_execute": 1}

    trips.clear()
    async with engine.begin() as conn:
        await conn.execute(items.insert().values(name="a"))
        await conn.execute(items.update().where(items.c.name == "a").values(name="b"))
    begin = 1 if immediate else 0
    assert trips == collections.Counter(_execute=2 + begin, commit=1)

    trips.clear()
    async with engine.begin() as conn:
        await conn.execute(items.insert(), [{"name": "c"}, {"name": "d"}, {"name": "e"}])
    assert trips == collections.Counter(_executemany=1, _execute=begin, commit=1)


async def test_results_are_the_ones_sqlalchemy_gives(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(items.insert().values(name="a"))
        assert inserted.inserted_primary_key == (1,)
        assert inserted.rowcount == 1
        many = await conn.execute(items.insert(), [{"name": n} for n in "bcd"])
        assert many.rowcount == 3
        exclaim = items.update().where(items.c.id > 2).values(name=items.c.name + "!")
        updated = await conn.execute(exclaim)
        assert updated.rowcount == 2
        deleted = await conn.execute(items.delete().where(items.c.name == "nobody"))
        assert deleted.rowcount == 0
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(items).order_by(items.c.id))
        assert list(result.keys()) == ["id", "name"]
        assert result.all() == [(1, "a"), (2, "b"), (3, "c!"), (4, "d!")]
        one = await conn.execute(sa.select(items.c.name).where(items.c.id == 2))
        assert one.scalar_one() == "b"
        parts = await conn.execute(sa.select(items.c.id).order_by(items.c.id))
        assert parts.fetchmany(3) == [(1,), (2,), (3,)]
        assert parts.fetchone() == (4,)
        assert parts.fetchone() is None
        streamed = await conn.stream(sa.select(items.c.id).order_by(items.c.id))
        assert [row.id async for row in streamed] == [1, 2, 3, 4]


async def test_a_failed_transaction_leaves_nothing_and_the_connection_serves_on(
    engine: AsyncEngine, trips: collections.Counter[str]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(items.insert().values(name="a"))
    trips.clear()

    async def insert_b_then_a_again() -> None:
        async with engine.begin() as conn:
            await conn.execute(items.insert().values(name="b"))
            await conn.execute(items.insert().values(name="a"))

    with pytest.raises(sa.exc.IntegrityError):
        await insert_b_then_a_again()
    assert trips["rollback"] == 1  # a transaction was open: it is rolled back
    with pytest.raises(sa.exc.OperationalError, match="no such table"):
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT * FROM nowhere"))
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(items.c.name))).scalars().all()
    assert names == ["a"]


async def test_an_explicit_rollback_undoes_the_writes(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(items.insert().values(name="kept"))
        await conn.commit()
        await conn.execute(items.insert().values(name="undone"))
        await conn.rollback()
        names = (await conn.execute(sa.select(items.c.name))).scalars().all()
    assert names == ["kept"]


async def test_a_closed_connection_answers_with_the_dbapis_error(tmp_path: Path) -> None:
    dbapi = sqlite_driver.Dbapi()
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'closed.db'}")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            adapted = raw.dbapi_connection
            assert isinstance(adapted, sqlite_driver.Connection)
            await adapted._connection.close()  # type: ignore[union-attr]
            cursor = adapted.cursor()
            with pytest.raises(dbapi.OperationalError):
                await conn.run_sync(lambda _sync: cursor.execute("SELECT 1"))
            await conn.invalidate()
    finally:
        await engine.dispose()


def _write_three(conn: sa.Connection, names: list[str]) -> int:
    """A transaction's work as SQLAlchemy's synchronous connection runs it."""
    conn.execute(items.insert(), [{"name": n} for n in names])
    renamed = conn.execute(
        items.update().where(items.c.name == names[0]).values(name=names[0] + "!")
    )
    conn.execute(items.delete().where(items.c.name == "nobody"))
    return int(renamed.rowcount)


async def test_a_transaction_run_through_transact_is_one_trip_with_its_commit(
    engine: AsyncEngine, immediate: bool, trips: collections.Counter[str]
) -> None:
    async with engine.connect() as conn:  # a connection opened before counting
        await conn.execute(sa.text("SELECT 1"))
    seen: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    trips.clear()

    assert await transact(engine, _write_three, ["a", "b", "c"]) == 1

    begin = 1 if immediate else 0  # BEGIN IMMEDIATE is a statement of its own
    assert trips == collections.Counter(_inline=1, _execute=begin), "statements and commit: one"
    assert len(seen) == 3 + begin, "SQLAlchemy saw every statement"
    async with engine.connect() as conn:  # another connection sees it: committed
        names = (await conn.execute(sa.select(items.c.name).order_by(items.c.id))).scalars()
        assert names.all() == ["a!", "b", "c"]


async def test_a_transaction_that_fails_in_transact_leaves_nothing(
    engine: AsyncEngine, trips: collections.Counter[str]
) -> None:
    await transact(engine, _write_three, ["a"])
    trips.clear()

    with pytest.raises(sa.exc.IntegrityError):
        await transact(engine, _write_three, ["b", "a!"])  # "a!" exists: b's insert undone too
    assert trips["rollback"] == 1
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(items.c.name))).scalars().all()
    assert names == ["a!"]
    assert await transact(engine, _write_three, ["d"]) == 1, "the connection serves on"


async def test_transact_on_sqlalchemys_own_adapter_gives_the_same(tmp_path: Path) -> None:
    """Not on our driver (as PostgreSQL's): the statements go one by one."""
    from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

    stock = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}",
        module=SQLiteDialect_aiosqlite.import_dbapi(),
    )
    try:
        async with stock.begin() as conn:
            await conn.run_sync(items.metadata.create_all)
        assert await transact(stock, _write_three, ["a", "b"]) == 1
        with pytest.raises(sa.exc.IntegrityError):
            await transact(stock, _write_three, ["c", "b"])  # b exists
        async with stock.connect() as conn:
            names = (await conn.execute(sa.select(items.c.name).order_by(items.c.id))).scalars()
            assert names.all() == ["a!", "b"]
    finally:
        await stock.dispose()
