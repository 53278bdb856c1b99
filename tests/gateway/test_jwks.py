"""TokenVerifier and JwksCache against a real JWKS endpoint on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.errors import InvalidToken, KeysUnavailable
from gateway.jwks import JwksCache, TokenVerifier
from tests.conftest import free_port
from tests.gateway.conftest import AUDIENCE, ISSUER, JwksEndpoint, SigningKey, mint


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert not token or token not in str(caught.value)
    return caught.value.reason


async def test_valid_rsa_token_gives_principal(verifier: TokenVerifier, rsa_key: SigningKey):
    exp = int(time.time()) + 120
    principal = await verifier.verify(mint(rsa_key, sub="alice", exp=exp))
    assert principal.subject == "alice"
    assert principal.scopes == frozenset({"chat", "tools"})
    assert principal.client_id == "ide"
    assert int(principal.expires_at.timestamp()) == exp


async def test_valid_ec_token(verifier: TokenVerifier, ec_key: SigningKey):
    principal = await verifier.verify(mint(ec_key, sub="bob", scope=None, scp=["a", "b"]))
    assert principal.subject == "bob"
    assert principal.scopes == frozenset({"a", "b"})


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 60}, "token expired"),
        ({"nbf": int(time.time()) + 600}, "token not yet valid"),
        ({"iat": int(time.time()) + 600}, "token not yet valid"),
        ({"aud": "someone-else"}, "wrong audience"),
        ({"iss": "http://evil.test"}, "wrong issuer"),
        ({"sub": None}, "missing claim sub"),
        ({"exp": None}, "missing claim exp"),
    ],
)
async def test_bad_claims_are_refused(
    verifier: TokenVerifier, rsa_key: SigningKey, claims: dict[str, object], reason: str
):
    assert await refused(verifier, mint(rsa_key, **claims)) == reason


async def test_leeway_accepts_slightly_expired(verifier: TokenVerifier, rsa_key: SigningKey):
    principal = await verifier.verify(mint(rsa_key, exp=int(time.time()) - 2))
    assert principal.subject == "user-1"


async def test_alg_none_is_refused(verifier: TokenVerifier):
    token = jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none")
    assert await refused(verifier, token) == "algorithm not allowed"


async def test_hs256_with_public_key_as_secret_is_refused(
    verifier: TokenVerifier, rsa_key: SigningKey
):
    # The classic algorithm-confusion attack: HMAC keyed with the public PEM.
    secret = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": rsa_key.kid, "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    payload = _b64(json.dumps(claims).encode())
    signature = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert await refused(verifier, f"{header}.{payload}.{signature}") == "algorithm not allowed"


async def test_alg_must_match_key_type(verifier: TokenVerifier, rsa_key: SigningKey):
    # An ES256 token naming the RSA key's kid.
    token = mint(rsa_key)
    header = {"alg": "ES256", "kid": rsa_key.kid, "typ": "at+jwt"}
    forged = f"{_b64(json.dumps(header).encode())}." + ".".join(token.split(".")[1:])
    assert await refused(verifier, forged) == "key does not match algorithm"


async def test_altered_payload_is_refused(verifier: TokenVerifier, rsa_key: SigningKey):
    header, _, signature = mint(rsa_key, sub="alice").split(".")
    now = int(time.time())
    claims = {"sub": "admin", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    payload = _b64(json.dumps(claims).encode())
    assert await refused(verifier, f"{header}.{payload}.{signature}") == "bad signature"


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 20000])
async def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str):
    assert await refused(verifier, token) == "malformed token"


async def test_missing_kid_is_refused(verifier: TokenVerifier, rsa_key: SigningKey):
    token = jwt.encode({"sub": "x"}, rsa_key.private, algorithm="RS256", headers={"typ": "at+jwt"})
    assert await refused(verifier, token) == "missing key id"


@pytest.mark.parametrize("typ", ["refresh+jwt", "id+jwt", "JWE"])
async def test_other_token_types_are_refused(
    verifier: TokenVerifier, rsa_key: SigningKey, typ: str
):
    assert await refused(verifier, mint(rsa_key, headers={"typ": typ})) == "not an access token"


def _typed(key: SigningKey, typ: str | None) -> str:
    """A valid token whose ``typ`` header is ``typ`` (None: no ``typ`` at all)."""
    token = jwt.encode(
        {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
        key.private,
        algorithm="RS256",
        headers={"kid": key.kid, "typ": typ},
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header.get("typ") == typ  # PyJWT drops a None typ instead of adding JWT
    return token


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
async def test_access_token_types_are_accepted(
    verifier: TokenVerifier, rsa_key: SigningKey, typ: str
):
    assert (await verifier.verify(_typed(rsa_key, typ))).subject == "x"


@pytest.mark.parametrize("typ", ["JWT", "jwt", None])
async def test_untyped_tokens_are_refused_by_default(
    verifier: TokenVerifier, rsa_key: SigningKey, typ: str | None
):
    assert await refused(verifier, _typed(rsa_key, typ)) == "not an access token"


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "application/at+jwt", None])
async def test_without_require_at_jwt_untyped_tokens_pass(
    http_client: httpx.AsyncClient,
    jwks_endpoint: JwksEndpoint,
    rsa_key: SigningKey,
    typ: str | None,
):
    lenient = TokenVerifier(
        JwksCache(http_client, jwks_endpoint.url),
        issuer=ISSUER,
        audience=AUDIENCE,
        require_at_jwt=False,
    )
    assert (await lenient.verify(_typed(rsa_key, typ))).subject == "x"
    assert await refused(lenient, _typed(rsa_key, "id+jwt")) == "not an access token"


def test_only_rs256_and_es256_can_be_configured(http_client: httpx.AsyncClient):
    cache = JwksCache(http_client, "http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256", "HS256"))


async def test_unknown_kid_refetches_at_most_once_per_interval(
    http_client: httpx.AsyncClient, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    clock = FakeClock()
    cache = JwksCache(http_client, jwks_endpoint.url, min_refetch_interval=10, clock=clock)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    await verifier.verify(mint(rsa_key))
    assert jwks_endpoint.hits == 1

    rotated = SigningKey("rsa-2", "RS256", rsa.generate_private_key(65537, 2048))
    clock.now += 11
    for _ in range(5):  # a flood of bogus kids costs one fetch
        assert await refused(verifier, mint(rotated, headers={"kid": "bogus"})) == (
            "unknown signing key"
        )
    assert jwks_endpoint.hits == 2

    # The issuer rotates in a new key; found once the interval has passed.
    jwks_endpoint.keys.append(rotated.public_jwk())
    assert await refused(verifier, mint(rotated)) == "unknown signing key"
    assert jwks_endpoint.hits == 2
    clock.now += 11
    assert (await verifier.verify(mint(rotated, sub="carol"))).subject == "carol"
    assert jwks_endpoint.hits == 3


async def test_keys_are_cached_for_the_ttl(
    http_client: httpx.AsyncClient, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    clock = FakeClock()
    cache = JwksCache(http_client, jwks_endpoint.url, ttl=300, clock=clock)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    for _ in range(3):
        await verifier.verify(mint(rsa_key))
    assert jwks_endpoint.hits == 1
    clock.now += 301
    await verifier.verify(mint(rsa_key))
    assert jwks_endpoint.hits == 2


async def test_concurrent_misses_share_one_fetch(
    verifier: TokenVerifier, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    results = await asyncio.gather(*(verifier.verify(mint(rsa_key)) for _ in range(10)))
    assert len(results) == 10
    assert jwks_endpoint.hits == 1


async def test_unreachable_issuer_means_keys_unavailable(
    http_client: httpx.AsyncClient, rsa_key: SigningKey
):
    url = f"http://127.0.0.1:{free_port()}/jwks"
    verifier = TokenVerifier(JwksCache(http_client, url), issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(mint(rsa_key))


async def test_issuer_error_means_keys_unavailable(
    verifier: TokenVerifier, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    jwks_endpoint.status = 500
    with pytest.raises(KeysUnavailable):
        await verifier.verify(mint(rsa_key))


async def test_cached_keys_survive_a_failed_refresh(
    http_client: httpx.AsyncClient, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    clock = FakeClock()
    cache = JwksCache(http_client, jwks_endpoint.url, ttl=300, clock=clock)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    await verifier.verify(mint(rsa_key))
    jwks_endpoint.status = 503
    clock.now += 301
    assert (await verifier.verify(mint(rsa_key, sub="dora"))).subject == "dora"
    assert jwks_endpoint.hits == 2


async def test_keys_for_other_algorithms_are_ignored(
    verifier: TokenVerifier, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
):
    jwks_endpoint.keys[0]["alg"] = "RS512"
    assert await refused(verifier, mint(rsa_key)) == "unknown signing key"
