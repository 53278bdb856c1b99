"""The HTTP surface, in process through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.app import create_app
from auth.config import AuthConfig
from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.store import UserStore, create_engine

from .conftest import fast_hasher

ISSUER = "http://auth.test"
PASSWORD = "correct horse battery"
CLIENT = "codelab-ide"

CONFIG = AuthConfig(
    issuer=ISSUER,
    audience="codelab-api",
    access_token_ttl=300,
    client_id="codelab-ide",
    scopes=("codelab", "profile"),
)


class CountingPasswords(Passwords):
    """Real hashing, counting the verifications done for unknown users."""

    dummy_verifications = 0

    def verify_dummy(self, password: str) -> bool:
        self.dummy_verifications += 1
        return super().verify_dummy(password)


@dataclass
class Service:
    client: httpx.AsyncClient
    users: UserStore
    keys: KeyRing
    passwords: CountingPasswords


@pytest.fixture
async def service(sqlite_url: str, keys: KeyRing) -> AsyncIterator[Service]:
    passwords = CountingPasswords(fast_hasher())
    engine = create_engine(sqlite_url)
    users = UserStore(engine)
    await users.add_user("alice", passwords.hash(PASSWORD))
    app = create_app(CONFIG, keys=keys, engine=engine, passwords=passwords)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            yield Service(client, users, keys, passwords)
    finally:
        await engine.dispose()


def _form(**overrides: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORD,
        "client_id": "codelab-ide",
    }
    form.update(overrides)
    return {key: value for key, value in form.items() if value is not None}


async def _token(service: Service, **overrides: str | None) -> httpx.Response:
    return await service.client.post("/oauth/token", data=_form(**overrides))


def _assert_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"


async def test_password_grant_issues_a_verifiable_token(service: Service) -> None:
    response = await _token(service)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "codelab profile"

    jwks = (await service.client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    claims = jwt.decode(
        body["access_token"],
        jwt.PyJWK(jwk).key,
        algorithms=["RS256"],
        audience="codelab-api",
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    alice = await service.users.get_by_username("alice")
    assert alice is not None
    assert claims["sub"] == alice.id
    assert claims["preferred_username"] == "alice"
    assert claims["client_id"] == "codelab-ide"
    assert claims["scope"] == "codelab profile"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] == claims["iat"]
    assert len(claims["jti"]) >= 16


async def test_requested_scope_is_granted(service: Service) -> None:
    response = await _token(service, scope="profile")
    assert response.json()["scope"] == "profile"
    token = response.json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "profile"


async def test_unknown_scope_is_invalid_scope(service: Service) -> None:
    _assert_error(await _token(service, scope="admin"), 400, "invalid_scope")


async def test_wrong_password_is_invalid_grant(service: Service) -> None:
    _assert_error(await _token(service, password="wrong password"), 400, "invalid_grant")


async def test_unknown_user_gets_the_same_answer_after_a_full_verification(
    service: Service,
) -> None:
    unknown = await _token(service, username="mallory")
    wrong = await _token(service, password="wrong password")

    _assert_error(unknown, 400, "invalid_grant")
    assert unknown.json() == wrong.json()
    assert service.passwords.dummy_verifications == 1


async def test_disabled_user_is_invalid_grant(service: Service) -> None:
    await service.users.set_disabled("alice", True)
    _assert_error(await _token(service), 400, "invalid_grant")
    await service.users.set_disabled("alice", False)
    assert (await _token(service)).status_code == 200


async def test_unsupported_grant_type(service: Service) -> None:
    _assert_error(await _token(service, grant_type="implicit"), 400, "unsupported_grant_type")


@pytest.mark.parametrize("missing", ["grant_type", "username", "password"])
async def test_missing_parameter_is_invalid_request(service: Service, missing: str) -> None:
    _assert_error(await _token(service, **{missing: None}), 400, "invalid_request")


async def test_empty_password_is_invalid_request(service: Service) -> None:
    _assert_error(await _token(service, password=""), 400, "invalid_request")


async def test_repeated_parameter_is_invalid_request(service: Service) -> None:
    body = "grant_type=password&username=alice&username=bob&password=x&client_id=codelab-ide"
    response = await service.client.post(
        "/oauth/token",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _assert_error(response, 400, "invalid_request")


async def test_json_body_is_invalid_request(service: Service) -> None:
    response = await service.client.post("/oauth/token", json=_form())
    _assert_error(response, 400, "invalid_request")
    assert "x-www-form-urlencoded" in response.json()["error_description"]


async def test_oversized_body_is_invalid_request(service: Service) -> None:
    _assert_error(await _token(service, password="x" * 20_000), 400, "invalid_request")


@pytest.mark.parametrize("client_id", ["someone-else", None])
async def test_wrong_or_missing_client_is_invalid_client(
    service: Service, client_id: str | None
) -> None:
    response = await _token(service, client_id=client_id)
    _assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")


async def test_outdated_hash_is_upgraded_on_login(service: Service) -> None:
    old_hash = PasswordHasher(time_cost=1, memory_cost=512, parallelism=1).hash("old-params-pw")
    await service.users.add_user("bob", old_hash)

    response = await _token(service, username="bob", password="old-params-pw")

    assert response.status_code == 200
    bob = await service.users.get_by_username("bob")
    assert bob is not None
    assert bob.password_hash != old_hash
    assert not service.passwords.needs_rehash(bob.password_hash)
    assert (await _token(service, username="bob", password="old-params-pw")).status_code == 200


async def test_jwks_publishes_the_signing_key(service: Service) -> None:
    response = await service.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    (key,) = response.json()["keys"]
    assert key == service.keys.current.public_jwk()
    assert {key["kty"], key["use"], key["alg"], key["e"]} == {"RSA", "sig", "RS256", "AQAB"}
    # n is the signing key's modulus.
    private_key = service.keys.current.private_key
    assert isinstance(private_key, rsa.RSAPrivateKey)
    n = int.from_bytes(jwt.utils.base64url_decode(key["n"]), "big")
    assert n == private_key.public_key().public_numbers().n


async def test_discovery_document(service: Service) -> None:
    response = await service.client.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    assert doc["issuer"] == ISSUER
    assert doc["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert doc["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert doc["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    assert set(doc["grant_types_supported"]) == {
        "password",
        "refresh_token",
        "client_credentials",
    }
    assert doc["token_endpoint_auth_methods_supported"] == [
        "none",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert doc["revocation_endpoint_auth_methods_supported"] == [
        "none",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["scopes_supported"] == ["codelab", "profile"]


async def test_health(service: Service) -> None:
    response = await service.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_the_public_port_serves_no_metrics(service: Service) -> None:
    """The IDE (and a front door) reach this port: /metrics is an unknown path."""
    await _token(service)
    metrics = await service.client.get("/metrics")
    unknown = await service.client.get("/no-such-path")
    assert metrics.status_code == 404
    assert (metrics.text, metrics.headers["content-type"]) == (
        unknown.text,
        unknown.headers["content-type"],
    )
    assert "codelab_auth_http_requests" not in metrics.text


async def test_token_endpoint_only_accepts_post(service: Service) -> None:
    assert (await service.client.get("/oauth/token")).status_code == 405


async def test_unreadable_database_refuses_logins(
    tmp_path: Path, keys: KeyRing, passwords: Passwords
) -> None:
    # Fail closed: without the throttle's state there is no login, not an unthrottled one.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/unmigrated.db")
    try:
        app = create_app(CONFIG, keys=keys, engine=engine, passwords=passwords)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            response = await client.post("/oauth/token", data=_form())
            refresh = await client.post(
                "/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": "x",
                    "client_id": "codelab-ide",
                },
            )
    finally:
        await engine.dispose()
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert PASSWORD not in response.text
    # Elsewhere an unexpected database error is a JSON 500, never a traceback.
    assert refresh.status_code == 500
    assert refresh.json()["error"] == "server_error"
