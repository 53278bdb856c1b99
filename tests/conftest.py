"""Shared test setup: environment that must be right before any import."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

# LiteLLM fetches its model cost map from the network at import unless told
# otherwise; set it before anything imports litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


_BELOW_EPHEMERAL = (20_000, 32_000)
"""Where free_port looks: below Linux's ephemeral range (32768-60999), so a
port handed to a service started later is not meanwhile taken as the local
end of some outgoing connection (the suite makes thousands)."""


_handed_out: collections.deque[int] = collections.deque(maxlen=1_000)
"""The ports free_port gave this process last: a service may not have bound
one yet (older ones are bound by now, or free again)."""


def port_range() -> tuple[int, int]:
    """This process's share of :data:`_BELOW_EPHEMERAL` (both ends included):
    each of pytest-xdist's workers (``gw0``, ``gw1``, …) has its own, so two
    workers never hand out the same port while neither has bound it yet."""
    low, high = _BELOW_EPHEMERAL
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if count > 1 and worker.startswith("gw") and worker[2:].isdigit():
        size = (high - low + 1) // count
        start = low + (int(worker[2:]) % count) * size
        return start, start + size - 1
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, in this process's
    :func:`port_range`, and not one it handed out before."""
    for _ in range(200):
        port = random.randint(*port_range())
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    return free_port()


POSTGRES_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def require_postgres() -> None:
    """Skip when PostgreSQL is not on 127.0.0.1:5432 — except in CI, where it fails."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return
    except OSError:
        pass
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("PostgreSQL is required in CI but 127.0.0.1:5432 is not reachable")
    pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")


async def _postgres_admin(statement: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def fresh_postgres(prefix: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards. Yields its URL."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_RUNTIME_TEMPLATE: list[str] = []
"""The run's PostgreSQL database migrated once to the runtime's newest
schema, that :func:`migrated_postgres` copies (at most one name)."""


def _postgres_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


@contextlib.asynccontextmanager
async def migrated_postgres(prefix: str) -> AsyncIterator[str]:
    """A new PostgreSQL database at the runtime's newest schema, dropped
    afterwards; its URL. It is a copy (``CREATE DATABASE ... TEMPLATE``) of
    a database the migrations built once in this run, which is the schema a
    migration of an empty database gives (tests/runtime/test_store.py
    migrates empty ones), at a fraction of the cost per test."""
    require_postgres()
    if not _RUNTIME_TEMPLATE:
        from runtime.store import migrate

        template = f"test_runtime_template_{uuid.uuid4().hex[:12]}"
        await _postgres_admin(f'CREATE DATABASE "{template}"')
        _RUNTIME_TEMPLATE.append(template)
        await migrate(_postgres_url(template))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(f'CREATE DATABASE "{name}" TEMPLATE "{_RUNTIME_TEMPLATE[0]}"')
    try:
        yield _postgres_url(name)
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run's template database goes with the run."""
    for template in _RUNTIME_TEMPLATE:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))


@contextlib.contextmanager
def fresh_postgres_sync(prefix: str) -> Iterator[str]:
    """:func:`fresh_postgres` for synchronous fixtures (outside any event loop)."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
