# ruff: noqa: RUF002 - the multiplication sign is meant
"""The bare relay: the smallest mesh that does what ours does per token.

Three servers, one per process, run by ``bench_mesh.py``::

    python relay.py source --port P                   # gRPC: a request in, N tokens out
    python relay.py relay  --port P --upstream ADDR   # gRPC bidi: re-emit the source's tokens
    python relay.py edge   --port P --upstream ADDR   # websockets: one relay stream per connection

No proto: the wire type is raw bytes (generic handlers, no serializers). No
auth, no persistence. Each token is ``w<i>@<monotonic_ns> `` so the client
can compute the latency added since the source emitted it (CLOCK_MONOTONIC
is one clock for every process on the machine).

By default the relay is *tight*: the same limit the mesh would reach if its
hops cost nothing beyond the transport. Every process runs on the mesh's
event loop (:func:`mesh.process.run`, uvloop), and the two gRPC hops merge
exactly where the mesh's do: the source writes through a
:class:`mesh.outbox.Outbox` as llmproxy does (tokens produced while a write
is in flight go out as one message), the relay drains what queued while
its previous write was in flight into one message as the runtime's
``Converse`` pump does, and the edge sends one WebSocket frame per gRPC
message as the gateway does. Each turn is one call to the source, as each
model call is one ``StreamChat`` call; with ``--multiplex`` (what
``bench_mesh.py`` passes when the mesh runs with
``AGENT_RUNTIME__LLM_PROXY_MULTIPLEX=true``) the turns reach the source as
the runtime's model calls then reach llmproxy (:mod:`runtime.llm_streams`):
many on one long-lived stream, each message prefixed with its turn's id, at
most :data:`CALLS_IN_PROGRESS` turns on a stream and :data:`CALLS_PER_STREAM`
in all. ``--loose`` is the relay as first shipped: the standard asyncio
loop, one message per token at every hop.

The WebSocket connection's query carries the turn's shape
(``/ws/x?tokens=500&delay=0.01``); a ``user_message`` frame starts a turn.
The source paces its tokens on an absolute schedule, as the offline model
does (:func:`llmproxy.offline.token_due`; not imported, to keep LiteLLM
out of the source's process): token ``i`` is due ``(i + 1) × delay`` after
the turn starts, so a late wake-up does not push every later token back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TypeAlias
from urllib.parse import parse_qs, urlsplit

import grpc

from mesh import process
from mesh.outbox import Outbox

SERVICE = "bench.Relay"
STREAM = f"/{SERVICE}/Stream"
STREAMS = f"/{SERVICE}/Streams"
CONVERSE = f"/{SERVICE}/Converse"
END_OF_TURN = b""
CALLS_IN_PROGRESS = 32  # as runtime.llm_streams (not imported: it pulls in the runtime)
CALLS_PER_STREAM = 64
ID_BYTES = 8

Context: TypeAlias = grpc.aio.ServicerContext[bytes, bytes]
Merge: TypeAlias = Callable[[list[bytes]], Iterable[bytes]]


def merged(batch: list[bytes]) -> Iterator[bytes]:
    """Each run of tokens in ``batch`` as one message; an end of turn alone."""
    run: list[bytes] = []
    for item in batch:
        if item:
            run.append(item)
            continue
        if run:
            yield b"".join(run)
            run = []
        yield item
    if run:
        yield b"".join(run)


def one_by_one(batch: list[bytes]) -> Iterable[bytes]:
    """The loose relay: every token its own message."""
    return batch


def source_handler(merge: Merge) -> Callable[..., object]:
    async def source_stream(request: bytes, context: Context) -> None:
        tokens, delay = request.split()
        pause = float(delay)
        loop = asyncio.get_running_loop()
        outbox: Outbox[bytes, bytes] = Outbox(context.write, merge)
        try:
            start = loop.time()
            for i in range(int(tokens)):
                # like stream_reply: yield to the loop before every token
                await asyncio.sleep(max(0.0, start + (i + 1) * pause - loop.time()))
                await outbox.send(b"w%d@%d " % (i, time.monotonic_ns()))
            await outbox.close()
        finally:
            outbox.cancel()

    return source_stream


def source_streams_handler(merge: Merge) -> Callable[..., object]:
    """Many turns on one stream: each request and message starts with its
    turn's id; a turn ends with its id alone."""
    serve_one = source_handler(merge)

    async def source_streams(requests: AsyncIterator[bytes], context: Context) -> None:
        writing = asyncio.Lock()
        turns: set[asyncio.Task[None]] = set()

        class _Turn:
            def __init__(self, call: bytes) -> None:
                self.call = call

            async def write(self, message: bytes) -> None:
                async with writing:
                    await context.write(self.call + message)

        async def one(request: bytes) -> None:
            turn = _Turn(request[:ID_BYTES])
            await serve_one(request[ID_BYTES:], turn)
            await turn.write(END_OF_TURN)

        try:
            async for request in requests:
                task = asyncio.create_task(one(request))
                turns.add(task)
                task.add_done_callback(turns.discard)
            while turns:
                await asyncio.wait(list(turns))
        finally:
            for task in turns:
                task.cancel()

    return source_streams


async def serve_source(port: int, merge: Merge) -> grpc.aio.Server:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Stream": grpc.unary_stream_rpc_method_handler(source_handler(merge)),
            "Streams": grpc.stream_stream_rpc_method_handler(source_streams_handler(merge)),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


