"""What the runtime's store spends on the reads and writes around a turn
(run by scripts/bench-store), on this checkout and another one.

One process per checkout, the runtime's own :class:`Store` on a fresh
SQLite file (or, with ``--postgres``, a fresh PostgreSQL database),
``--count`` of each, one after another (a light load: every statement wakes
an idle loop), CPU of the whole process (SQLite's threads included; not the
PostgreSQL server's) per operation:

- **owner read**: a turn's read of its owner's approval rules and
  instructions (``store.owner_reads.get``);
- **session open**: a new session created, its lease taken and it loaded,
  as the runtime opens one (``create_session``, ``leases.acquire``, ``load``);
- **session reopen**: the lease of an existing session taken by another
  replica and the session loaded;
- **tool call**: a turn step carrying one tool call committed when the call
  is offered, and again when it is answered;
- **step in a batch**: ten sessions commit a step each at once (a message
  and an event), as under load, where the group commit writes them
  together; per step.

``--baseline DIR`` measures another checkout (e.g. the commit before a
change) the same way, in processes alternating with this one's ``--runs``
times, and prints each figure's ratio this / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from checkouts import measured_in  # noqa: E402

MEASURES = ("owner_read", "session_open", "session_reopen", "tool_call", "step_in_a_batch")


@contextlib.asynccontextmanager
async def database(postgres: str | None) -> AsyncIterator[str]:
    """A fresh database: a SQLite file, or one made on the ``postgres`` server
    (a URL of its ``postgres`` database) and dropped after."""
    if postgres is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/store.db"
        return
    import asyncpg

    server = postgres.replace("postgresql+asyncpg://", "postgresql://")
    name = f"codelab_bench_store_{os.getpid()}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def measure(count: int, postgres: str | None) -> dict[str, float]:
    from mesh.database import create_engine
    from runtime.records import CallRecord, EventRecord, MessageRecord, Step
    from runtime.store import Store, migrate

    spent: dict[str, float] = {}
    async with database(postgres) as url:
        await migrate(url)
        engine = create_engine(url)
        store = Store(engine)
        try:
            await store.owner_reads.get("warm-up")
            cpu = time.process_time()
            for _ in range(count):
                await store.owner_reads.get("bench")
            spent["owner_read"] = time.process_time() - cpu

            ids = [f"s{n}" for n in range(count)]
            cpu = time.process_time()
            for session_id in ids:
                await store.create_session(session_id, "bench", "coder")
                await store.leases.acquire(session_id, "r1", 60.0, "127.0.0.1:1")
                await store.load(session_id)
            spent["session_open"] = time.process_time() - cpu

            cpu = time.process_time()
            for session_id in ids:
                await store.leases.acquire(session_id, "r2", 60.0, "127.0.0.1:2")
                await store.load(session_id)
            spent["session_reopen"] = time.process_time() - cpu

            cpu = time.process_time()
            for number, session_id in enumerate(ids):
                call = CallRecord(
                    f"call_{number:024d}", "read_file", "coder", "offered", {"path": "a.py"}
                )
                await store.commit(Step(session_id, 1, "coder", "waiting", 0, calls=[call]))
                answered = replace(call, status="completed", final_arguments={"path": "a.py"})
                await store.commit(Step(session_id, 2, "coder", "idle", 0, calls=[answered]))
            spent["tool_call"] = time.process_time() - cpu

            def step(session_id: str, seq: int) -> Step:
                return Step(
                    session_id,
                    seq,
                    "coder",
                    "idle",
                    seq,
                    events=[EventRecord(seq, seq, "turn_done", {})],
                    messages=[MessageRecord(seq, "assistant", "done")],
                )

            groups = [ids[n : n + 10] for n in range(0, count - count % 10, 10)]
            cpu = time.process_time()
            for group in groups:
                await asyncio.gather(*(store.commit(step(session_id, 3)) for session_id in group))
            # per step, whatever count is: the figures are divided by it below
            spent["step_in_a_batch"] = (
                (time.process_time() - cpu) * count / max(1, 10 * len(groups))
            )
        finally:
            await engine.dispose()
    return {name: seconds / count * 1e6 for name, seconds in spent.items()}


def run_checkout(root: Path, count: int, postgres: str | None) -> dict[str, float]:
    where = ["--postgres", postgres] if postgres else []
    figures: dict[str, float] = measured_in(HERE, root, "--count", str(count), *where)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="operations of each kind")
    parser.add_argument("--runs", type=int, default=3, help="processes of each checkout")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    parser.add_argument(
        "--postgres",
        help="measure on PostgreSQL: a URL of the server's postgres database "
        "(postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); default SQLite",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        print(json.dumps(uvloop.run(measure(args.count, args.postgres))))
        return
    runs: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
    for _ in range(args.runs):
        if args.baseline:
            runs["baseline"].append(
                run_checkout(args.baseline.resolve(), args.count, args.postgres)
            )
        runs["this"].append(run_checkout(HERE.parents[2], args.count, args.postgres))
    where = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"CPU per operation on {where}, µs ({args.count} of each per process, "
        f"{args.runs} processes; the database server's own CPU not counted):"
    )
    for name in MEASURES:
        line: dict[str, Any] = {
            who: [round(r[name]) for r in results] for who, results in runs.items() if results
        }
        text = "; ".join(f"{who} {', '.join(map(str, values))}" for who, values in line.items())
        if runs["baseline"]:
            ratio = statistics.median(r[name] for r in runs["this"]) / statistics.median(
                r[name] for r in runs["baseline"]
            )
            text += f"; this / baseline {ratio:.2f}"
        print(f"  {name}: {text}")


if __name__ == "__main__":
    main()
