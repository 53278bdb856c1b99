"""Refresh tokens over HTTP on SQLite and PostgreSQL: rotation, reuse, races, revocation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import jwt
import pytest
import sqlalchemy as sa

from auth.keys import KeyRing
from auth.refresh import hash_token
from auth.schema import audit_events, refresh_tokens, revocations

from .conftest import FakeClock
from .harness import IDE, PASSWORD, Auth, add_alice, running


@pytest.fixture
async def auth(database_url: str, keys: KeyRing, clock: FakeClock) -> AsyncIterator[Auth]:
    async with running(database_url, keys, clock) as auth:
        await add_alice(auth)
        yield auth


async def _login(auth: Auth) -> str:
    response = await auth.password()
    assert response.status_code == 200, response.text
    token: str = response.json()["refresh_token"]
    return token


async def _rows(auth: Auth, query: sa.Select[tuple[object, ...]]) -> list[sa.RowMapping]:
    async with auth.engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def test_refresh_rotates_the_token(auth: Auth) -> None:
    first = await _login(auth)
    response = await auth.refresh(first)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    second = body["refresh_token"]
    assert second != first
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["preferred_username"] == "alice"
    assert claims["scope"] == "codelab profile"
    # The successor works once more; the spent token is stored hashed and used.
    assert (await auth.refresh(second)).status_code == 200
    rows = await _rows(auth, sa.select(refresh_tokens))
    assert len(rows) == 3
    assert len({row["family_id"] for row in rows}) == 1
    assert {row["token_hash"] for row in rows} >= {hash_token(first), hash_token(second)}
    assert all(first not in str(dict(row).values()) for row in rows)


async def test_refresh_may_narrow_the_scope(auth: Auth) -> None:
    response = await auth.refresh(await _login(auth), scope="profile")
    assert response.json()["scope"] == "profile"


async def test_reuse_revokes_the_family_and_feeds_the_edge(auth: Auth) -> None:
    first = await _login(auth)
    second = (await auth.refresh(first)).json()["refresh_token"]

    reused = await auth.refresh(first)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    # The attacker's or the victim's successor is dead too.
    assert (await auth.refresh(second)).json()["error"] == "invalid_grant"
    assert all(row["revoked"] for row in await _rows(auth, sa.select(refresh_tokens)))

    alice = await auth.users.get_by_username("alice")
    assert alice is not None
    (revocation,) = await _rows(auth, sa.select(revocations))
    assert (revocation["sub"], revocation["reason"]) == (alice.id, "refresh_reuse")
    assert revocation["not_before"] == math.ceil(auth.clock.now)
    events = [row["event"] for row in await _rows(auth, sa.select(audit_events))]
    assert "refresh_reuse_detected" in events
    # A fresh login starts a new family and works.
    assert (await auth.refresh(await _login(auth))).status_code == 200


async def test_concurrent_refreshes_exactly_one_wins(auth: Auth) -> None:
    token = await _login(auth)
    responses = await asyncio.gather(*(auth.refresh(token) for _ in range(6)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 400, 400, 400, 400, 400], [r.text for r in responses]
    assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
    # The losers are reuse: the whole family, winner's successor included, is revoked.
    winner = next(r for r in responses if r.status_code == 200).json()["refresh_token"]
    assert (await auth.refresh(winner)).status_code == 400


async def test_expired_refresh_token_is_refused(auth: Auth) -> None:
    token = await _login(auth)
    auth.clock.advance(auth.config.refresh_token_ttl + 1)
    response = await auth.refresh(token)
    assert response.json()["error"] == "invalid_grant"
    assert await _rows(auth, sa.select(revocations)) == []


async def test_refresh_token_is_bound_to_its_client(auth: Auth) -> None:
    await auth.clients.add("other-ide", confidential=False, scopes=("codelab",))
    token = await _login(auth)
    assert (await auth.refresh(token, client_id="other-ide")).json()["error"] == "invalid_grant"
    # Another client's attempt does not burn it.
    assert (await auth.refresh(token)).status_code == 200


async def test_unknown_refresh_token_and_disabled_user(auth: Auth) -> None:
    assert (await auth.refresh("not-a-token")).json()["error"] == "invalid_grant"
    token = await _login(auth)
    await auth.users.set_disabled("alice", True)
    assert (await auth.refresh(token)).json()["error"] == "invalid_grant"


async def test_refresh_token_is_not_a_jwt_the_edge_could_verify(auth: Auth) -> None:
    token = await _login(auth)
    assert token.count(".") == 0
    assert len(token) >= 43
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)
    for jwk in auth.keys.jwks()["keys"]:
        with pytest.raises(jwt.InvalidTokenError):
            jwt.decode(
                token, jwt.PyJWK(jwk).key, algorithms=["RS256", "ES256"], audience="codelab-api"
            )


async def test_revoke_logs_out_and_feeds_the_edge(auth: Auth) -> None:
    first = await _login(auth)
    second = (await auth.refresh(first)).json()["refresh_token"]

    response = await auth.post("/oauth/revoke", {"token": second, "client_id": IDE})
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    assert (await auth.refresh(second)).json()["error"] == "invalid_grant"
    (revocation,) = await _rows(auth, sa.select(revocations))
    assert revocation["reason"] == "logout"
    # Revoking again, or something unknown, is still 200 (RFC 7009 §2.2).
    for token in (second, "never-issued"):
        again = await auth.post("/oauth/revoke", {"token": token, "client_id": IDE})
        assert again.status_code == 200


async def test_revoke_rules(auth: Auth) -> None:
    token = await _login(auth)
    missing_client = await auth.post("/oauth/revoke", {"token": token})
    assert missing_client.status_code == 401
    assert missing_client.json()["error"] == "invalid_client"
    missing_token = await auth.post("/oauth/revoke", {"client_id": IDE})
    assert missing_token.json()["error"] == "invalid_request"
    hinted = await auth.post(
        "/oauth/revoke",
        {"token": "eyJ.a.b", "token_type_hint": "access_token", "client_id": IDE},
    )
    assert hinted.status_code == 400
    assert hinted.json()["error"] == "unsupported_token_type"
    # Another client cannot revoke it: 200, and the token still works.
    await auth.clients.add("other-ide", confidential=False, scopes=("codelab",))
    other = await auth.post("/oauth/revoke", {"token": token, "client_id": "other-ide"})
    assert other.status_code == 200
    assert (await auth.refresh(token)).status_code == 200


async def test_audit_trail_of_a_session_holds_no_secrets(auth: Auth) -> None:
    first_response = (await auth.password()).json()
    await auth.password(password="wrong password!", address="192.0.2.1")
    second = (await auth.refresh(first_response["refresh_token"])).json()["refresh_token"]
    await auth.post("/oauth/revoke", {"token": second, "client_id": IDE})

    rows = await _rows(auth, sa.select(audit_events).order_by(audit_events.c.id))
    assert [(row["event"], row["address"]) for row in rows] == [
        ("login_succeeded", "10.0.0.1"),
        ("login_failed", "192.0.2.1"),
        ("refresh_succeeded", "10.0.0.1"),
        ("token_revoked", "10.0.0.1"),
    ]
    alice = await auth.users.get_by_username("alice")
    assert alice is not None
    assert rows[0]["user_id"] == alice.id
    assert rows[0]["username"] == "alice"
    assert rows[0]["client_id"] == IDE
    assert rows[0]["at"] == auth.clock.now
    secrets = (PASSWORD, "wrong password!", first_response["refresh_token"], second)
    for row in rows:
        text = repr(dict(row))
        assert not any(secret in text for secret in secrets)
        assert first_response["access_token"].split(".")[2] not in text


async def test_bad_scope_on_refresh_does_not_burn_the_token(auth: Auth) -> None:
    token = await _login(auth)
    assert (await auth.refresh(token, scope="admin")).json()["error"] == "invalid_scope"
    assert (await auth.refresh(token)).status_code == 200
