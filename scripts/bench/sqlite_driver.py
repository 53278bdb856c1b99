"""The runtime's store on SQLAlchemy's aiosqlite adapter and on ours (run by
scripts/bench-sqlite).

One process, one SQLite file per round, the runtime's own :class:`Store`:
``--sessions`` sessions take short turns one after another, each turn what
the runtime asks of its store in a short turn (the session's row, its
owner's rules and instructions, the turn's write as one
:meth:`Store.commit` of two messages and two events)
plus, every ``--load-every`` turns, a session's history read back. Rounds
alternate between the stock adapter (``sqlalchemy.dialects.sqlite.
aiosqlite``) and :mod:`mesh.sqlite_driver`, ``--rounds`` of each, so both
meet the same machine; reported per turn: the process's CPU (every thread:
SQLite's threads do the database work) and wall time, and the trips to
SQLite's threads, with the ratio ours / stock.

Then, on our adapter, what a resting session's wake costs a message: its
history of ``--history`` messages (a tool turn's four: question, tool call,
tool answer, reply) read back as the waking session reads it
(:meth:`Store.history_columns`, :func:`runtime.state.message_from_columns`)
against the full records the REST views read (:meth:`Store.history`,
:func:`runtime.state.message_from_record`), alternating, ``--rounds`` each.

One turn at a time is the light-load case, where every trip wakes an idle
event loop; under a heavy load the loop is already awake and a trip costs
less (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite
import uvloop
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mesh.database import create_engine  # noqa: E402
from runtime.records import EventRecord, MessageRecord, Step  # noqa: E402
from runtime.state import message_from_columns, message_from_record  # noqa: E402
from runtime.store import Store, migrate  # noqa: E402

trips: collections.Counter[str] = collections.Counter()


def count_trips() -> None:
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips["all"] += 1
        return await real(self, fn, *args, **kwargs)

    aiosqlite.Connection._execute = counting  # type: ignore[method-assign]


def step(session_id: str, turn: int) -> Step:
    seq = turn * 10
    done = Step(session_id, seq + 10, "coder", "idle", turn * 2 + 2)
    done.messages = [
        MessageRecord(turn * 2, "user", f"turn {turn}"),
        MessageRecord(turn * 2 + 1, "assistant", "an answer of eight words in total"),
    ]
    chunks = [[seq + k, "word "] for k in range(1, 10)]
    done.events = [
        EventRecord(seq + 1, seq + 9, "text", {"chunks": chunks}),
        EventRecord(seq + 10, seq + 10, "turn_done", {"status": "completed"}),
    ]
    return done


async def one_round(stock: bool, args: argparse.Namespace, home: Path) -> dict[str, float]:
    """A fresh database file (its directory made by create_engine); the
    sessions' turns on it; CPU, wall and trips per turn."""
    url = f"sqlite+aiosqlite:///{home / 'store.db'}"
    await migrate(url)
    options = {"module": SQLiteDialect_aiosqlite.import_dbapi()} if stock else {}
    engine = create_engine(url, **options)
    store = Store(engine)
    sessions = [f"s{i}" for i in range(args.sessions)]
    try:
        for session_id in sessions:
            await store.create_session(session_id, "bench", "coder")
        turns = 0
        trips.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        for turn in range(args.turns):
            for session_id in sessions:
                await store.get_session(session_id)
                await store.owner_reads.get("bench")
                await store.commit(step(session_id, turn))
                turns += 1
                if turns % args.load_every == 0:
                    await store.history(session_id)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await engine.dispose()
    return {
        "cpu_us_per_turn": cpu / turns * 1e6,
        "wall_us_per_turn": wall / turns * 1e6,
        "trips_per_turn": trips["all"] / turns,
    }


async def recall(args: argparse.Namespace, home: Path) -> dict[str, list[float]]:
    """CPU a message of reading a history back, full records against the columns."""
    url = f"sqlite+aiosqlite:///{home / 'recall.db'}"
    await migrate(url)
    engine = create_engine(url)
    store = Store(engine)
    await store.create_session("s", "bench", "coder")
    for turn in range(args.history // 4):
        call_id = f"call_{turn:020d}"
        done = Step("s", turn * 10 + 10, "coder", "idle", turn * 4 + 4)
        done.messages = [
            MessageRecord(turn * 4, "user", "read the app"),
            MessageRecord(
                turn * 4 + 1,
                "assistant",
                "",
                tool_calls=[
                    {"call_id": call_id, "name": "read_file", "arguments_json": '{"path": "a.py"}'}
                ],
            ),
            MessageRecord(turn * 4 + 2, "tool", '{"content": "x = 1\\n"}', tool_call_id=call_id),
            MessageRecord(turn * 4 + 3, "assistant", "a.py sets x to 1; nothing else is in it."),
        ]
        done.events = [EventRecord(turn * 10 + 10, turn * 10 + 10, "turn_done", {})]
        await store.commit(done)
    results: dict[str, list[float]] = {"records": [], "columns": []}
    try:
        for _ in range(args.rounds):
            cpu = time.process_time()
            for _ in range(10):
                by_records = [message_from_record(r) for r in await store.history("s")]
            results["records"].append((time.process_time() - cpu) / 10 / args.history * 1e6)
            cpu = time.process_time()
            for _ in range(10):
                by_columns = [
                    message_from_columns(*row[:5]) for row in await store.history_columns("s")
                ]
            results["columns"].append((time.process_time() - cpu) / 10 / args.history * 1e6)
            assert by_columns == by_records
    finally:
        await engine.dispose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each, alternating")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=50, help="turns per session per round")
    parser.add_argument("--load-every", type=int, default=10, help="a history read per N turns")
    parser.add_argument("--history", type=int, default=1000, help="messages read back")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    count_trips()
    results: dict[str, list[dict[str, float]]] = {"stock": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for name in ("stock", "ours"):
                home = Path(tmp) / f"{name}-{n}"
                results[name].append(await one_round(name == "stock", args, home))
        read_back = await recall(args, Path(tmp))
    report: dict[str, Any] = {"command": " ".join(["scripts/bench-sqlite", *sys.argv[1:]])}
    for measure in ("cpu_us_per_turn", "wall_us_per_turn", "trips_per_turn"):
        stock = [r[measure] for r in results["stock"]]
        ours = [r[measure] for r in results["ours"]]
        report[measure] = {
            "stock": [round(v, 1) for v in stock],
            "ours": [round(v, 1) for v in ours],
            "ours_over_stock": round(statistics.median(ours) / statistics.median(stock), 3),
        }
        print(
            f"{measure}: stock {statistics.median(stock):.1f}, ours "
            f"{statistics.median(ours):.1f} (medians of {args.rounds}): "
            f"ours / stock {report[measure]['ours_over_stock']}",
            flush=True,
        )
    records, columns = read_back["records"], read_back["columns"]
    report["recall_cpu_us_per_message"] = {
        "records": [round(v, 2) for v in records],
        "columns": [round(v, 2) for v in columns],
        "columns_over_records": round(statistics.median(columns) / statistics.median(records), 3),
    }
    print(
        f"recall_cpu_us_per_message ({args.history} messages): records "
        f"{statistics.median(records):.1f}, columns {statistics.median(columns):.1f} "
        f"(medians of {args.rounds}): columns / records "
        f"{report['recall_cpu_us_per_message']['columns_over_records']}",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    uvloop.run(main())
