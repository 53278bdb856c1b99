"""Channels straight to one runtime replica: where a session's lease says it lives.

A runtime replica asked for a session that another replica serves refuses
with UNAVAILABLE and names the holder's advertised address in the trailing
metadata (:data:`mesh.grpc_server.LEASE_HOLDER_HEADER`; the address comes
from the session's lease, :mod:`runtime.leases`). :func:`gateway.attach.open_stream`
then opens the stream on a channel to that address instead of trying the
balanced channel again. :class:`ReplicaChannels` keeps those channels, one
per address, at most ``limit`` of them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import structlog

from mesh.grpc_server import LEASE_HOLDER_HEADER
from runtime.v1 import runtime_pb2_grpc

if TYPE_CHECKING:
    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

log = structlog.get_logger("gateway.replicas")


class ReplicaChannels:
    """A bounded cache of channels to single runtime replicas, by address.

    ``connect`` makes a channel for one ``host:port`` (the same TLS as the
    balanced channel). When a new address would exceed ``limit``, the least
    recently used channel is closed: a stream still open on it ends with
    UNAVAILABLE and its IDE reconnects (1013), which is rare because
    addresses outnumber ``limit`` only as replicas come and go. ``close``
    closes every channel; idempotent.
    """

    def __init__(self, connect: Callable[[str], grpc.aio.Channel], limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._connect = connect
        self._limit = limit
        self._channels: OrderedDict[str, tuple[grpc.aio.Channel, AgentRuntimeServiceAsyncStub]] = (
            OrderedDict()
        )
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._channels)

    def stub(self, address: str) -> AgentRuntimeServiceAsyncStub:
        """The stub of a channel to the replica at ``address``, made on first use.

        Raises ValueError for an address that is not one ``host:port``.
        """
        cached = self._channels.get(address)
        if cached is not None:
            self._channels.move_to_end(address)
            return cached[1]
        if ":" not in address or any(mark in address for mark in ", /"):
            raise ValueError(f"{address!r} is not one host:port")
        channel = self._connect(address)
        stub: AgentRuntimeServiceAsyncStub = runtime_pb2_grpc.AgentRuntimeServiceStub(channel)
        self._channels[address] = (channel, stub)
        while len(self._channels) > self._limit:
            evicted, (old, _) = self._channels.popitem(last=False)
            log.info("replica_channel_evicted", address=evicted)
            task = asyncio.create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return stub

    async def close(self) -> None:
        """Close every channel (their calls are cancelled); idempotent."""
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close()
        if self._closing:
            await asyncio.wait(list(self._closing))


async def lease_holder(call: grpc.aio.Call) -> str | None:
    """The replica address an UNAVAILABLE refusal named, if it named one."""
    try:
        trailing = await call.trailing_metadata()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):  # pragma: no cover - defensive
        return None
    if trailing is None:
        return None
    value = trailing.get(LEASE_HOLDER_HEADER)
    return value if isinstance(value, str) and value else None
