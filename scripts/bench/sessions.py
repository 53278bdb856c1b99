"""Persistence benchmark (run by scripts/bench-sessions).

Starts llmproxy (offline model: 8-token replies, a 2,000-token window so the
prompt stops growing) and the runtime as real processes, then drives the
runtime's Converse stream over gRPC — no gateway, no auth: what is measured
is the runtime's turn path with its database writes.

1. One session, N turns in a row: latency (user message sent → turn_done
   read) of turns 3-7 against the last five. Cost per turn must not grow with
   the session: the ratio is the figure.
2. 50 sessions at once, each M short turns: turns/s.

Both on SQLite (WAL file) and PostgreSQL (a fresh database on 127.0.0.1:5432,
dropped afterwards), in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mesh import probe  # noqa: E402
from mesh.grpc_server import internal_metadata  # noqa: E402
from runtime.v1 import runtime_pb2, runtime_pb2_grpc  # noqa: E402

KEY = "bench-internal-key"
POSTGRES_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CONFIG = """
model_list:
  - model_name: offline
    litellm_params: {model: offline/echo, reply_tokens: 8}
    model_info: {max_input_tokens: 2000}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a service exited:\n{log.read_text()[-2000:]}")
        if probe.grpc_serving(f"127.0.0.1:{port}", timeout=1) is None:
            return
        time.sleep(0.1)
    raise SystemExit("a service did not become healthy")


@contextlib.contextmanager
def services(database_url: str, home: Path) -> Iterator[int]:
    """llmproxy + runtime on free ports; yields the runtime's port."""
    config = home / "litellm.yaml"
    config.write_text(CONFIG)
    llm_port, runtime_port = free_port(), free_port()
    base = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(ROOT)}
    runtime_env = {
        **base,
        "AGENT_RUNTIME__INTERNAL_API_KEY": KEY,
        "AGENT_RUNTIME__PORT": str(runtime_port),
        "AGENT_RUNTIME__LLM_PROXY_ADDRESS": f"127.0.0.1:{llm_port}",
        "AGENT_RUNTIME__DATABASE_URL": database_url,
        "AGENT_RUNTIME__LOG_LEVEL": "WARNING",
    }
    subprocess.run([sys.executable, "-m", "runtime", "migrate"], env=runtime_env, check=True)
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
                stdout=out,
                stderr=out,
            )
        )
        wait_serving(llm_port, procs[0], log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "runtime"], env=runtime_env, stdout=out, stderr=out
            )
        )
        wait_serving(runtime_port, procs[1], log)
    try:
        yield runtime_port
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


async def turns(
    stub: runtime_pb2_grpc.AgentRuntimeServiceStub, user: str, count: int
) -> list[float]:
    """Open a new session as ``user`` and run ``count`` turns; latency of each."""
    call = stub.Converse(metadata=internal_metadata(KEY, user=user))
    session_id = f"bench-{uuid.uuid4().hex[:12]}"
    await call.write(
        runtime_pb2.ConverseRequest(open=runtime_pb2.OpenSession(session_id=session_id))
    )
    await call.read()
    latencies = []
    for index in range(count):
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
        latencies.append(time.perf_counter() - started)
    await call.done_writing()
    return latencies


async def store_commits(database_url: str, steps: int) -> tuple[float, float]:
    """Median time of one turn's write (Store.commit) at steps 3-7 and the last five."""
    from mesh.database import create_engine
    from runtime.records import EventRecord, MessageRecord, Step
    from runtime.store import Store, migrate

    await migrate(database_url)
    engine = create_engine(database_url)
    store = Store(engine)
    await store.create_session("commit-bench", "bench", "coder")
    times = []
    try:
        for turn in range(steps):
            seq = turn * 10
            step = Step("commit-bench", seq + 10, "coder", "idle", turn * 2 + 2)
            step.messages = [
                MessageRecord(turn * 2, "user", f"turn {turn}"),
                MessageRecord(turn * 2 + 1, "assistant", "an answer of eight words in total"),
            ]
            chunks = [[seq + k, "word "] for k in range(1, 10)]
            step.events = [
                EventRecord(seq + 1, seq + 9, "text", {"chunks": chunks}),
                EventRecord(seq + 10, seq + 10, "turn_done", {"status": "completed"}),
            ]
            started = time.perf_counter()
            await store.commit(step)
            times.append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return statistics.median(times[2:7]), statistics.median(times[-5:])


