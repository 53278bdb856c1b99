"""The bare relay: the smallest mesh that does what ours does per token.

Three servers, one per process, run by ``bench_mesh.py``::

    python relay.py source --port P                 # gRPC: a request in, N tokens out
    python relay.py relay  --port P --source ADDR   # gRPC bidi: re-emit the source's tokens
    python relay.py edge   --port P --relay ADDR    # websockets: one relay stream per connection

No proto: the wire type is raw bytes (generic handlers, no serializers). No
auth, no persistence, no coalescing: one gRPC message and one JSON text frame
per token, like the real mesh. Each token is ``w<i>@<monotonic_ns> `` so the
client can compute the latency added since the source emitted it
(CLOCK_MONOTONIC is one clock for every process on the machine).

The WebSocket connection's query carries the turn's shape
(``/ws/x?tokens=500&delay=0.01``); a ``user_message`` frame starts a turn.
The source sleeps ``delay`` before each token, as the offline model does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import grpc

SERVICE = "bench.Relay"
STREAM = f"/{SERVICE}/Stream"
CONVERSE = f"/{SERVICE}/Converse"
END_OF_TURN = b""


async def source_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    tokens, delay = request.split()
    pause = float(delay)
    for i in range(int(tokens)):
        if pause:
            await asyncio.sleep(pause)
        yield b"w%d@%d " % (i, time.monotonic_ns())


async def serve_source(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.unary_stream_rpc_method_handler(source_stream)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve_relay(port: int, source: str) -> grpc.aio.Server:
    channel = grpc.aio.insecure_channel(source)
    stream = channel.unary_stream(STREAM)

    async def converse(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            async for token in stream(request):
                yield token
            yield END_OF_TURN

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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("source", "relay", "edge"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args()
    if args.role == "source":
        server: object = await serve_source(args.port)
    elif args.role == "relay":
        server = await serve_relay(args.port, args.upstream)
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


if __name__ == "__main__":
    asyncio.run(main())
