"""Session leases name the holder's address, on both databases."""

from __future__ import annotations

from runtime.store import Store


async def test_a_lease_names_its_holder_until_released_or_expired(store: Store) -> None:
    await store.create_session("s1", "alice", "coder")
    leases = store.leases
    assert await leases.holder("s1") is None, "nobody holds a new session"
    assert await leases.acquire("s1", "r1", 60, "10.0.0.1:50051")
    assert await leases.holder("s1") == ("r1", "10.0.0.1:50051")
    assert not await leases.acquire("s1", "r2", 60, "10.0.0.2:50051")
    assert await leases.holder("s1") == ("r1", "10.0.0.1:50051"), "a refused take changes nothing"
    await leases.release("s1", "r1")
    assert await leases.holder("s1") is None
    assert await leases.acquire("s1", "r2", -1, "10.0.0.2:50051")
    assert await leases.holder("s1") is None, "an expired lease names nobody"
    assert await leases.acquire("s1", "r3", 60)
    assert await leases.holder("s1") == ("r3", None), "a replica that advertises no address"
