"""The repository's Caddyfile, run by the real Caddy binary (the
``caddyserver`` package) in front of two stand-in upstreams that answer with
their own name and the X-Forwarded-For they were given."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support import Service

ROOT = Path(__file__).resolve().parents[1]
CADDY = Path(sys.executable).parent / "caddy"


async def _upstream(name: str) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        forwarded = [
            line.split(":", 1)[1].strip()
            for line in lines
            if line.lower().startswith("x-forwarded-for:")
        ]
        length = [
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        ]
        received = await reader.readexactly(length[0]) if length else b""
        body = f"{name} {','.join(forwarded)}".encode()
        if received:
            body += b" " + received
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def caddy(env: dict[str, str]) -> Service:
    """Caddy with the Caddyfile; ready once its log says it serves."""
    return Service(
        [str(CADDY), "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
        env={**os.environ, **env},
        ready='"serving initial configuration"',
        start_timeout=30,
    )


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    servers = [await _upstream(name) for name in ("auth", "gw-a", "gw-b", "rest-a", "rest-b")]
    (_, auth), (_, gw_a), (_, gw_b), (_, rest_a), (_, rest_b) = servers
    port = free_port()
    env = {
        "CODELAB_SITE": f":{port}",
        "CODELAB_FRONT_BIND": "127.0.0.1",
        "CODELAB_AUTH_UPSTREAM": f"127.0.0.1:{auth}",
        "CODELAB_GATEWAY_UPSTREAMS": f"to 127.0.0.1:{gw_a} 127.0.0.1:{gw_b}",
        "CODELAB_GATEWAY_REST_UPSTREAMS": f"to 127.0.0.1:{rest_a} 127.0.0.1:{rest_b}",
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    proxy = caddy(env)
    await asyncio.to_thread(proxy.start)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client
    finally:
        await asyncio.to_thread(proxy.stop, timeout=10)
    for server, _ in servers:
        server.close()


async def test_paths_go_to_their_service_and_nothing_else_is_served(
    front: httpx.AsyncClient,
) -> None:
    for path in ("/oauth/token", "/.well-known/jwks.json"):
        assert (await front.get(path)).text.startswith("auth "), path
    for path in ("/ws/s1", "/api/v1/ws/s1", "/health", "/ready", "/api/v1/health"):
        assert (await front.get(path)).text.startswith("gw-"), path
    for path in (
        "/api/v1/sessions",
        "/api/v1/sessions/s1",
        "/api/v1/sessions/s1/history",
        "/api/v1/sessions/s1/pending-approvals",
        "/api/v1/agents",
        "/api/v1/agents/s1/current",
        "/api/v1/approval-rules",
        "/api/v1/models",
    ):
        assert (await front.get(path)).text.startswith("rest-"), path
    for path in ("/metrics", "/internal/revocations", "/", "/oauth"):
        reply = await front.get(path)
        assert reply.status_code == 404, path
        assert reply.json()["error"] == "not_found"


async def test_a_rest_call_with_a_body_reaches_the_rest_port_whole(
    front: httpx.AsyncClient,
) -> None:
    # The WebSocket port refuses bodies; the REST port reads them.
    reply = await front.patch("/api/v1/sessions/s1", json={"title": "renamed"})
    name, _, received = reply.text.split(" ", 2)
    assert name.startswith("rest-")
    assert json.loads(received) == {"title": "renamed"}
    deleted = await front.delete("/api/v1/sessions/s1")
    assert deleted.text.startswith("rest-")
    rules = {"allow": ["execute_command(pytest:*)"], "deny": []}
    replaced = await front.put("/api/v1/approval-rules", json=rules)
    name, _, received = replaced.text.split(" ", 2)
    assert name.startswith("rest-")
    assert json.loads(received) == rules


async def test_every_window_of_a_session_reaches_the_same_gateway(
    front: httpx.AsyncClient,
) -> None:
    homes = {}
    for n in range(20):
        seen = {
            (await front.get(path)).text.split()[0]
            for path in (f"/ws/s{n}", f"/api/v1/ws/s{n}", f"/ws/s{n}?last_seq=5")
            for _ in range(3)
        }
        assert len(seen) == 1, f"session s{n} was split over {seen}"
        homes[n] = seen.pop()
    assert set(homes.values()) == {"gw-a", "gw-b"}, "sessions spread over both"


async def test_a_forwarded_for_sent_by_the_client_is_not_passed_on(
    front: httpx.AsyncClient,
) -> None:
    reply = await front.get("/oauth/token", headers={"X-Forwarded-For": "203.0.113.9"})
    assert reply.text == "auth 127.0.0.1", "auth sees the real client, not a claimed one"
