"""SessionHub: ownership and leases of live sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.database import create_engine
from runtime.conversation import ConversationSettings
from runtime.errors import PermissionDenied, Unavailable
from runtime.session import SessionHub
from runtime.store import Store, migrate


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
    await migrate(url)
    engine = create_engine(url)
    yield Store(engine)
    await engine.dispose()


def hub(store: Store, replica: str) -> SessionHub:
    settings = ConversationSettings(model="m")
    return SessionHub(store, None, settings, default_agent="coder", replica=replica, lease_ttl=60)  # type: ignore[arg-type]


async def test_a_session_is_served_by_one_replica_and_only_its_owner(store: Store) -> None:
    first, second = hub(store, "r1"), hub(store, "r2")
    _, created = await first.open("s1", "alice")
    assert created
    with pytest.raises(PermissionDenied):
        await first.open("s1", "mallory")
    with pytest.raises(Unavailable):
        await second.open("s1", "alice")
    assert await store.lease_owner("s1") == "r1"
    await first.close()
    assert await store.lease_owner("s1") is None, "closing releases the lease"
    again, _ = await second.open("s1", "alice")
    assert again.session.owner == "alice"
    await second.close()


async def test_reopening_right_after_an_eviction_keeps_the_lease(store: Store) -> None:
    replica = hub(store, "r1")
    conversation, _ = await replica.open("s2", "alice")
    subscriber = conversation.subscribe()
    conversation.unsubscribe(subscriber)  # idle: evicted, its lease release scheduled
    reopened, created = await replica.open("s2", "alice")
    assert not created
    assert reopened is not conversation
    await asyncio.sleep(0)  # let any scheduled release run
    assert await store.lease_owner("s2") == "r1", "the late release did not drop the new lease"
    await replica.close()
