"""Two gateways and two runtimes on one PostgreSQL: a session survives its replica.

A session is served by one runtime replica at a time, through a lease in
PostgreSQL. Killing the replica that serves a conversation moves the session
to the other one once the lease expires; the IDE reconnects through the other
gateway and goes on with no durable event lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ide.connection import IdeConnection
from runtime.leases import Leases
from tests.conftest import free_port, fresh_postgres_sync
from tests.integration.conftest import Mesh, migrate_runtime, module_service
from tests.integration.test_persistence import frames_until_final
from tests.support import Service, grpc_healthy, http_healthy, start_all

LEASE_TTL = 2.0

pytestmark = pytest.mark.postgres


class Replicas:
    def __init__(self, mesh: Mesh, database: str, llmproxy: str) -> None:
        key = mesh.internal_key
        base = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.runtime_ports = [free_port(), free_port()]
        self.gateway_ports = [free_port(), free_port()]
        migrate_runtime(database, key)
        self.runtimes = [
            module_service(
                "runtime",
                {
                    **base,
                    "AGENT_RUNTIME__PORT": str(port),
                    "AGENT_RUNTIME__REPLICA_ID": f"r{index}",
                    "AGENT_RUNTIME__LEASE_TTL": str(LEASE_TTL),
                    "AGENT_RUNTIME__INTERNAL_API_KEY": key,
                    "AGENT_RUNTIME__LLM_PROXY_ADDRESS": llmproxy,
                    "AGENT_RUNTIME__DATABASE_URL": database,
                },
                grpc_healthy(f"127.0.0.1:{port}"),
            )
            for index, port in enumerate(self.runtime_ports)
        ]
        addresses = ",".join(f"127.0.0.1:{port}" for port in self.runtime_ports)
        self.gateways = [
            module_service(
                "gateway",
                {
                    **base,
                    "GATEWAY__PORT": str(port),
                    "GATEWAY__INTERNAL_API_KEY": key,
                    "GATEWAY__RUNTIME_ADDRESS": addresses,
                    "GATEWAY__JWKS_URL": f"{mesh.auth_url}/.well-known/jwks.json",
                    "GATEWAY__JWT_ISSUER": mesh.auth_url,
                },
                http_healthy(f"http://127.0.0.1:{port}/health"),
            )
            for index, port in enumerate(self.gateway_ports)
        ]

    def url(self, gateway: int) -> str:
        return f"ws://127.0.0.1:{self.gateway_ports[gateway]}"

    def services(self) -> list[Service]:
        return [*self.runtimes, *self.gateways]


@pytest.fixture
def replicas(mesh: Mesh, shared_llmproxy: str) -> Iterator[Replicas]:
    """Two runtime replicas and two gateways on one PostgreSQL database,
    with the package's llmproxy."""
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(fresh_postgres_sync("test_replicas"))
        own = Replicas(mesh, database, shared_llmproxy)
        own.database = database  # type: ignore[attr-defined]
        for service in own.services():
            cleanup.callback(lambda s=service: s.stop() if s.running else None)
        start_all(*own.services())
        yield own


async def lease_owner(database: str, session_id: str) -> str | None:
    from mesh.database import create_engine

    engine = create_engine(database)
    try:
        return await Leases(engine).owner(session_id)
    finally:
        await engine.dispose()


async def reconnect(
    replicas: Replicas, gateway: int, session_id: str, token: str, last_seq: int
) -> tuple[IdeConnection, dict[str, object]]:
    """Connect until a replica serves the session again (bounded by the lease)."""
    for _ in range(40):
        connection = IdeConnection(replicas.url(gateway), session_id, token, last_seq=last_seq)
        try:
            await connection.__aenter__()
            return connection, await connection.next_frame()
        except (InvalidStatus, ConnectionClosed):
            await connection.close()
            await asyncio.sleep(0.25)
    raise AssertionError("the session never moved to the surviving replica")


async def test_a_killed_runtime_replicas_session_continues_on_the_other(
    replicas: Replicas, mesh: Mesh
) -> None:
    session_id = f"replica-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(replicas.url(0), session_id, mesh.token) as ide:
        await ide.next_frame()
        await ide.send({"type": "switch_agent", "agent_type": "coder", "content": "before"})
        before = await frames_until_final(ide)
        owner = await lease_owner(replicas.database, session_id)  # type: ignore[attr-defined]
        assert owner in ("r0", "r1")
        serving = replicas.runtimes[int(owner[1])]
        assert serving.stop(signal.SIGKILL) == -signal.SIGKILL
    last = before[-1]["seq"]
    ide, info = await reconnect(replicas, 1, session_id, mesh.token, last)
    try:
        assert info["type"] == "session_info"
        assert info["metadata"]["recovered"] is True  # type: ignore[index]
        await ide.send_message("after")
        after = await frames_until_final(ide)
        survivor = "r1" if owner == "r0" else "r0"
        database = replicas.database  # type: ignore[attr-defined]
        assert await lease_owner(database, session_id) == survivor
    finally:
        await ide.close()
    assert after[-1]["metadata"]["status"] == "completed"
    assert after[0]["seq"] > last
    async with IdeConnection(replicas.url(1), session_id, mesh.token, last_seq=0) as ide:
        await ide.next_frame()
        replay = []
        while len([f for f in replay if f.get("is_final")]) < 2:
            replay.append(await ide.next_frame())
    texts = "".join(f["content"] for f in replay if f["type"] == "assistant_message")
    assert "You said: before" in texts
    assert "You said: after" in texts, "both turns are in the log: nothing durable was lost"
