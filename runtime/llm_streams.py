"""The runtime's model calls on llmproxy's ``StreamChats`` streams.

Starting a gRPC call costs both sides more CPU than the messages of a short
answer (docs/BENCHMARKS.md), and a turn makes a model call per step. So
:class:`ChatStreams` carries many calls on each long-lived ``StreamChats``
stream, each under its own id: a ``start`` request, the call's responses
as ``StreamChat`` would send them, a ``cancel`` request when the caller
stops early.

A stream carries at most :data:`CALLS_IN_PROGRESS` calls at once (another
stream is opened for more) and :data:`CALLS_PER_STREAM` calls in all; then it
takes no new ones and ends once its last call has. Each new stream is a new
gRPC call, so a channel that balances calls over llmproxy replicas (round
robin over a list or a ``dns:`` name) spreads the streams over them, and the
calls with them, a stream's worth at a time.

A stream that breaks (its replica stopped, the connection dropped) fails
the calls in progress on it as a broken ``StreamChat`` call would fail
(``llm_unavailable``, retryable); the next call opens a new stream. A proxy
that does not know ``StreamChats`` (UNIMPLEMENTED: an older version) makes
:attr:`ChatStreams.supported` false, and the caller goes back to one
``StreamChat`` per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import grpc

from llmproxy.v1 import llmproxy_pb2
from mesh.grpc_server import CODES_BY_NUMBER
from runtime.errors import UpstreamError

CALLS_IN_PROGRESS = 32
"""Most calls in progress on one stream; more go on another."""
CALLS_PER_STREAM = 64
"""Calls one stream carries in all before it is retired (see the module's doc)."""

_Response = llmproxy_pb2.StreamChatsResponse


class Unsupported(Exception):
    """The proxy does not serve ``StreamChats``: nothing of the call was sent."""


def encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _text(tag: bytes, value: str) -> bytes:
    if not value:
        return b""
    data = value.encode()
    return tag + encode_varint(len(data)) + data


def encode_start(
    call_id: int,
    request: bytes,
    *,
    request_id: str = "",
    user: str = "",
    traceparent: str = "",
    timeout_ms: int = 0,
) -> bytes:
    """A ``StreamChatsRequest`` starting call ``call_id`` with ``request``
    (a ``StreamChatRequest`` already serialized: it is not parsed again)."""
    return b"".join(
        (
            b"\x08" + encode_varint(call_id),
            b"\x12" + encode_varint(len(request)) + request,
            _text(b"\x22", request_id),
            _text(b"\x2a", user),
            _text(b"\x32", traceparent),
            b"\x38" + encode_varint(timeout_ms) if timeout_ms else b"",
        )
    )


def encode_cancel(call_id: int) -> bytes:
    """A ``StreamChatsRequest`` cancelling call ``call_id``."""
    return b"\x08" + encode_varint(call_id) + b"\x1a\x00"


class _Stream:
    """One ``StreamChats`` call: a writer task sends the requests
    :meth:`start` and :meth:`forget` queue (and the half-close), a reader
    task hands each response to its call's queue."""

    def __init__(
        self,
        open_call: Callable[[], Any],
        on_end: Callable[[_Stream], None],
    ) -> None:
        self.started = 0
        """Calls started on this stream so far."""
        self.calls: dict[int, asyncio.Queue[_Response | BaseException]] = {}
        self.broken: BaseException | None = None
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._call = open_call()
        self._on_end = on_end
        self._tasks = (asyncio.create_task(self._write()), asyncio.create_task(self._read()))

    @property
    def open_to_calls(self) -> bool:
        return (
            self.broken is None
            and self.started < CALLS_PER_STREAM
            and len(self.calls) < CALLS_IN_PROGRESS
        )

    @property
    def retired(self) -> bool:
        return self.broken is not None or self.started >= CALLS_PER_STREAM

    def start(self, call_id: int, request: bytes) -> asyncio.Queue[_Response | BaseException]:
        queue: asyncio.Queue[_Response | BaseException] = asyncio.Queue()
        self.calls[call_id] = queue
        self.started += 1
        self._outgoing.put_nowait(request)
        return queue

    def forget(self, call_id: int, *, cancel: bool) -> None:
        """Stop waiting for call ``call_id`` (cancelling it on the proxy)."""
        if self.calls.pop(call_id, None) is not None and cancel and self.broken is None:
            self._outgoing.put_nowait(encode_cancel(call_id))
        self._close_if_done()

    def close(self) -> None:
        """End the stream now; calls still on it fail as broken."""
        self._fail(
            UpstreamError("LLM proxy: the client closed", code="llm_unavailable", retryable=True)
        )
        self._call.cancel()
        for task in self._tasks:
            task.cancel()

    def _close_if_done(self) -> None:
        if self.retired and not self.calls and self.broken is None:
            self._outgoing.put_nowait(None)  # half-close: the proxy ends the stream

    async def _write(self) -> None:
        try:
            while (request := await self._outgoing.get()) is not None:
                await self._call.write(request)
            await self._call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the reader sees the stream end and fails its calls

    async def _read(self) -> None:
        try:
            async for response in self._call:
                queue = self.calls.get(response.id)
                if queue is not None:
                    queue.put_nowait(response)
            self._fail(
                UpstreamError("LLM proxy: the stream ended", code="llm_unavailable", retryable=True)
            )
        except grpc.aio.AioRpcError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - a bug: fail the calls, not hang them
            self._fail(exc)
        finally:
            self._on_end(self)

    def _fail(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
        for queue in self.calls.values():
            queue.put_nowait(error)
        self.calls.clear()


class ChatStreams:
    """Model calls on ``StreamChats`` streams over ``channel`` (see the module's doc)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._open: grpc.aio.StreamStreamMultiCallable[bytes, _Response] = channel.stream_stream(
            "/llmproxy.v1.LlmProxyService/StreamChats",
            request_serializer=None,
            response_deserializer=_Response.FromString,
        )
        self._metadata = tuple(metadata)
        self._streams: list[_Stream] = []
        self._ids = itertools.count(1)
        self.supported = True
        """False once the proxy answered UNIMPLEMENTED (it has no StreamChats)."""

    @property
    def streams(self) -> int:
        """Streams open now (retired ones still finishing their calls included)."""
        return len(self._streams)

    async def call(
        self,
        request: bytes,
        *,
        request_id: str = "",
        user: str = "",
        traceparent: str = "",
        limit: float,
    ) -> AsyncGenerator[llmproxy_pb2.StreamChatResponse, None]:
        """The call's responses, ``end`` the last; raises UpstreamError (or the
        stream's AioRpcError), :class:`Unsupported` before any response when
        the proxy has no ``StreamChats``. Closing the iterator early cancels
        the call on the proxy."""
        call_id = next(self._ids)
        stream = self._stream()
        queue = stream.start(
            call_id,
            encode_start(
                call_id,
                request,
                request_id=request_id,
                user=user,
                traceparent=traceparent,
                timeout_ms=max(1, round(limit * 1000)),
            ),
        )
        ended = False
        try:
            async with asyncio.timeout(limit):
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        ended = True
                        raise self._failure(item)
                    if item.WhichOneof("kind") == "status":
                        ended = True
                        raise status_error(item.status)
                    chunk = item.chunk
                    if chunk.WhichOneof("chunk") == "end":
                        ended = True
                        yield chunk
                        return
                    yield chunk
        except TimeoutError:
            raise UpstreamError(
                f"LLM proxy: no answer within {limit:g}s", code="llm_timeout", retryable=True
            ) from None
        finally:
            stream.forget(call_id, cancel=not ended)

    async def aclose(self) -> None:
        for stream in list(self._streams):
            stream.close()
        self._streams.clear()

    def _stream(self) -> _Stream:
        for stream in self._streams:
            if stream.open_to_calls:
                return stream
        stream = _Stream(lambda: self._open(metadata=self._metadata), self._ended)
        self._streams.append(stream)
        return stream

    def _ended(self, stream: _Stream) -> None:
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)

    def _failure(self, error: BaseException) -> BaseException:
        unimplemented = grpc.StatusCode.UNIMPLEMENTED
        if isinstance(error, grpc.aio.AioRpcError) and error.code() is unimplemented:
            self.supported = False
            return Unsupported(error.details() or "StreamChats is not implemented")
        return error


def status_error(status: llmproxy_pb2.ChatStatus) -> grpc.aio.AioRpcError:
    """A call's ChatStatus as the AioRpcError its StreamChat would have ended
    with (code, message, and ``x-error-reason`` / ``x-retry-after`` trailers),
    so one mapping (:func:`runtime.llm.error_code`) serves both."""
    code = CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    trailers: list[tuple[str, str]] = []
    if status.reason:
        trailers.append(("x-error-reason", status.reason))
    if status.retry_after_seconds:
        trailers.append(("x-retry-after", str(status.retry_after_seconds)))
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailers),
        details=status.message,
    )
