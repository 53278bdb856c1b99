"""``scripts/bench-mesh --soak``: many sessions, a turn with a tool call every few seconds each.

The mesh (``bench_mesh.mesh``: devstack, the offline model) serves
``--sessions`` WebSocket sessions for ``--duration`` seconds. Each session
switches to the ``ask`` agent and, once all are connected, all take one turn
at once (the warm-up, not measured); then, until the time is up, waits a
uniform 0..2 x ``--interval`` seconds and sends ``read soak/<n>.txt``: the
offline model answers with a ``read_file`` tool call, the session answers it
with a ``tool_result`` as the IDE would, and the model summarises the result
in text. A turn counts as an error when it brings an ``error`` frame, ends
with a status other than ``completed``, takes longer than ``--turn-
timeout``, or its connection drops.

Reported: errors (must be 0, with the first few), per ``--window`` seconds
the turns started, their time to the first output (the ``tool_call``) and to
the first text token after the tool round trip, p50/p99; every mesh
process's RSS when all sessions are connected and warmed up, at the end of
each window, and when the last turn is done (growth from the first to the
last must stay within 10%). The warm-up puts what a process does once (lazy
imports, connection pools filling, first calls over each channel) and its
high-water mark of turns in flight (every session's at once; the allocators
keep what a peak took) before the first reading, so the growth is what the
soak's turns leave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect

RSS_TOLERANCE = 0.10
"""Growth of a process's RSS from start to end that still counts as flat."""
CONNECT_PARALLEL = 64
"""Sessions connecting and warming up at once."""


