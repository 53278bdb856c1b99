"""Brute-force protection: per account (from one address), per address, in the database."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import sqlalchemy as sa

from auth.keys import KeyRing
from auth.schema import audit_events, login_failures
from auth.throttle import Limit
from mesh.addresses import client_address, parse_networks

from .conftest import FakeClock
from .harness import PASSWORD, Auth, add_alice, running

WRONG = "wrong password!"


def _retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "invalid_grant"
    return int(response.headers["retry-after"])


async def _events(auth: Auth) -> list[tuple[str, str | None]]:
    async with auth.engine.connect() as conn:
        result = await conn.execute(
            sa.select(audit_events.c.event, audit_events.c.address).order_by(audit_events.c.id)
        )
        return [(row.event, row.address) for row in result]


def test_limit_shape() -> None:
    limit = Limit(free=2, lockout_after=6, lockout=900, max_delay=3)
    assert [limit.wait_after(n) for n in range(8)] == [0, 0, 0, 1, 2, 3, 900, 900]


async def test_account_lockout_from_one_address_only(
    database_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    # lockout_threshold=4: two free failures, then a 1 s delay, then locked for 600 s.
    async with running(database_url, keys, clock) as auth:
        await add_alice(auth)
        for _ in range(3):
            assert (await auth.password(password=WRONG)).json()["error"] == "invalid_grant"
        assert _retry_after(await auth.password(password=WRONG)) == 1
        clock.advance(1)
        assert (await auth.password(password=WRONG)).status_code == 400
        # Locked here, even with the right password.
        assert _retry_after(await auth.password()) == 600
        # The owner elsewhere is not locked out: no free denial of service.
        assert (await auth.password(address="192.0.2.7")).status_code == 200
        events = [event for event, _ in await _events(auth)]
        assert events.count("login_failed") == 4
        assert "lockout" in events
        assert "login_throttled" in events

    # A restart (new app, same database) keeps the lockout.
    async with running(database_url, keys, clock) as auth:
        assert _retry_after(await auth.password()) == 600
        clock.advance(601)
        assert (await auth.password()).status_code == 200


async def test_delay_grows(database_url: str, keys: KeyRing, clock: FakeClock) -> None:
    async with running(database_url, keys, clock, lockout_threshold=10) as auth:
        await add_alice(auth)
        for _ in range(6):
            await auth.password(password=WRONG)
        delays = []
        for _ in range(3):
            delays.append(_retry_after(await auth.password(password=WRONG)))
            clock.advance(delays[-1])
            assert (await auth.password(password=WRONG)).status_code == 400
        assert delays == [1, 2, 4]


async def test_address_lockout_across_accounts(
    sqlite_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    # Address bucket: 6 free, locked at 12. Each username fails once, so only it counts.
    async with running(sqlite_url, keys, clock) as auth:
        await add_alice(auth)
        for i in range(12):
            clock.advance(30)  # more than any delay before the lockout
            response = await auth.password(username=f"guess{i}", password=WRONG)
            assert response.status_code == 400, (i, response.text)
        assert _retry_after(await auth.password()) == 600
        assert (await auth.password(address="192.0.2.7")).status_code == 200
        clock.advance(601)
        assert (await auth.password()).status_code == 200


async def test_parallel_guesses_are_all_counted(
    database_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    async with running(database_url, keys, clock) as auth:
        await add_alice(auth)
        responses = await asyncio.gather(*(auth.password(password=WRONG) for _ in range(8)))
        admitted = [r for r in responses if r.status_code == 400]
        async with auth.engine.connect() as conn:
            (failures,) = (
                await conn.execute(
                    sa.select(login_failures.c.failures).where(
                        login_failures.c.bucket.like("account:%")
                    )
                )
            ).scalars()
        assert failures == len(admitted)
        if database_url.startswith("sqlite"):
            # Writers are serialised: exactly the free attempts plus one get through.
            assert len(admitted) == 3


async def test_success_clears_the_account_bucket(
    sqlite_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    async with running(sqlite_url, keys, clock) as auth:
        await add_alice(auth)
        for _ in range(2):
            await auth.password(password=WRONG)
        assert (await auth.password()).status_code == 200
        for _ in range(2):
            assert (await auth.password(password=WRONG)).status_code == 400
        assert (await auth.password()).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    sqlite_url: str, keys: KeyRing, clock: FakeClock
) -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    async with running(sqlite_url, keys, clock, trusted_proxies=trusted) as auth:
        await add_alice(auth)
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        form["client_id"] = "codelab-ide"
        spoofed = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1, 10.0.0.2"}
        await auth.post("/oauth/token", form, address="10.0.0.1", headers=spoofed)
        await auth.post("/oauth/token", form, address="192.0.2.50", headers=spoofed)
        assert [address for _, address in await _events(auth)] == [
            "198.51.100.1",
            "192.0.2.50",
        ]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("192.0.2.1", ["1.1.1.1"], "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.1", [], "10.0.0.1"),  # trusted peer, no header
        ("10.0.0.1", ["1.1.1.1, 2.2.2.2"], "2.2.2.2"),  # rightmost untrusted
        ("10.0.0.1", ["1.1.1.1", "2.2.2.2, 10.0.0.3"], "2.2.2.2"),  # several headers
        ("10.0.0.1", ["10.0.0.5, 10.0.0.3"], "10.0.0.5"),  # all trusted: leftmost
        ("10.0.0.1", ["1.1.1.1, garbage"], "10.0.0.1"),  # garbage stops the walk
        ("::1", ["1.1.1.1"], "::1"),
        (None, [], "unknown"),
    ],
)
def test_client_address(peer: str | None, headers: list[str], expected: str) -> None:
    assert client_address(peer, headers, parse_networks(["10.0.0.0/8"])) == expected


def test_bad_trusted_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        parse_networks(["10.0.0.0/8", "not-an-ip"])
