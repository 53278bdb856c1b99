"""Two real runtime replicas on one database: the gateway goes to the lease holder.

A replica asked for a session the other one serves refuses with UNAVAILABLE
and names the holder's advertised address; the gateway's open
(:func:`gateway.attach.open_stream`) connects straight there. Both
replicas share one SQLite file, or one PostgreSQL database.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway.attach import open_stream
from gateway.replicas import ReplicaChannels
from llmproxy.v1 import llmproxy_pb2_grpc
from mesh.database import create_engine
from mesh.grpc_server import LEASE_HOLDER_HEADER, MeshServer, internal_metadata
from runtime.__main__ import RuntimeConfig, advertised
from runtime.leases import Leases
from runtime.store import migrate
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.conftest import migrated_postgres
from tests.runtime.test_service import KEY, ScriptedProxy, running_runtime, user_message


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One migrated database both replicas use: a SQLite file, a fresh PostgreSQL one."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
        await migrate(url)
        yield url
        return
    async with migrated_postgres("test_gateway_replicas") as url:
        yield url


@pytest.fixture
async def replica_ports(shared_database: str) -> AsyncIterator[list[int]]:
    """Two runtime replicas (r0, r1) and the scripted model proxy they share."""
    proxy = MeshServer(address="127.0.0.1:0", internal_api_key=KEY, service_names=[])
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(ScriptedProxy(), proxy.server)
    proxy_port = await proxy.start()
    async with contextlib.AsyncExitStack() as stack:
        ports = []
        for index in range(2):
            config = RuntimeConfig(
                internal_api_key=KEY,
                port=0,
                replica_id=f"r{index}",
                llm_proxy_address=f"127.0.0.1:{proxy_port}",
                database_url=shared_database,
                detach_grace=0,
            )
            ports.append(await stack.enter_async_context(running_runtime(config)))
        yield ports
    await proxy.stop(0)


def stub(channel: grpc.aio.Channel) -> runtime_pb2_grpc.AgentRuntimeServiceStub:
    return runtime_pb2_grpc.AgentRuntimeServiceStub(channel)


def opening(session_id: str) -> runtime_pb2.OpenSession:
    return runtime_pb2.OpenSession(session_id=session_id)


async def test_a_refusal_names_the_replica_holding_the_lease(
    replica_ports: list[int], shared_database: str
) -> None:
    first, second = (f"127.0.0.1:{port}" for port in replica_ports)
    metadata = internal_metadata(KEY, user="alice")
    async with grpc.aio.insecure_channel(first) as one, grpc.aio.insecure_channel(second) as two:
        holding = stub(one).Converse(metadata=metadata)
        await holding.write(runtime_pb2.ConverseRequest(open=opening("s-held")))
        assert (await holding.read()).session_opened.created
        refused = stub(two).Converse(metadata=metadata)
        await refused.write(runtime_pb2.ConverseRequest(open=opening("s-held")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        trailing = caught.value.trailing_metadata()
        assert trailing is not None
        assert dict(trailing)[LEASE_HOLDER_HEADER] == first
        engine = create_engine(shared_database)
        try:
            assert await Leases(engine).holder("s-held") == ("r0", first)
        finally:
            await engine.dispose()
        holding.cancel()


async def test_the_gateway_opens_the_session_on_its_holder_through_the_other_replica(
    replica_ports: list[int],
) -> None:
    first, second = (f"127.0.0.1:{port}" for port in replica_ports)
    metadata = internal_metadata(KEY, user="alice")
    replicas = ReplicaChannels(grpc.aio.insecure_channel, limit=4)
    try:
        async with (
            grpc.aio.insecure_channel(first) as one,
            grpc.aio.insecure_channel(second) as two,
        ):
            holding, opened = await open_stream(stub(one), opening("s-moved"), metadata)
            assert opened is not None
            assert opened.session_opened.created
            # Only the replica that does not hold the lease is reachable on
            # the "balanced" channel: the open lands on the holder anyway.
            call, first_event = await open_stream(
                stub(two), opening("s-moved"), metadata, replicas=replicas
            )
            assert first_event is not None
            assert first_event.session_opened.session_id == "s-moved"
            assert not first_event.session_opened.created
            assert len(replicas) == 1, "one channel, to the holder"
            await call.write(user_message("hello"))
            texts = []
            while True:
                response = await call.read()
                if response.HasField("turn_done"):
                    break
                if response.HasField("assistant_delta"):
                    texts.append(response.assistant_delta.text)
            assert "".join(texts) == "one two three"
            # The other window of the session sees the turn: it ran on the
            # holder, where both streams are attached.
            seen = []
            while not seen or not seen[-1].HasField("turn_done"):
                seen.append(await holding.read())
            assert any(item.HasField("assistant_delta") for item in seen)
            call.cancel()
            holding.cancel()
    finally:
        await replicas.close()


async def test_without_replica_channels_the_refusal_is_returned(
    replica_ports: list[int],
) -> None:
    first, second = (f"127.0.0.1:{port}" for port in replica_ports)
    metadata = internal_metadata(KEY, user="alice")
    async with grpc.aio.insecure_channel(first) as one, grpc.aio.insecure_channel(second) as two:
        holding, opened = await open_stream(stub(one), opening("s-stays"), metadata)
        assert opened is not None
        call, first_event = await open_stream(stub(two), opening("s-stays"), metadata)
        assert first_event is None
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        holding.cancel()


async def test_replica_channels_are_bounded_and_take_one_address() -> None:
    replicas = ReplicaChannels(grpc.aio.insecure_channel, limit=2)
    try:
        first = replicas.stub("127.0.0.1:1")
        assert replicas.stub("127.0.0.1:1") is first, "cached by address"
        replicas.stub("127.0.0.1:2")
        replicas.stub("127.0.0.1:3")
        assert len(replicas) == 2, "the least recently used one is closed"
        assert replicas.stub("127.0.0.1:1") is not first
        for wrong in ("", "a:1,b:2", "dns:///runtime:50051", "host only"):
            with pytest.raises(ValueError, match="not one host:port"):
                replicas.stub(wrong)
    finally:
        await replicas.close()


def test_a_wildcard_listen_address_advertises_the_host_name() -> None:
    assert advertised("127.0.0.1", 50051) == "127.0.0.1:50051"
    assert advertised("0.0.0.0", 50051).endswith(":50051")
    assert not advertised("0.0.0.0", 50051).startswith("0.0.0.0")
    assert advertised("::1", 7) == "[::1]:7"
