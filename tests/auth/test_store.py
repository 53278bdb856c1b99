"""The user store and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from auth.errors import AlreadyExists, InvalidUsername, NotFound
from auth.store import (
    UserStore,
    alembic_config,
    create_engine,
    current_revision,
    metadata,
    migrate,
)

HEAD = "0002"


async def test_add_and_get_user(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        store = UserStore(engine)
        added = await store.add_user("alice", "hash-1")
        found = await store.get_by_username("alice")
    finally:
        await engine.dispose()
    assert found == added
    assert found is not None
    assert len(found.id) == 36
    assert not found.disabled
    assert found.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - found.created_at) < timedelta(minutes=1)


async def test_usernames_are_unique_and_exact(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        store = UserStore(engine)
        await store.add_user("alice", "h")
        with pytest.raises(AlreadyExists):
            await store.add_user("alice", "h2")
        assert await store.get_by_username("ALICE") is None
        assert await store.get_by_username("bob") is None
    finally:
        await engine.dispose()


async def test_disable_enable_and_list(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        store = UserStore(engine)
        await store.add_user("bob", "h")
        await store.add_user("alice", "h")
        await store.set_disabled("bob", True)
        await store.set_disabled("bob", True)  # idempotent
        listed = await store.list_users()
        assert [(u.username, u.disabled) for u in listed] == [("alice", False), ("bob", True)]
        await store.set_disabled("bob", False)
        bob = await store.get_by_username("bob")
        assert bob is not None
        assert not bob.disabled
        with pytest.raises(NotFound):
            await store.set_disabled("carol", True)
    finally:
        await engine.dispose()


async def test_password_hash_updates(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        store = UserStore(engine)
        user = await store.add_user("alice", "old")
        assert not await store.replace_password_hash(user.id, "stale", "new")
        assert await store.replace_password_hash(user.id, "old", "new")
        await store.set_password_hash("alice", "newer")
        again = await store.get_by_username("alice")
        assert again is not None
        assert again.password_hash == "newer"
        with pytest.raises(NotFound):
            await store.set_password_hash("nobody", "x")
    finally:
        await engine.dispose()


@pytest.mark.parametrize("username", ["", "has space", "x" * 151, "semi;colon"])
async def test_bad_usernames_are_refused(users: UserStore, username: str) -> None:
    with pytest.raises(InvalidUsername):
        await users.add_user(username, "h")


async def test_migrated_schema_matches_the_table_definition(database_url: str) -> None:
    engine = create_engine(database_url)

    def diff(connection: sa.Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
        assert await current_revision(engine) == HEAD
    finally:
        await engine.dispose()


async def test_migrate_creates_schema_on_an_empty_database_and_is_idempotent(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/a/b/fresh.db"
    engine = create_engine(url)
    try:
        assert await current_revision(engine) is None
        await migrate(url)
        await migrate(url)
        assert await current_revision(engine) == HEAD
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert set(tables) == {"alembic_version", *metadata.tables}
    finally:
        await engine.dispose()
    assert (tmp_path / "a" / "b" / "fresh.db").is_file()


async def test_migrate_works_from_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    await migrate("sqlite+aiosqlite:///relative/auth.db")
    assert (tmp_path / "relative" / "auth.db").is_file()


async def test_upgrade_from_the_previous_revision_keeps_users(empty_database_url: str) -> None:
    def upgrade_to(connection: sa.Connection, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "0001")
        assert await current_revision(engine) == "0001"
        await UserStore(engine).add_user("alice", "h")

        await migrate(empty_database_url)

        assert await current_revision(engine) == HEAD
        assert await UserStore(engine).get_by_username("alice") is not None

        def diff(connection: sa.Connection) -> list[object]:
            return list(compare_metadata(MigrationContext.configure(connection), metadata))

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_from_empty(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        assert await current_revision(engine) == HEAD
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert set(tables) == {"alembic_version", *metadata.tables}
    finally:
        await engine.dispose()
