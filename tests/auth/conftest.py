"""Fixtures for the auth service: real SQLite files, real PostgreSQL, real keys."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.store import UserStore, create_engine, metadata, migrate
from tests.conftest import fresh_postgres, fresh_postgres_sync


def fast_hasher() -> PasswordHasher:
    """Cheap argon2 parameters keep the suite fast; production uses the library's defaults."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def passwords() -> Passwords:
    return Passwords(fast_hasher())


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def keys(keys_dir: Path) -> KeyRing:
    return KeyRing.load_or_create(keys_dir)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    # The parent directory does not exist yet: create_engine must make it.
    url = f"sqlite+aiosqlite:///{tmp_path}/data/auth.db"
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run, dropped at the end."""
    with fresh_postgres_sync("test_auth") as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of each kind with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/empty.db"
        return
    async with fresh_postgres("test_auth") as url:
        yield url


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    """The run's PostgreSQL database, emptied before each test."""
    engine = create_engine(postgres_database)
    try:
        async with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                await conn.execute(table.delete())
    finally:
        await engine.dispose()
    return postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind: SQLite file, PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def users(sqlite_url: str) -> AsyncIterator[UserStore]:
    """A user store on a migrated SQLite file."""
    engine = create_engine(sqlite_url)
    try:
        yield UserStore(engine)
    finally:
        await engine.dispose()


REPO_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**variables: str) -> dict[str, str]:
    """The environment for ``python -m auth...`` children: ours, minus AUTH_SERVICE__*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTH_SERVICE__")}
    # The checkout comes first so children import this tree's ``auth``.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


class FakeClock:
    """A clock tests move by hand; starts at the real time so key stamps make sense."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