async def measure(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, services(database_url, Path(tmp)) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = runtime_pb2_grpc.AgentRuntimeServiceStub(channel)
            await turns(stub, "warmup", 3)
            long_session = await turns(stub, "alice", args.turns)
            started = time.perf_counter()
            results = await asyncio.gather(
                *(turns(stub, f"user{i}", args.session_turns) for i in range(args.sessions))
            )
            elapsed = time.perf_counter() - started
    early = long_session[2:7]
    late = long_session[-5:]
    commit_early, commit_late = await store_commits(
        database_url.replace("runtime.db", "commits.db"), args.turns
    )
    all_turns = [t for result in results for t in result]
    return {
        "turn_5_ms": round(statistics.median(early) * 1000, 2),
        f"turn_{args.turns}_ms": round(statistics.median(late) * 1000, 2),
        "late_over_early": round(statistics.median(late) / statistics.median(early), 2),
        "commit_5_ms": round(commit_early * 1000, 2),
        f"commit_{args.turns}_ms": round(commit_late * 1000, 2),
        "concurrent_turns_per_s": round(len(all_turns) / elapsed, 1),
        "concurrent_turn_p50_ms": round(statistics.median(all_turns) * 1000, 1),
        "concurrent_turn_p99_ms": round(
            sorted(all_turns)[int(len(all_turns) * 0.99) - 1] * 1000, 1
        ),
    }


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_async_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    command = "scripts/bench-sessions " + " ".join(sys.argv[1:])
    rows = [
        f"| {name} | {r['turn_5_ms']} | {r[f'turn_{args.turns}_ms']} | "
        f"{r['late_over_early']} | {r['commit_5_ms']} / {r[f'commit_{args.turns}_ms']} | "
        f"{r['concurrent_turns_per_s']} | "
        f"{r['concurrent_turn_p50_ms']} / {r['concurrent_turn_p99_ms']} |"
        for name, r in results.items()
    ]
    pg_over_sqlite = ""
    if "PostgreSQL" in results and "SQLite" in results:
        ratio = (
            results["PostgreSQL"]["concurrent_turns_per_s"]
            / results["SQLite"]["concurrent_turns_per_s"]
        )
        pg_over_sqlite = f"\nPostgreSQL/SQLite turns/s ratio: {ratio:.2f}.\n"
    return (
        f"Command: `{command.strip()}` — {dt.date.today().isoformat()}, {machine()}.\n"
        f"One session of {args.turns} turns (median of turns 3-7 vs the last five), then "
        f"{args.sessions} concurrent sessions x {args.session_turns} turns. A turn's latency "
        "includes its model call, whose prompt grows until the model's 2,000-token window "
        "is full; the write column isolates the database: one turn's Store.commit at "
        "the start of a session and after as many turns.\n\n"
        f"| database | turn 5 (ms) | turn {args.turns} (ms) | late/early | "
        f"one turn's write at 5 / {args.turns} (ms) | "
        f"turns/s ({args.sessions} sessions) | turn p50 / p99 (ms) |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + pg_over_sqlite
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--session-turns", type=int, default=20)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--write", action="store_true", help="append to docs/BENCHMARKS.md")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = await measure(f"sqlite+aiosqlite:///{tmp}/runtime.db", args)
    if not args.no_postgres:
        async with fresh_postgres() as url:
            results["PostgreSQL"] = await measure(url, args)
    print(json.dumps(results, indent=2))
    text = report(args, results)
    print(text)
    if args.write:
        path = ROOT / "docs" / "BENCHMARKS.md"
        existing = path.read_text() if path.exists() else "# Benchmarks\n"
        marker = "## Sessions (persistence)"
        section = f"{marker}\n\n{text}"
        if marker in existing:
            head, _, tail = existing.partition(marker)
            rest = tail.split("\n## ", 1)
            existing = head + section + ("\n## " + rest[1] if len(rest) > 1 else "")
        else:
            existing = existing.rstrip() + "\n\n" + section
        path.write_text(existing)


if __name__ == "__main__":
    asyncio.run(main())
