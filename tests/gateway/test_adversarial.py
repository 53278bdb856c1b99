"""The edge under attack: each attack is refused or cut off in a documented
way, while a legitimate client beside it keeps working."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mesh.addresses import parse_networks
from tests.gateway.conftest import (
    AUDIENCE,
    ISSUER,
    TIMEOUT,
    Edge,
    Feed,
    SigningKey,
    close_code,
    mint,
    opened,
    receive,
)
from tests.support import eventually


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@asynccontextmanager
async def bystander(edge: Edge, sub: str = "bystander") -> AsyncIterator[ClientConnection]:
    """A legitimate client, open before the attack and checked after it."""
    async with edge.connect(f"/ws/{sub}-session", token=mint(edge.key, sub=sub)) as ws:
        await opened(ws)
        yield ws
        await still_works(ws)


async def still_works(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "user_message", "content": "still here"}))
    frames = [await receive(ws) for _ in range(4)]
    assert [frame["content"] for frame in frames] == ["echo: ", "still here", "!", ""]


async def read_until_closed(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await receive(ws)


async def handshake_status(edge: Edge, path: str = "/ws/s", **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(edge.url(path), **kwargs):
            pass
    return caught.value.response


def _forged_tokens(key: SigningKey) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, "iat": now}
    header, _, signature = mint(key, sub="alice").split(".")
    altered = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    hs_payload = _b64(json.dumps(claims).encode())
    hs_signature = _b64(
        hmac.new(public_pem, f"{hs_header}.{hs_payload}".encode(), hashlib.sha256).digest()
    )
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "other key, same kid": jwt.encode(
            {**claims, "sub": "alice"},
            stranger,
            algorithm="RS256",
            headers={"kid": key.kid, "typ": "at+jwt"},
        ),
        "altered payload": altered,
        "expired": mint(key, exp=now - 3600),
        "not yet valid": mint(key, nbf=now + 3600),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "HS256 keyed with the public key": f"{hs_header}.{hs_payload}.{hs_signature}",
        "wrong issuer": mint(key, iss="http://evil.test"),
        "wrong audience": mint(key, aud="another-api"),
        "refresh token typ": mint(key, headers={"typ": "refresh+jwt"}),
        "plain JWT typ": mint(key, headers={"typ": "JWT"}),
        "no typ": mint(key, headers={"typ": None}),
        "unknown kid": mint(key, headers={"kid": "nobody-knows"}),
        "truncated": mint(key)[:-10],
        "garbage": "a.b.c",
    }


async def test_forged_tokens_are_refused_at_the_handshake(edge: Edge):
    async with bystander(edge):
        for name, token in _forged_tokens(edge.key).items():
            for kwargs in (
                {"additional_headers": {"Authorization": f"Bearer {token}"}},
                {"subprotocols": ["bearer", token]},
            ):
                response = await handshake_status(edge, **kwargs)
                assert response.status_code == 401, name
                assert token.encode() not in response.body
    # Nothing forged ever reached the runtime.
    assert {m["x-user-id"] for m in edge.fake.metadata} == {"bystander"}


async def test_oversized_frame_closes_with_1009(edge_factory: Any):
    async with (
        edge_factory(max_frame_bytes=4096) as edge,
        bystander(edge),
        edge.connect() as ws,
    ):
        await opened(ws)
        await ws.send(json.dumps({"type": "user_message", "content": "x" * 8192}))
        assert (await close_code(ws))[0] == 1009


async def test_flooding_frames_closes_with_1008(edge_factory: Any):
    async with (
        edge_factory(frame_rate=5, frame_burst=10) as edge,
        bystander(edge),
        edge.connect() as ws,
    ):
        await opened(ws)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(1000):
                await ws.send(json.dumps({"type": "cancel"}))
                await asyncio.sleep(0)
        await read_until_closed(ws)
        assert await close_code(ws) == (1008, "frame rate exceeded")


async def test_slow_consumer_is_closed_with_1013_and_memory_stays_bounded(edge_factory: Any):
    async with (
        edge_factory(slow_consumer_timeout=0.3, write_limit=16384) as edge,
        bystander(edge),
        edge.connect() as ws,
    ):
        await opened(ws)
        ws.transport.pause_reading()  # the client stops reading
        await ws.send(json.dumps({"type": "user_message", "content": "flood"}))
        async with asyncio.timeout(TIMEOUT):
            await edge.fake.ended.wait()  # the runtime call is cancelled
        # Flow control held the runtime back: what it produced is what
        # fits in the socket buffers, gRPC's window and write_limit.
        assert edge.fake.flooded < 32 * 1024 * 1024
        ws.transport.resume_reading()
        await read_until_closed(ws)
        assert await close_code(ws) == (1013, "client too slow to read")


async def test_origin_allow_list(edge_factory: Any):
    async with edge_factory(allowed_origins=("https://ide.example",)) as edge:
        token = mint(edge.key)
        headers = {"Authorization": f"Bearer {token}"}
        for origin in (None, "https://evil.example", "null"):
            response = await handshake_status(edge, additional_headers=headers, origin=origin)
            assert response.status_code == 403
            assert json.loads(response.body)["error"] == "origin_not_allowed"
        async with connect(
            edge.url(), additional_headers=headers, origin="https://IDE.example"
        ) as ws:
            await opened(ws)


async def test_without_an_allow_list_any_origin_and_none_pass(edge: Edge):
    async with edge.connect(origin="https://anything.example") as ws:
        await opened(ws)
    async with edge.connect() as ws:
        await opened(ws)


async def test_connection_limit_per_user(edge_factory: Any):
    async with edge_factory(max_connections_per_user=2) as edge, bystander(edge):
        token = mint(edge.key, sub="greedy")
        headers = {"Authorization": f"Bearer {token}"}
        async with edge.connect("/ws/g1", token=token) as first:
            await opened(first)
            async with edge.connect("/ws/g2", token=token) as second:
                await opened(second)
                response = await handshake_status(edge, "/ws/g3", additional_headers=headers)
                assert response.status_code == 429
                assert response.headers["Retry-After"]
                assert json.loads(response.body)["error"] == "too_many_connections"
            await close_code(second)
        # A slot is free again once a connection ends.
        await eventually(lambda: edge.gateway.open_connections <= 2)
        async with edge.connect("/ws/g3", token=token) as third:
            await opened(third)


async def test_connection_limit_per_process(edge_factory: Any):
    async with edge_factory(max_connections=1) as edge, edge.connect("/ws/a") as ws:
        await opened(ws)
        headers = {"Authorization": f"Bearer {mint(edge.key, sub='other')}"}
        response = await handshake_status(edge, additional_headers=headers)
        assert response.status_code == 503
        assert response.headers["Retry-After"]


async def test_connect_rate_per_address(edge_factory: Any):
    async with edge_factory(connect_rate=0.5, connect_burst=3) as edge:
        async with httpx.AsyncClient(base_url=edge.http("")) as client:
            statuses = [(await client.get("/api/v1/agents")).status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 429]
            refused = await client.get("/api/v1/agents")
            assert refused.headers["Retry-After"] in {"1", "2"}
            # Health probes are not rate limited.
            assert (await client.get("/health")).status_code == 200
        response = await handshake_status(
            edge, additional_headers={"Authorization": f"Bearer {mint(edge.key)}"}
        )
        assert response.status_code == 429


async def test_behind_the_front_door_each_client_has_its_own_connect_rate(edge_factory: Any):
    """From a trusted proxy, the X-Forwarded-For client is who is counted; from
    anyone else the header is ignored (it could be made up)."""
    alice, bob = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}

    async def statuses(trusted: Any, *clients: dict[str, str]) -> list[int]:
        limits = {"connect_rate": 0.5, "connect_burst": 2, "trusted_proxies": trusted}
        async with edge_factory(**limits) as edge, httpx.AsyncClient(base_url=edge.http("")) as c:
            return [(await c.get("/api/v1/agents", headers=who)).status_code for who in clients]

    untrusted = await statuses((), alice, bob, alice)
    assert untrusted == [401, 401, 429], "untrusted: one bucket, the peer's"
    trusted = await statuses(parse_networks(["127.0.0.1"]), alice, alice, bob, bob, alice)
    assert trusted == [401, 401, 401, 401, 429], "a bucket per forwarded client"


async def test_idle_connection_is_closed_with_1001(edge_factory: Any):
    async with edge_factory(idle_timeout=0.3) as edge, edge.connect() as ws:
        await opened(ws)
        assert await close_code(ws) == (1001, "idle timeout")


async def test_revocation_closes_connections_and_refuses_old_tokens(edge_factory: Any, feed: Feed):
    async with edge_factory(
        revocations_url=feed.url,
        auth_internal_api_key="feed-key",
        revocation_poll_interval=0.05,
    ) as edge:
        old_token = mint(edge.key, sub="alice")
        async with bystander(edge, "bob"), edge.connect(token=old_token) as ws:
            await opened(ws)
            feed.revoke("alice", time.time() + 1)
            assert await close_code(ws) == (4001, "token revoked")
        assert feed.requests[0] == ("0", "feed-key")
        response = await handshake_status(
            edge, additional_headers={"Authorization": f"Bearer {old_token}"}
        )
        assert response.status_code == 401
        assert json.loads(response.body)["error_description"] == "token revoked"
        async with httpx.AsyncClient() as client:
            view = await client.get(
                edge.http("/api/v1/agents"), headers={"Authorization": f"Bearer {old_token}"}
            )
            assert view.status_code == 401
        # A token issued after the revocation works.
        fresh = mint(edge.key, sub="alice", iat=int(time.time()) + 2)
        async with edge.connect(token=fresh) as ws:
            await opened(ws)


async def test_auth_frame_with_a_revoked_token_is_refused(edge_factory: Any, feed: Feed):
    async with edge_factory(revocations_url=feed.url, revocation_poll_interval=0.05) as edge:
        # The socket's own token is newer than the revocation, whatever the
        # machine's pace (the cut was "now + 1" against an iat of the next
        # whole second but one, which a slow second crossed); the token the
        # auth frame brings, minted now, is older.
        fresh_iat = int(time.time()) + 10
        async with edge.connect(token=mint(edge.key, iat=fresh_iat)) as ws:
            await opened(ws)
            feed.revoke("user-1", fresh_iat - 1)
            # Wait until the gateway has applied the revocation.
            await eventually(lambda: len(feed.requests) > 1 and feed.requests[-1][0] != "0")
            await ws.send(json.dumps({"type": "auth", "token": mint(edge.key)}))
            frame = await receive(ws)
            assert (frame["code"], frame["content"]) == ("invalid_token", "token revoked")
            await still_works(ws)
