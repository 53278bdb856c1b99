"""Attaching a connection to its session's ``Converse`` stream; the retries.

:func:`open_stream` opens the stream and reads its first event, trying
again (the channel balances each try to another replica) while replicas
answer UNAVAILABLE. :func:`quiet_session_info` is the ``session_info`` the
gateway sends itself to a connection that attaches later (docs/GATEWAY.md,
"Attaching on the first frame").
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from gateway.frames import Frame
from gateway.frames import response_to_frame as frame_for
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
) -> tuple[ConverseCall, runtime_pb2.ConverseResponse | None]:
    """Open the session's Converse stream; returns it with its first event.

    A replica answering UNAVAILABLE before the first event (another
    replica holds the session, or it is going away) is retried: the
    channel balances the next attempt to another replica. Without
    ``patience`` a few times; with it, for that many seconds. A call
    that still fails is returned without a first event; the pump's read
    reports its status.
    """
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        attempt += 1
        call = runtime.Converse(metadata=metadata)
        try:
            await call.write(runtime_pb2.ConverseRequest(open=opening))
            first = await call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            delay = min(OPEN_RETRY_DELAY * attempt, 1.0)
            again = attempt < OPEN_ATTEMPTS or time.monotonic() + delay < deadline
            if again and await call.code() == grpc.StatusCode.UNAVAILABLE:
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
