"""Token buckets, per-address rate limits and connection slots."""

from __future__ import annotations

import pytest

from gateway.limits import AddressRateLimiter, ConnectionSlots, TokenBucket, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.1)
    clock.now += 0.11
    assert bucket.take() == 0.0
    assert bucket.take() > 0
    clock.now += 10
    assert bucket.full()


def test_zero_rate_disables_the_bucket():
    bucket = TokenBucket(rate=0, burst=1)
    assert not bucket.enabled
    assert all(bucket.take() == 0.0 for _ in range(1000))


def test_addresses_have_their_own_buckets_and_memory_is_bounded():
    clock = Clock()
    limiter = AddressRateLimiter(rate=1, burst=2, max_keys=100, clock=clock)
    assert limiter.take("a") == limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0  # a neighbour is not affected
    for index in range(1000):
        limiter.take(f"10.0.{index // 256}.{index % 256}")
    assert len(limiter) <= 100


def test_eviction_prefers_refilled_buckets():
    clock = Clock()
    limiter = AddressRateLimiter(rate=1, burst=1, max_keys=2, clock=clock)
    limiter.take("idle")
    clock.now += 5  # "idle" has refilled: it carries no information
    limiter.take("busy")
    limiter.take("new")
    assert limiter.take("busy") > 0  # still remembered, still limited


def test_retry_after_is_whole_seconds():
    assert (retry_after(0.01), retry_after(1.0), retry_after(2.2)) == ("1", "1", "3")


def test_slots_per_user_and_total():
    slots = ConnectionSlots(per_user=2, total=3)
    a1, a2, a3, b1, c1 = (object() for _ in range(5))
    assert slots.reserve("alice", a1) is None
    assert slots.reserve("alice", a2) is None
    refusal = slots.reserve("alice", a3)
    assert refusal is not None
    assert refusal.scope == "user"
    assert slots.reserve("bob", b1) is None
    refusal = slots.reserve("carol", c1)
    assert refusal is not None
    assert refusal.scope == "process"
    slots.release("alice", a1)
    slots.release("alice", a1)  # idempotent
    assert slots.count == 2
    assert slots.reserve("carol", c1) is None


def test_prune_releases_dead_holders():
    slots = ConnectionSlots(per_user=1, total=0)
    dead = object()
    slots.reserve("alice", dead)
    assert slots.reserve("alice", object()) is not None
    slots.prune(lambda holder: holder is dead, "alice")
    assert slots.held_by("alice") == 0
    assert slots.reserve("alice", object()) is None
