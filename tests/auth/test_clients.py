"""Confidential clients and client_credentials; the password grant's client rules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import jwt
import pytest
import sqlalchemy as sa

from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.schema import audit_events, clients

from .conftest import FakeClock, fast_hasher
from .harness import Auth, add_alice, basic, running


class CountingPasswords(Passwords):
    """Real hashing, counting every verification (real or dummy)."""

    def __init__(self) -> None:
        super().__init__(fast_hasher())
        self.verifications = 0

    def verify(self, password_hash: str, password: str) -> bool:
        self.verifications += 1
        return super().verify(password_hash, password)


@pytest.fixture
async def counted() -> CountingPasswords:
    return CountingPasswords()


@pytest.fixture
async def auth(
    sqlite_url: str, keys: KeyRing, clock: FakeClock, counted: Passwords
) -> AsyncIterator[Auth]:
    async with running(sqlite_url, keys, clock, passwords=counted) as auth:
        await add_alice(auth)
        yield auth


async def _register(auth: Auth) -> str:
    secret = await auth.clients.add("ci-bot", confidential=True, scopes=("codelab",))
    assert secret is not None
    return secret


async def test_client_credentials_with_basic_and_post(auth: Auth) -> None:
    secret = await _register(auth)
    by_basic = await auth.post(
        "/oauth/token", {"grant_type": "client_credentials"}, headers=basic("ci-bot", secret)
    )
    by_post = await auth.post(
        "/oauth/token",
        {"grant_type": "client_credentials", "client_id": "ci-bot", "client_secret": secret},
    )
    for response in (by_basic, by_post):
        assert response.status_code == 200, response.text
        body = response.json()
        assert "refresh_token" not in body
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == "ci-bot"
        assert claims["client_id"] == "ci-bot"
        assert claims["scope"] == "codelab"
        assert "preferred_username" not in claims
        assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    async with auth.engine.connect() as conn:
        events = (await conn.execute(sa.select(audit_events.c.event))).scalars().all()
        (stored,) = (await conn.execute(sa.select(clients.c.secret_hash))).scalars().all()
    assert events.count("client_credentials_granted") == 2
    assert stored.startswith("$argon2id$")
    assert secret not in stored


async def test_wrong_unknown_and_missing_secrets_are_invalid_client_at_equal_cost(
    auth: Auth, counted: CountingPasswords
) -> None:
    secret = await _register(auth)
    attempts = [
        basic("ci-bot", "wrong-secret"),
        basic("no-such-client", secret),
    ]
    for headers in attempts:
        before = counted.verifications
        response = await auth.post(
            "/oauth/token", {"grant_type": "client_credentials"}, headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic")
        assert counted.verifications == before + 1
    missing = await auth.post(
        "/oauth/token", {"grant_type": "client_credentials", "client_id": "ci-bot"}
    )
    assert missing.json()["error"] == "invalid_client"
    await auth.clients.set_disabled("ci-bot", True)
    disabled = await auth.post(
        "/oauth/token", {"grant_type": "client_credentials"}, headers=basic("ci-bot", secret)
    )
    assert disabled.json()["error"] == "invalid_client"


async def test_confidential_client_may_not_use_the_password_grant(auth: Auth) -> None:
    secret = await _register(auth)
    response = await auth.password(client_id="ci-bot", client_secret=secret)
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"


async def test_public_client_may_not_use_client_credentials(auth: Auth) -> None:
    response = await auth.post(
        "/oauth/token", {"grant_type": "client_credentials", "client_id": "codelab-ide"}
    )
    assert response.json()["error"] == "unauthorized_client"


async def test_registered_public_client_uses_password_and_refresh(auth: Auth) -> None:
    await auth.clients.add("codelab-cli", confidential=False, scopes=("codelab",))
    response = await auth.password(client_id="codelab-cli")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "codelab"
    assert (
        await auth.refresh(response.json()["refresh_token"], client_id="codelab-cli")
    ).is_success


async def test_public_client_presenting_a_secret_is_refused(auth: Auth) -> None:
    response = await auth.password(client_secret="anything")
    assert response.json()["error"] == "invalid_client"


async def test_two_authentication_methods_are_refused(auth: Auth) -> None:
    secret = await _register(auth)
    response = await auth.post(
        "/oauth/token",
        {"grant_type": "client_credentials", "client_secret": secret},
        headers=basic("ci-bot", secret),
    )
    assert response.json()["error"] == "invalid_request"
