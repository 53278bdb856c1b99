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

It also measures what starting a call costs: ``--calls`` unary-stream calls
of ``--per-call`` raw messages each, one after another, against as many
requests of as many messages (and an end marker) on one long-lived
bidirectional stream; the client's CPU is its own, the server's is read
from ``/proc``.

    .venv/bin/python scripts/bench/grpc_floor.py --environments [--rounds 3]

runs all of it in fresh interpreters, alternating grpcio's defaults
(``GRPC_EXPERIMENTS`` and ``GRPC_ENABLE_FORK_SUPPORT`` empty) with the
services' environment (:data:`mesh.process.ENVIRONMENT`), which gRPC reads
only as it loads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from bench_mesh import cpu_seconds  # this directory: the script's own

from mesh import process
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

RAW = "/bench.Floor/Stream"
CALL = "/bench.Floor/Call"
CALLS = "/bench.Floor/Calls"
END = b""
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

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        for _ in range(int(request)):
            await context.write(TEXT.encode())

    async def calls(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        async for request in requests:
            for _ in range(int(request)):
                await context.write(TEXT.encode())
            await context.write(END)

    async def main() -> None:
        server = grpc.aio.server()
        runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(Typed(count, report), server)
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Stream": grpc.stream_stream_rpc_method_handler(raw),
            "Call": grpc.unary_stream_rpc_method_handler(call),
            "Calls": grpc.stream_stream_rpc_method_handler(calls),
        }
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("bench.Floor", handlers)]
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


async def start_calls(port: int, server: int, calls: int, per_call: int) -> dict[str, float]:
    """CPU per call, client and server: a call each, then one stream for all."""
    request = str(per_call).encode()
    spent: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        each: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(CALL)
        one: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(CALLS)
        for _ in range(3):  # warm up: the connection, the first calls
            async for _message in each(request):
                pass
        mine, theirs = cpu(), cpu_seconds(server)
        for _ in range(calls):
            async for _message in each(request):
                pass
        spent["each: client"], spent["each: server"] = cpu() - mine, cpu_seconds(server) - theirs
        stream = one()
        mine, theirs = cpu(), cpu_seconds(server)
        for _ in range(calls):
            await stream.write(request)
            while await stream.read() != END:
                pass
        await stream.done_writing()
        spent["one: client"], spent["one: server"] = cpu() - mine, cpu_seconds(server) - theirs
    return {key: value / calls for key, value in spent.items()}


def measure(messages: int, calls: int, per_call: int) -> dict[str, float]:
    """Every figure, in µs of CPU: per message written and read, per call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(port, messages, theirs), daemon=True)
    server.start()
    assert server.pid is not None
    try:
        assert ours.recv()[0] == "ready"
        read = process.run(read_all(port, messages), os.environ)
        written = dict(ours.recv() for _ in range(2))
        started = process.run(start_calls(port, server.pid, calls, per_call), os.environ)
    finally:
        server.terminate()
    figures = {f"{name}: write": written[name] / messages * 1e6 for name in ("typed", "raw")}
    figures |= {f"{name}: read": read[name] / messages * 1e6 for name in ("typed", "raw")}
    figures |= {key: value * 1e6 for key, value in started.items()}
    return figures


LABELS = {
    "typed: write": "server write, a runtime.v1 ConverseResponse (text delta)",
    "typed: read": "client read, the same",
    "raw: write": "server write, raw bytes",
    "raw: read": "client read, raw bytes",
    "each: client": "a unary-stream call each: client, per call",
    "each: server": "the same: server, per call",
    "one: client": "one bidi stream, a request and an end marker each: client, per call",
    "one: server": "the same: server, per call",
}


def table(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> str:
    """The figures of each environment, as ranges over the runs."""
    names = list(runs)
    lines = [
        f"{args.messages:,} messages per stream, one stream at a time; {args.calls:,} calls of "
        f"{args.per_call} messages; loopback",
        "",
        "| µs of CPU | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label in LABELS.items():
        cells = []
        for name in names:
            values = sorted(run[key] for run in runs[name])
            low, high = values[0], values[-1]
            same = round(low) == round(high)
            cells.append(f"{low:.0f}" if same else f"{low:.0f}–{high:.0f}")  # noqa: RUF001
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ENVIRONMENTS: dict[str, dict[str, str]] = {
    "grpcio's defaults": {name: "" for name in process.ENVIRONMENT if name.startswith("GRPC_")},
    "the services' (mesh.process.ENVIRONMENT)": dict(process.ENVIRONMENT),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench/grpc_floor.py")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--per-call", type=int, default=10)
    parser.add_argument(
        "--environments", action="store_true", help="grpcio's defaults vs the services'"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --environments")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.environments:
        figures = measure(args.messages, args.calls, args.per_call)
        if args.json:
            print(json.dumps(figures))
        else:
            print(table(args, {"this process's environment": [figures]}))
        return
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ENVIRONMENTS}
    for _ in range(args.rounds):
        for name, environment in ENVIRONMENTS.items():
            child = [sys.executable, __file__, "--json", f"--messages={args.messages}"]
            child += [f"--calls={args.calls}", f"--per-call={args.per_call}"]
            done = subprocess.run(
                child, env={**os.environ, **environment}, capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(done.stderr)
            runs[name].append(json.loads(done.stdout.splitlines()[-1]))
    print(f"{args.rounds} runs each, alternating")
    print(table(args, runs))


if __name__ == "__main__":
    main()