class MeshLike(Protocol):
    url: str
    token: str
    pids: dict[str, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's flags (``scripts/bench-mesh --soak ...``)."""
    soak = parser.add_argument_group("soak (--soak)")
    soak.add_argument("--soak", action="store_true", help="run the soak instead of the benchmark")
    soak.add_argument("--sessions", type=int, default=1000, help="concurrent sessions (1000)")
    soak.add_argument("--duration", type=float, default=300.0, help="seconds of turns (300)")
    soak.add_argument(
        "--interval", type=float, default=5.0, help="mean seconds between a session's turns (5)"
    )
    soak.add_argument("--window", type=float, default=30.0, help="seconds per report window (30)")
    soak.add_argument(
        "--turn-timeout", type=float, default=120.0, help="seconds a turn may take (120)"
    )
    soak.add_argument("--database-url", default="", help="runtime database (default: SQLite)")


@dataclass
class SoakTurn:
    sent: float  # monotonic seconds
    first_output: float | None = None  # the tool_call (or any text before it)
    first_text: float | None = None  # the first text token after the tool round trip
    ended: float | None = None
    tool_calls: int = 0


@dataclass
class SoakResult:
    turns: list[SoakTurn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    connected: int = 0
    failed_sessions: set[int] = field(default_factory=set)

    def fail(self, index: int, message: str) -> None:
        self.error_count += 1
        self.failed_sessions.add(index)
        if len(self.errors) < 10:
            self.errors.append(message[:300])


class TurnFailed(Exception):
    pass


def tool_result(frame: dict[str, Any]) -> dict[str, Any]:
    """What an IDE answers to a ``read_file`` call (any other tool: a short result)."""
    arguments = frame.get("arguments") or {}
    if frame.get("tool_name") == "read_file":
        path = str(arguments.get("path", ""))
        result: dict[str, Any] = {"path": path, "content": f"# {path}\nsoak = True\n"}
    else:
        result = {"ok": True}
    return {"type": "tool_result", "call_id": frame["call_id"], "result": result}


async def take_turn(ws: ClientConnection, content: str) -> SoakTurn:
    """One turn: send, answer its tool calls, read until the final frame.

    Raises TurnFailed for an error frame or a final status other than completed.
    """
    turn = SoakTurn(sent=time.monotonic())
    await ws.send(json.dumps({"type": "user_message", "content": content, "role": "user"}))
    while True:
        frame = json.loads(await ws.recv())
        now = time.monotonic()
        kind = frame.get("type")
        if kind == "tool_call":
            turn.tool_calls += 1
            if turn.first_output is None:
                turn.first_output = now
            await ws.send(json.dumps(tool_result(frame)))
        elif kind == "assistant_message":
            if frame.get("is_final"):
                turn.ended = now
                status = (frame.get("metadata") or {}).get("status")
                if status != "completed":
                    raise TurnFailed(f"turn ended {status}")
                return turn
            if turn.first_output is None:
                turn.first_output = now
            if turn.first_text is None and turn.tool_calls:
                turn.first_text = now
        elif kind == "error":
            raise TurnFailed(f"error frame {frame.get('code')}: {frame.get('content')}")


async def soak_sessions(
    url: str,
    token: str,
    *,
    sessions: int,
    duration: float,
    interval: float,
    turn_timeout: float,
    prefix: str,
    on_ready: Callable[[], None],
    window_s: float | None = None,
) -> tuple[SoakResult, float, float]:
    """Run the soak; returns the result and the monotonic start and end of the turns.

    ``on_ready`` is called once every session is connected and warmed up,
    just before the turns start, every ``window_s`` seconds of turns (if
    given), and again when the last turn has ended (connections still open).
    """
    result = SoakResult()
    headers = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(CONNECT_PARALLEL)
    connected = asyncio.Barrier(sessions)
    ready = asyncio.Barrier(sessions + 1)
    finished = asyncio.Event()
    stopped = asyncio.Event()
    window: dict[str, float] = {}
    running = [sessions]

    def stop_one() -> None:
        running[0] -= 1
        if running[0] == 0:
            stopped.set()

    async def one(index: int) -> None:
        ws: ClientConnection | None = None
        warmed = False
        try:
            async with gate:
                ws = await connect(
                    f"{url}/ws/{prefix}-{index}",
                    additional_headers=headers,
                    compression=None,
                    max_size=None,
                    open_timeout=120,
                    ping_interval=None,
                )
                await ws.send(
                    json.dumps(
                        {
                            "type": "switch_agent",
                            "agent_type": "ask",
                            "content": "soak",
                            "reason": "soak",
                        }
                    )
                )
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), turn_timeout))
                    if frame.get("type") == "assistant_message" and frame.get("is_final"):
                        break
        except Exception as exc:
            result.fail(index, f"session {index} connect: {type(exc).__name__}: {exc}")
            ws = None
        # The warm-up turns start together: the most turns the soak can have
        # in flight at once are in flight once before the first RSS reading.
        await connected.wait()
        if ws is not None:
            try:
                async with asyncio.timeout(turn_timeout):
                    await take_turn(ws, f"read soak/{index}.txt")
                result.connected += 1
                warmed = True
            except Exception as exc:
                result.fail(index, f"session {index} warm-up: {type(exc).__name__}: {exc}")
        if ws is None or not warmed:
            await ready.wait()
            stop_one()
            if ws is not None:
                await ws.close()
            return
        await ready.wait()
        pauses = random.Random(index)  # noqa: S311 - the same pauses every run
        try:
            while True:
                await asyncio.sleep(pauses.uniform(0, 2 * interval))
                if time.monotonic() >= window["end"]:
                    break
                try:
                    async with asyncio.timeout(turn_timeout):
                        turn = await take_turn(ws, f"read soak/{index}.txt")
                except TimeoutError:
                    result.fail(index, f"session {index}: no final frame within {turn_timeout} s")
                    result.turns.append(SoakTurn(sent=time.monotonic() - turn_timeout))
                    break  # the connection's state is unknown: stop this session
                except TurnFailed as exc:
                    result.fail(index, f"session {index}: {exc}")
                    continue
                result.turns.append(turn)
        except Exception as exc:
            result.fail(index, f"session {index}: {type(exc).__name__}: {exc}")
        finally:
            stop_one()
            await finished.wait()
            await ws.close()

    tasks = [asyncio.create_task(one(i)) for i in range(sessions)]
    await ready.wait()
    on_ready()
    started = time.monotonic()
    window["end"] = started + duration

    async def every_window() -> None:
        while window_s:
            await asyncio.sleep(window_s)
            on_ready()

    sampler = asyncio.create_task(every_window())
    # Each session stops after its current turn, then waits here so the end
    # RSS is taken with every connection still open, as the start one was.
    try:
        await asyncio.wait_for(stopped.wait(), duration + 2 * interval + turn_timeout + 30)
    finally:
        sampler.cancel()
    ended = time.monotonic()
    on_ready()
    finished.set()
    await asyncio.gather(*tasks)
    return result, started, ended


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 1)


