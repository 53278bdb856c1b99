"""Keys, a real JWKS endpoint on loopback and a token minter for gateway tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.jwks import JwksCache, TokenVerifier

ISSUER = "http://issuer.test"
AUDIENCE = "codelab-api"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey(
        "rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class JwksEndpoint:
    """A JWKS document served over real HTTP; tests mutate ``keys``."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    hits: int = 0
    url: str = ""


@pytest.fixture
def jwks_endpoint(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksEndpoint]:
    endpoint = JwksEndpoint(keys=[rsa_key.public_jwk(), ec_key.public_jwk()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            endpoint.hits += 1
            body = json.dumps({"keys": endpoint.keys}).encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def verifier(http_client: httpx.AsyncClient, jwks_endpoint: JwksEndpoint) -> TokenVerifier:
    return TokenVerifier(
        JwksCache(http_client, jwks_endpoint.url), issuer=ISSUER, audience=AUDIENCE, leeway=5
    )


def mint(
    key: SigningKey,
    *,
    headers: dict[str, Any] | None = None,
    algorithm: str | None = None,
    **claims: Any,
) -> str:
    """A signed token; ``claims`` override the defaults, ``None`` removes one."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "scope": "chat tools",
        "client_id": "ide",
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    header = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
    return jwt.encode(payload, key.private, algorithm=algorithm or key.alg, headers=header)
