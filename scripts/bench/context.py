"""Per-turn cost of a long session (run by scripts/bench-context).

Starts llmproxy (offline model, 24-word replies, a context window of
``--window`` tokens: by default the shipped 32,768) and the runtime as real
processes on SQLite, and runs one session of ``--turns`` short turns over
the runtime's Converse stream. Around every turn it reads each process's
CPU time (the sum of its threads' ``/proc/<pid>/task/*/schedstat``, in
nanoseconds), so the figures are CPU per turn, not latency alone.

The history outgrows the window after ~600 turns, so turn 1000's prompt is
as large as the window allows. Reported: the median of turns 3-12 ("turn
5") and of the last ten ("turn N"), and their ratio, for latency, runtime
CPU and llmproxy CPU.

``--baseline DIR`` runs the same session with the services of another
checkout (e.g. main) first, in the same invocation, so a change is
compared with what it replaces on the same machine and load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sessions import free_port, machine  # noqa: E402

from mesh import probe  # noqa: E402
from mesh.grpc_server import internal_metadata  # noqa: E402
from mesh.process import ENVIRONMENT as SERVICE_ENVIRONMENT  # noqa: E402
from runtime.v1 import runtime_pb2, runtime_pb2_grpc  # noqa: E402

KEY = "bench-internal-key"


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for a service to serve (up to five minutes: a loaded machine
    imports LiteLLM slowly)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a service exited:\n{log.read_text()[-2000:]}")
        if probe.grpc_serving(f"127.0.0.1:{port}", timeout=1) is None:
            return
        time.sleep(0.2)
    raise SystemExit("a service did not become healthy")


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


@contextlib.contextmanager
def services(
    root: Path, home: Path, window: int, condense: int | None
) -> Iterator[tuple[int, int, int]]:
    """llmproxy + runtime from ``root`` on free ports: (runtime port, runtime pid, proxy pid)."""
    config = home / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: offline\n"
        "    litellm_params: {model: offline/echo, reply_tokens: 24}\n"
        f"    model_info: {{max_input_tokens: {window}, supports_function_calling: true}}\n"
    )
    llm_port, runtime_port = free_port(), free_port()
    base = {
        **SERVICE_ENVIRONMENT,  # as scripts/up starts the services
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(root),
    }
    runtime_env = {
        **base,
        "AGENT_RUNTIME__INTERNAL_API_KEY": KEY,
        "AGENT_RUNTIME__PORT": str(runtime_port),
        "AGENT_RUNTIME__LLM_PROXY_ADDRESS": f"127.0.0.1:{llm_port}",
        "AGENT_RUNTIME__DATABASE_URL": f"sqlite+aiosqlite:///{home}/runtime.db",
        "AGENT_RUNTIME__LOG_LEVEL": "WARNING",
    }
    if condense is not None:
        runtime_env["AGENT_RUNTIME__CONDENSE_THRESHOLD"] = str(condense)
    subprocess.run(
        [sys.executable, "-m", "runtime", "migrate"], env=runtime_env, cwd=root, check=True
    )
    log = home / "services.log"
    procs = []
    with log.open("ab") as out:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llmproxy"],
                env={
                    **base,
                    "LLM_PROXY__INTERNAL_API_KEY": KEY,
                    "LLM_PROXY__PORT": str(llm_port),
                    "LLM_PROXY__CONFIG": str(config),
                    "LLM_PROXY__LOG_LEVEL": "WARNING",
                },
                cwd=root,
                stdout=out,
                stderr=out,
            )
        )
        wait_serving(llm_port, procs[0], log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "runtime"],
                env=runtime_env,
                cwd=root,
                stdout=out,
                stderr=out,
            )
        )
        wait_serving(runtime_port, procs[1], log)
    try:
        yield runtime_port, procs[1].pid, procs[0].pid
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


async def session(port: int, pids: tuple[int, int], count: int) -> list[tuple[float, int, int]]:
    """One new session of ``count`` turns: (latency s, runtime CPU ns, proxy CPU ns) of each."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = runtime_pb2_grpc.AgentRuntimeServiceStub(channel)
        call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
        await call.write(
            runtime_pb2.ConverseRequest(
                open=runtime_pb2.OpenSession(session_id=f"bench-{uuid.uuid4().hex[:12]}")
            )
        )
        await call.read()
        measured = []
        for index in range(count):
            runtime_before, proxy_before = cpu_ns(pids[0]), cpu_ns(pids[1])
            started = time.perf_counter()
            await call.write(
                runtime_pb2.ConverseRequest(
                    user_message=runtime_pb2.UserMessage(content=f"turn {index} of the benchmark")
                )
            )
            while True:
                response = await call.read()
                if response.HasField("turn_done"):
                    break
                if response.HasField("error"):
                    raise SystemExit(f"runtime error: {response.error.message}")
            elapsed = time.perf_counter() - started
            measured.append(
                (elapsed, cpu_ns(pids[0]) - runtime_before, cpu_ns(pids[1]) - proxy_before)
            )
        await call.done_writing()
    return measured