class _SourceStreams:
    """Turns on shared streams to the source, as :mod:`runtime.llm_streams`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._open = channel.stream_stream(STREAMS)
        self._streams: list[_SourceStream] = []
        self._ids = 0

    async def turn(self, request: bytes) -> AsyncIterator[bytes]:
        stream = next((s for s in self._streams if s.open_to_calls), None)
        if stream is None:
            stream = _SourceStream(self._open(), self._streams.remove)
            self._streams.append(stream)
        self._ids += 1
        call = self._ids.to_bytes(ID_BYTES, "big")
        queue = stream.start(call, request)
        try:
            while token := await queue.get():
                yield token
        finally:
            stream.finish(call)


class _SourceStream:
    """One stream to the source: a writer task sends the turns' requests in
    order, a reader task hands each message to its turn's queue."""

    def __init__(self, call: object, on_end: Callable[[_SourceStream], None]) -> None:
        self._call = call
        self._on_end = on_end
        self.started = 0
        self.calls: dict[bytes, asyncio.Queue[bytes]] = {}
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks = (asyncio.create_task(self._write()), asyncio.create_task(self._read()))

    @property
    def open_to_calls(self) -> bool:
        return self.started < CALLS_PER_STREAM and len(self.calls) < CALLS_IN_PROGRESS

    def start(self, call: bytes, request: bytes) -> asyncio.Queue[bytes]:
        self.started += 1
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.calls[call] = queue
        self._outgoing.put_nowait(call + request)
        return queue

    def finish(self, call: bytes) -> None:
        self.calls.pop(call, None)
        if self.started >= CALLS_PER_STREAM and not self.calls:
            self._on_end(self)
            self._outgoing.put_nowait(None)

    async def _write(self) -> None:
        while (request := await self._outgoing.get()) is not None:
            await self._call.write(request)  # type: ignore[attr-defined]
        await self._call.done_writing()  # type: ignore[attr-defined]

    async def _read(self) -> None:
        async for message in self._call:  # type: ignore[attr-defined]
            queue = self.calls.get(message[:ID_BYTES])
            if queue is not None:
                queue.put_nowait(message[ID_BYTES:])


async def serve_relay(
    port: int, source: str, merge: Merge, *, multiplex: bool = False
) -> grpc.aio.Server:
    channel = grpc.aio.insecure_channel(source)
    stream = _SourceStreams(channel).turn if multiplex else channel.unary_stream(STREAM)

    async def converse(requests: AsyncIterator[bytes], context: Context) -> None:
        # One reader (the runtime's turn reading llmproxy), one writer (its
        # pump): what the reader queued while a write was in flight goes
        # out merged with the next write.
        outbox: Outbox[bytes, bytes] = Outbox(context.write, merge)
        try:
            async for request in requests:
                async for token in stream(request):
                    outbox.put(token)
                outbox.put(END_OF_TURN)
            await outbox.close()
        finally:
            outbox.cancel()

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Converse": grpc.stream_stream_rpc_method_handler(converse)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve_edge(port: int, relay: str) -> object:
    from websockets.asyncio.server import ServerConnection, serve

    channel = grpc.aio.insecure_channel(relay)
    converse = channel.stream_stream(CONVERSE)

    async def handle(websocket: ServerConnection) -> None:
        assert websocket.request is not None
        query = parse_qs(urlsplit(websocket.request.path).query)
        turn = b"%s %s" % (
            query.get("tokens", ["24"])[0].encode(),
            query.get("delay", ["0"])[0].encode(),
        )
        call = converse()

        async def upstream() -> None:
            async for message in websocket:
                frame = json.loads(message)
                if frame.get("type") == "user_message":
                    await call.write(turn)
            await call.done_writing()

        async def downstream() -> None:
            # one frame per gRPC message, as the gateway does
            seq = 0
            async for token in call:
                seq += 1
                text = token.decode()
                frame = {
                    "type": "assistant_message",
                    "seq": seq,
                    "token": text,
                    "content": text,
                    "is_final": not token,
                }
                await websocket.send(json.dumps(frame))

        try:
            # a client that goes away ends both directions; nothing to report
            with contextlib.suppress(Exception):
                async with asyncio.TaskGroup() as group:
                    group.create_task(upstream())
                    group.create_task(downstream())
        finally:
            call.cancel()

    return await serve(handle, "127.0.0.1", port, compression=None, max_size=None)


async def main(args: argparse.Namespace) -> None:
    merge: Merge = one_by_one if args.loose else merged
    if args.role == "source":
        server: object = await serve_source(args.port, merge)
    elif args.role == "relay":
        server = await serve_relay(args.port, args.upstream, merge, multiplex=args.multiplex)
    else:
        server = await serve_edge(args.port, args.upstream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    if isinstance(server, grpc.aio.Server):
        await server.stop(1)
    else:
        server.close()  # type: ignore[attr-defined]


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("source", "relay", "edge"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    parser.add_argument(
        "--loose", action="store_true", help="the relay as first shipped: asyncio, no merging"
    )
    parser.add_argument(
        "--multiplex", action="store_true", help="the turns on shared streams to the source"
    )
    args = parser.parse_args()
    environ = {**os.environ, "CODELAB_EVENT_LOOP": "asyncio" if args.loose else "uvloop"}
    process.run(main(args), environ)


if __name__ == "__main__":
    cli()
