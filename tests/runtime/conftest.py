"""Fixtures of the runtime's tests that run on a real database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesh.database import create_engine
from runtime.conversation import Conversation
from runtime.store import Store, migrate
from tests.conftest import migrated_postgres


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated store on each backend: a SQLite file, a fresh PostgreSQL database."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
            await migrate(url)
        else:
            url = await stack.enter_async_context(migrated_postgres("test_runtime"))
        engine = create_engine(url)
        async with _closing(engine) as store:
            yield store


@contextlib.asynccontextmanager
async def _closing(engine: Any) -> AsyncIterator[Store]:
    try:
        yield Store(engine)
    finally:
        # Turns still running hold connections: end them before the engine goes.
        while LIVE:
            conversation = LIVE.pop()
            await conversation.close()
            await conversation.wait_idle()
        await engine.dispose()


LIVE: list[Conversation] = []
