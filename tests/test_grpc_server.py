"""mesh.grpc_server's admission: the credential and the two pools of call
slots, on a real MeshServer on loopback.

The health service is the only servicer needed: ``Check`` is the exempt
unary call, ``Watch`` a stream that holds its slot until it ends. A call
started as a stream on the ``Check`` path and never sent its request is a
``Check`` the server has admitted and is still waiting on (a slow or
malicious prober).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from mesh.grpc_server import (
    HEALTH_CHECK_METHOD,
    MeshServer,
    health_check,
    internal_metadata,
)
from tests.support import eventually

KEY = "test-internal-key"
AUTH = internal_metadata(KEY)
WATCH_METHOD = "/grpc.health.v1.Health/Watch"
REQUEST = health_pb2.HealthCheckRequest()


@contextlib.asynccontextmanager
async def mesh_server(**limits: Any) -> AsyncIterator[tuple[MeshServer, grpc.aio.Channel]]:
    server = MeshServer(address="127.0.0.1:0", internal_api_key=KEY, service_names=[], **limits)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, channel
    finally:
        await server.stop(0)


def watch(channel: grpc.aio.Channel, metadata: Any = None) -> Any:
    call = channel.unary_stream(
        WATCH_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    return call(REQUEST, metadata=metadata)


def held_check(channel: grpc.aio.Channel) -> Any:
    """A Check without the credential whose request never comes."""
    return channel.stream_stream(HEALTH_CHECK_METHOD)()


async def test_an_unauthenticated_flood_leaves_the_authenticated_slots_free() -> None:
    limit = 4
    async with mesh_server(max_concurrent_rpcs=limit) as (server, channel):
        watches = [watch(channel) for _ in range(2 * limit)]
        for call in watches:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.read()
        reply = await health_check(channel)(REQUEST, metadata=AUTH, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A Watch needs the credential; the refusal holds no slot.
        for call in watches:
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED

        held = [held_check(channel) for _ in range(2 * limit)]
        await eventually(lambda: server.admission.calls_in_progress == (0, 2 * limit))
        # Every authenticated slot is still there, for stream and unary calls.
        streams = [watch(channel, AUTH) for _ in range(limit - 1)]
        for stream in streams:
            reply = await stream.read()
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reply = await health_check(channel)(REQUEST, metadata=AUTH, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await eventually(lambda: server.admission.calls_in_progress == (limit - 1, 2 * limit))
        for call in (*held, *streams):
            call.cancel()
        await eventually(lambda: server.admission.calls_in_progress == (0, 0))


async def test_unauthenticated_checks_get_a_small_pool_of_their_own() -> None:
    async with mesh_server(max_concurrent_rpcs=2, max_unauthenticated_rpcs=2) as (server, channel):
        held = [held_check(channel) for _ in range(2)]
        await eventually(lambda: server.admission.calls_in_progress == (0, 2))

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_check(channel)(REQUEST, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "without a credential" in (refused.value.details() or "")
        # The mesh's own health checks present the credential and still pass.
        reply = await health_check(channel)(REQUEST, metadata=AUTH, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        for call in held:
            call.cancel()
        await eventually(lambda: server.admission.calls_in_progress == (0, 0))
        reply = await health_check(channel)(REQUEST, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unauthenticated_calls_held_open_lose_their_slots() -> None:
    limits = {"max_unauthenticated_rpcs": 2, "unauthenticated_call_seconds": 0.2}
    async with mesh_server(**limits) as (server, channel):
        held = [held_check(channel) for _ in range(2)]
        await eventually(lambda: server.admission.calls_in_progress == (0, 2))
        # The server gives up on them (the client's side of such a call
        # stays open until it cancels it; gRPC sends no status for a
        # cancelled handler), and their slots are free again.
        await eventually(lambda: server.admission.calls_in_progress == (0, 0))
        # A probe gets its answer; the pool was not pinned.
        reply = await health_check(channel)(REQUEST, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for call in held:
            call.cancel()


async def test_authenticated_calls_are_capped_and_release_their_slots() -> None:
    async with mesh_server(max_concurrent_rpcs=2) as (server, channel):
        streams = [watch(channel, AUTH) for _ in range(2)]
        for stream in streams:
            await stream.read()
        assert server.admission.calls_in_progress == (2, 0)

        # Beyond the limit: RESOURCE_EXHAUSTED, as gRPC's own limit answered.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_check(channel)(REQUEST, metadata=AUTH, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2" in (refused.value.details() or "")
        # A call refused for its credential neither counts nor is counted.
        assert await watch(channel).code() == grpc.StatusCode.UNAUTHENTICATED

        # A client's cancel frees the slot.
        streams[0].cancel()
        await eventually(lambda: server.admission.calls_in_progress == (1, 0))
        # Answered and aborted unary calls free theirs.
        await health_check(channel)(REQUEST, metadata=AUTH, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health_check(channel)(
                health_pb2.HealthCheckRequest(service="nope"), metadata=AUTH, timeout=10
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        await eventually(lambda: server.admission.calls_in_progress == (1, 0))

        # The server's stop ends the stream still open, and frees its slot.
        await server.stop(0)
        await eventually(lambda: server.admission.calls_in_progress == (0, 0))


async def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent_rpcs"):
        MeshServer(
            address="127.0.0.1:0", internal_api_key=KEY, service_names=[], max_concurrent_rpcs=0
        )
    with pytest.raises(ValueError, match="max_unauthenticated_rpcs"):
        MeshServer(
            address="127.0.0.1:0",
            internal_api_key=KEY,
            service_names=[],
            max_unauthenticated_rpcs=0,
        )


async def test_a_closed_channel_frees_every_slot() -> None:
    async with mesh_server(max_concurrent_rpcs=8) as (server, channel):
        streams = [watch(channel, AUTH) for _ in range(8)]
        await asyncio.gather(*(stream.read() for stream in streams))
        await channel.close()
        await eventually(lambda: server.admission.calls_in_progress == (0, 0))
