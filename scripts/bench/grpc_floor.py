"""What one gRPC message costs in Python, the floor under every hop of the mesh.

    .venv/bin/python scripts/bench/grpc_floor.py [--messages 30000]

Two processes on loopback, both on the mesh's event loop
(:func:`mesh.process.run`, uvloop): a server that writes ``--messages``
messages down one stream as fast as its ``context.write`` returns, and a
client that reads them one ``read()`` at a time, as the gateway reads the
runtime's stream and the runtime reads the proxy's. Each side reports its
own CPU (``getrusage``) per message, for the runtime's own ``Converse``
stream with a text delta in each message and for raw bytes through a
generic handler (no protobuf), so the difference is what protobuf adds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from mesh import process
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

RAW = "/bench.Floor/Stream"
TEXT = "w1@1234567890123 "


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Typed(runtime_pb2_grpc.AgentRuntimeServiceServicer):
    def __init__(self, count: int, report: Connection) -> None:
        self.count, self.report = count, report

    async def Converse(  # type: ignore[override]
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await context.read()
        started = cpu()
        for seq in range(self.count):
            response = runtime_pb2.ConverseResponse(seq=seq)
            response.assistant_delta.text = TEXT
            await context.write(response)
        self.report.send(("typed", cpu() - started))


def serve(port: int, count: int, report: Connection) -> None:
    async def raw(_: Any, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        await context.read()
        started = cpu()
        for _ in range(count):
            await context.write(TEXT.encode())
        report.send(("raw", cpu() - started))

    async def main() -> None:
        server = grpc.aio.server()
        runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(Typed(count, report), server)
        handler = grpc.stream_stream_rpc_method_handler(raw)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("bench.Floor", {"Stream": handler})]
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        report.send(("ready", 0.0))
        await server.wait_for_termination()

    process.run(main(), os.environ)


async def read_all(port: int, count: int) -> dict[str, float]:
    spent: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        calls: dict[str, Any] = {
            "typed": runtime_pb2_grpc.AgentRuntimeServiceStub(channel).Converse(),
            "raw": channel.stream_stream(RAW)(),
        }
        for name, call in calls.items():
            await call.write(runtime_pb2.ConverseRequest() if name == "typed" else b"go")
            started = cpu()
            for _ in range(count):
                await call.read()
            spent[name] = cpu() - started
            call.cancel()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench/grpc_floor.py")
    parser.add_argument("--messages", type=int, default=30_000)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(port, args.messages, theirs), daemon=True)
    server.start()
    try:
        assert ours.recv()[0] == "ready"
        read = process.run(read_all(port, args.messages), os.environ)
        written = dict(ours.recv() for _ in range(2))
    finally:
        server.terminate()
    print(f"{args.messages:,} messages per stream, one stream at a time, loopback")
    print("| | server write, CPU per message | client read, CPU per message |")
    print("|---|---|---|")
    for name in ("typed", "raw"):
        label = "runtime.v1 ConverseResponse (text delta)" if name == "typed" else "raw bytes"
        per_write = written[name] / args.messages * 1e6
        per_read = read[name] / args.messages * 1e6
        print(f"| {label} | {per_write:.0f} µs | {per_read:.0f} µs |")


if __name__ == "__main__":
    main()
