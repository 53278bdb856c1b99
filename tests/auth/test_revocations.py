"""GET /internal/revocations: the contract the gateway polls."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx
import pytest

from auth.keys import KeyRing
from auth.revocations import record_revocation

from .conftest import FakeClock
from .harness import Auth, add_alice, running

KEY = {"X-Internal-Auth": "internal-test-key"}


@pytest.fixture
async def auth(database_url: str, keys: KeyRing, clock: FakeClock) -> AsyncIterator[Auth]:
    async with running(database_url, keys, clock) as auth:
        yield auth


async def _feed(auth: Auth, after: str | None = None, **headers: str) -> httpx.Response:
    params = {} if after is None else {"after": after}
    return await auth.client.get("/internal/revocations", params=params, headers=headers or KEY)


async def test_feed_needs_the_internal_key(auth: Auth) -> None:
    assert (await _feed(auth, **{"X-Internal-Auth": "wrong"})).status_code == 401
    response = await auth.client.get("/internal/revocations")
    assert response.status_code == 401
    ok = await _feed(auth)
    assert ok.status_code == 200
    assert ok.json() == {"revocations": [], "next": 0}
    assert ok.headers["cache-control"] == "no-store"


async def test_feed_is_absent_without_a_key(
    sqlite_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    async with running(sqlite_url, keys, clock, internal_api_key=None) as auth:
        assert (await _feed(auth)).status_code == 404


@pytest.mark.parametrize("after", ["-1", "x", "1.5", ""])
async def test_bad_cursor_is_400(auth: Auth, after: str) -> None:
    response = await _feed(auth, after)
    assert response.status_code == 400 if after else 200


async def test_logout_appears_in_the_feed_and_pages_by_cursor(auth: Auth) -> None:
    user_id = await add_alice(auth)
    refresh = (await auth.password()).json()["refresh_token"]
    await auth.post("/oauth/revoke", {"token": refresh, "client_id": "codelab-ide"})
    async with auth.engine.begin() as conn:
        for reason in ("admin", "disabled"):
            await record_revocation(conn, "someone-else", reason, now=auth.clock.now)

    first = (await _feed(auth)).json()
    (logout, admin, disabled) = first["revocations"]
    assert logout == {
        "id": logout["id"],
        "sub": user_id,
        "not_before": math.ceil(auth.clock.now),
        "reason": "logout",
    }
    assert (admin["reason"], disabled["reason"]) == ("admin", "disabled")
    assert logout["id"] < admin["id"] < disabled["id"]
    assert first["next"] == disabled["id"]

    page = (await _feed(auth, str(logout["id"]))).json()
    assert [row["id"] for row in page["revocations"]] == [admin["id"], disabled["id"]]
    empty = (await _feed(auth, str(first["next"]))).json()
    assert empty == {"revocations": [], "next": first["next"]}


async def test_feed_keeps_only_rows_that_can_still_match_a_token(auth: Auth) -> None:
    async with auth.engine.begin() as conn:
        await record_revocation(conn, "old", "admin", now=auth.clock.now)
    auth.clock.advance(auth.config.key_retire_after + 1)
    async with auth.engine.begin() as conn:
        await record_revocation(conn, "new", "admin", now=auth.clock.now)
    body = (await _feed(auth)).json()
    assert [row["sub"] for row in body["revocations"]] == ["new"]