def windows(turns: list[SoakTurn], started: float, width: float) -> list[dict[str, Any]]:
    """Per ``width`` seconds of turn starts: how many, and their latencies (ms)."""
    by_window: dict[int, list[SoakTurn]] = {}
    for turn in turns:
        by_window.setdefault(int((turn.sent - started) // width), []).append(turn)
    rows = []
    for index in sorted(by_window):
        group = by_window[index]
        first = [(t.first_output - t.sent) * 1e3 for t in group if t.first_output is not None]
        text = [(t.first_text - t.sent) * 1e3 for t in group if t.first_text is not None]
        whole = [(t.ended - t.sent) * 1e3 for t in group if t.ended is not None]
        rows.append(
            {
                "from_s": round(index * width),
                "turns": len(group),
                "ttft_ms": {"p50": percentile(first, 50), "p99": percentile(first, 99)},
                "first_text_ms": {"p50": percentile(text, 50), "p99": percentile(text, 99)},
                "turn_ms": {"p50": percentile(whole, 50), "p99": percentile(whole, 99)},
            }
        )
    return rows


def rss_growth(start: dict[str, int], end: dict[str, int]) -> dict[str, Any]:
    """Each process's RSS (KiB) at start and end and whether it stayed within the tolerance."""
    rows = {}
    for name, before in start.items():
        after = end.get(name)
        growth = None if after is None or not before else round(after / before - 1, 4)
        rows[name] = {
            "start_kb": before,
            "end_kb": after,
            "growth": growth,
            "flat": growth is not None and growth <= RSS_TOLERANCE,
        }
    return rows


def run(
    args: argparse.Namespace,
    start_mesh: Callable[..., AbstractContextManager[MeshLike]],
    rss_kb: Callable[[int], int],
    workdir: Path,
) -> dict[str, Any]:
    """Start the mesh, soak it, return the report."""
    samples: list[dict[str, int]] = []
    with start_mesh(workdir, "soak", 24, 0.0, args.database_url or None) as mesh:
        pids = {name: pid for name, pid in mesh.pids.items() if name != "devstack"}

        def sample() -> None:
            samples.append({name: rss_kb(pid) for name, pid in pids.items()})

        print(
            f"soak: {args.sessions} sessions, {args.duration:g} s, a turn every "
            f"~{args.interval:g} s each, read_file tool call per turn",
            flush=True,
        )
        result, started, ended = asyncio.run(
            soak_sessions(
                mesh.url,
                mesh.token,
                sessions=args.sessions,
                duration=args.duration,
                interval=args.interval,
                turn_timeout=args.turn_timeout,
                prefix=f"soak-{uuid.uuid4().hex[:8]}",
                on_ready=sample,
                window_s=args.window,
            )
        )
    completed = [t for t in result.turns if t.ended is not None]
    wall = ended - started
    first = [(t.first_output - t.sent) * 1e3 for t in completed if t.first_output is not None]
    report: dict[str, Any] = {
        "command": "scripts/bench-mesh --soak",
        "sessions": args.sessions,
        "connected": result.connected,
        "duration_s": args.duration,
        "interval_s": args.interval,
        "database": "postgresql" if args.database_url.startswith("postgresql") else "sqlite",
        "wall_s": round(wall, 1),
        "turns": len(completed),
        "turns_per_s": round(len(completed) / wall, 2) if wall else None,
        "tool_calls": sum(t.tool_calls for t in completed),
        "error_count": result.error_count,
        "sessions_with_errors": len(result.failed_sessions),
        "errors": result.errors,
        "ttft_ms": {"p50": percentile(first, 50), "p99": percentile(first, 99)},
        "windows": windows(result.turns, started, args.window),
        "rss": rss_growth(samples[0], samples[-1]) if len(samples) >= 2 else {},
        "rss_samples_kb": {name: [sample[name] for sample in samples] for name in pids},
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    print(
        f"  {report['turns']} turns ({report['turns_per_s']}/s), {report['tool_calls']} tool "
        f"calls, errors {report['error_count']} (in {report['sessions_with_errors']} sessions), "
        f"ttft p50/p99 "
        f"{report['ttft_ms']['p50']}/{report['ttft_ms']['p99']} ms",
        flush=True,
    )
    for row in report["windows"]:
        print(
            f"  {row['from_s']:>5} s: {row['turns']:>6} turns, ttft p99 {row['ttft_ms']['p99']} "
            f"ms, first text p99 {row['first_text_ms']['p99']} ms, "
            f"turn p99 {row['turn_ms']['p99']} ms",
            flush=True,
        )
    for name, row in report["rss"].items():
        print(
            f"  rss {name}: {row['start_kb']} → {row['end_kb']} KiB "
            f"({(row['growth'] or 0) * 100:+.1f}%){'' if row['flat'] else '  NOT FLAT'}; "
            f"per window (MiB): "
            f"{' '.join(str(kb // 1024) for kb in report['rss_samples_kb'][name])}",
            flush=True,
        )
    for error in report["errors"]:
        print(f"  error: {error}", flush=True)


def main(
    args: argparse.Namespace,
    start_mesh: Callable[..., AbstractContextManager[MeshLike]],
    rss_kb: Callable[[int], int],
) -> int:
    """``scripts/bench-mesh --soak``: run, print, write ``--json``; exit status 1 on
    an error or a process whose RSS grew more than 10%."""
    import resource
    import shutil
    import tempfile

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        report = run(args, start_mesh, rss_kb, workdir)
        report["llmproxy_replicas"] = args.llmproxy_replicas
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    clean = report["error_count"] == 0 and all(row["flat"] for row in report["rss"].values())
    return 0 if clean else 1