def summary(turns: list[tuple[float, int, int]]) -> dict[str, float]:
    early, late = turns[2:12], turns[-10:]
    figures: dict[str, float] = {}
    columns = ((0, "latency", 1e3), (1, "runtime_cpu", 1e-6), (2, "proxy_cpu", 1e-6))
    for column, name, scale in columns:
        first = statistics.median(t[column] for t in early) * scale
        last = statistics.median(t[column] for t in late) * scale
        figures[f"{name}_5_ms"] = round(first, 2)
        figures[f"{name}_n_ms"] = round(last, 2)
        figures[f"{name}_ratio"] = round(last / first, 2) if first else 0.0
    return figures


async def measure(root: Path, args: argparse.Namespace) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        services(root, Path(tmp), args.window, args.condense_threshold) as found,
    ):
        port, runtime_pid, proxy_pid = found
        await session(port, (runtime_pid, proxy_pid), 3)  # warm-up
        return summary(await session(port, (runtime_pid, proxy_pid), args.turns))


def report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> str:
    command = "scripts/bench-context " + " ".join(sys.argv[1:])
    rows = []
    for name, r in results.items():
        cells = [
            f"{r[f'{k}_5_ms']} → {r[f'{k}_n_ms']} (x{r[f'{k}_ratio']})"
            for k in ("latency", "runtime_cpu", "proxy_cpu")
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return (
        f"Command: `{command.strip()}` — {dt.date.today().isoformat()}, {machine()}.\n"
        f"One session of {args.turns} short turns on SQLite, offline model (24-word replies), "
        f"a {args.window:,}-token window"
        + (
            f", condensing at {args.condense_threshold}%"
            if args.condense_threshold is not None
            else ""
        )
        + f"; turn 5 = median of turns 3-12, turn {args.turns} = "
        "median of the last ten; CPU from each process's threads' schedstat.\n\n"
        f"| services | latency (ms) turn 5 → {args.turns} | runtime CPU (ms) | "
        "llmproxy CPU (ms) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32768)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure first")
    parser.add_argument(
        "--condense-threshold",
        type=int,
        help="the runtime's AGENT_RUNTIME__CONDENSE_THRESHOLD (0: the prompt fills the window)",
    )
    args = parser.parse_args()
    if args.turns < 22:
        parser.error("--turns must be at least 22")
    results: dict[str, dict[str, Any]] = {}
    if args.baseline is not None:
        results[f"baseline ({args.baseline})"] = await measure(args.baseline.resolve(), args)
    results[f"this checkout ({ROOT.name})"] = await measure(ROOT, args)
    print(json.dumps(results, indent=2))
    print(report(args, results))


if __name__ == "__main__":
    asyncio.run(main())
