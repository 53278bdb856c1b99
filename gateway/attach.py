"""Attaching a connection to its session's ``Converse`` stream; the retries.

:func:`open_stream` opens the stream and reads its first event. A replica
that refuses because another one holds the session's lease names that
one's address, and the next try goes straight there
(:mod:`gateway.replicas`); other UNAVAILABLE answers are tried again on the
balanced channel (each try to another replica). :func:`quiet_session_info`
is the ``session_info`` the gateway sends itself to a connection that
attaches later (docs/GATEWAY.md, "Attaching on the first frame").
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from gateway.frames import Frame
from gateway.frames import response_to_frame as frame_for
from gateway.replicas import ReplicaChannels, lease_holder
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from typing import TypeAlias

    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

    ConverseCall: TypeAlias = grpc.aio.StreamStreamCall[
        runtime_pb2.ConverseRequest, runtime_pb2.ConverseResponse
    ]

OPEN_ATTEMPTS = 4
"""Tries at opening a session's stream when replicas answer UNAVAILABLE."""
OPEN_RETRY_DELAY = 0.25
"""Seconds before the second try; the n-th waits n times as long."""
ATTACH_PATIENCE = 30.0
"""Seconds an attach on the first frame keeps trying replicas that answer
UNAVAILABLE (a dead replica's lease runs out meanwhile): the IDE has sent a
frame and is owed its delivery, not a retryable close."""


async def open_stream(
    runtime: AgentRuntimeServiceAsyncStub,
    opening: runtime_pb2.OpenSession,
    metadata: tuple[tuple[str, str], ...],
    patience: float = 0.0,
    replicas: ReplicaChannels | None = None,
) -> tuple[ConverseCall, runtime_pb2.ConverseResponse | None]:
    """Open the session's Converse stream; returns it with its first event.

    A replica answering UNAVAILABLE before the first event (another
    replica holds the session, or it is going away) is retried. When it
    names the lease holder and ``replicas`` is given, the next try goes
    straight to the holder, at once; otherwise the balanced ``runtime``
    channel is tried again after a pause. Without ``patience`` a few
    pauses; with it, for that many seconds. A call that still fails is
    returned without a first event; the pump's read reports its status.
    """
    deadline = time.monotonic() + patience
    attempt = 0
    stub, redirected = runtime, False
    while True:
        call = stub.Converse(metadata=metadata)
        try:
            await call.write(runtime_pb2.ConverseRequest(open=opening))
            first = await call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            if await call.code() != grpc.StatusCode.UNAVAILABLE:
                return call, None
            holder = await lease_holder(call) if replicas is not None else None
            if holder is not None and replicas is not None and not redirected:
                try:
                    stub, redirected = replicas.stub(holder), True
                except ValueError:
                    pass
                else:
                    call.cancel()
                    continue
            # Refused again right after a redirect (the holder died or
            # passed the lease on): back to the balanced channel, after a pause.
            stub, redirected = runtime, False
            attempt += 1
            delay = min(OPEN_RETRY_DELAY * attempt, 1.0)
            if attempt < OPEN_ATTEMPTS or time.monotonic() + delay < deadline:
                call.cancel()
                await asyncio.sleep(delay)
                continue
            return call, None
        if not isinstance(first, runtime_pb2.ConverseResponse):  # grpc.aio.EOF
            return call, None
        return call, first


def quiet_session_info(quiet: runtime_pb2.GetCurrentAgentResponse, created: bool) -> Frame:
    """The ``session_info`` the runtime would send for an idle session."""
    frame = frame_for(
        runtime_pb2.ConverseResponse(
            session_opened=runtime_pb2.SessionOpened(
                session_id=quiet.session_id,
                agent=quiet.agent,
                created=created,
                recovered=True,
                last_seq=quiet.last_seq,
            )
        )
    )
    assert frame is not None
    return frame
