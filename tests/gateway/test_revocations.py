"""The revocation list, the feed's page format, and polling a real feed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.revocations import Revocation, RevocationFeed, RevocationList, parse_feed_page
from tests.gateway.conftest import Feed


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_issued_before_not_before_are_revoked():
    revocations = RevocationList(clock=Clock())
    assert revocations.add(Revocation("alice", 9_000))
    assert revocations.is_revoked("alice", 8_999)
    assert not revocations.is_revoked("alice", 9_000)
    assert not revocations.is_revoked("bob", 1)
    assert revocations.is_revoked("alice", None)  # no iat: void


def test_only_a_later_not_before_counts_as_new():
    revocations = RevocationList(clock=Clock())
    assert revocations.add(Revocation("alice", 9_000))
    assert not revocations.add(Revocation("alice", 8_000))
    assert revocations.add(Revocation("alice", 9_500))
    assert revocations.is_revoked("alice", 9_400)


def test_entries_are_forgotten_after_retention_and_the_map_is_bounded():
    clock = Clock()
    revocations = RevocationList(max_entries=10, retention=100, clock=clock)
    assert not revocations.add(Revocation("ancient", clock.now - 200))
    revocations.add(Revocation("alice", clock.now))
    clock.now += 101
    assert not revocations.is_revoked("alice", 0)
    for index in range(50):
        revocations.add(Revocation(f"user-{index}", clock.now + index))
    assert len(revocations) == 10
    assert revocations.is_revoked("user-49", 0)  # the newest survive


def test_feed_page_parsing_skips_bad_entries():
    page = {
        "revocations": [
            {"id": 1, "sub": "alice", "not_before": 5, "reason": "logout"},
            {"id": 2, "sub": "", "not_before": 5},
            {"id": 3, "sub": "bob", "not_before": True},
            "junk",
        ],
        "next": 3,
    }
    revocations, cursor = parse_feed_page(page)
    assert revocations == [Revocation("alice", 5.0, "logout")]
    assert cursor == "3"
    for bad in ([], {"revocations": {}}, {"revocations": [], "next": [1]}):
        with pytest.raises(ValueError, match="is not"):
            parse_feed_page(bad)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as http_client:
        yield http_client


async def test_feed_applies_pages_and_moves_the_cursor(feed: Feed, client: httpx.AsyncClient):
    revocations = RevocationList()
    heard: list[Revocation] = []
    poller = RevocationFeed(
        client, feed.url, internal_api_key="k", revocations=revocations, listener=heard.append
    )
    feed.revoke("alice", 2_000_000_000)
    assert await poller.poll_once() == 1
    assert await poller.poll_once() == 0
    feed.revoke("bob", 2_000_000_000)
    assert await poller.poll_once() == 1
    assert [r.subject for r in heard] == ["alice", "bob"]
    assert feed.requests == [("0", "k"), ("1", "k"), ("1", "k")]
    assert revocations.is_revoked("bob", 1_999_999_999)


async def test_failed_polls_keep_polling(feed: Feed, client: httpx.AsyncClient):
    feed.status = 500
    poller = RevocationFeed(
        client,
        feed.url,
        internal_api_key="k",
        revocations=RevocationList(),
        listener=lambda revocation: None,
        interval=0.01,
    )
    poller.start()
    try:
        while poller.polls < 3:
            poller.polled.clear()
            await poller.polled.wait()
    finally:
        await poller.stop()
        await poller.stop()  # idempotent
    assert len(feed.requests) >= 3
    assert {after for after, _ in feed.requests} == {"0"}
