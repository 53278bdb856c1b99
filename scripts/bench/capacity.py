# ruff: noqa: RUF001 - the multiplication sign is meant
"""``scripts/bench-mesh --capacity``: how many paced streams one machine sustains.

Streams like a real provider's: one token per chunk every ``delay`` seconds
(100 tok/s by default), ``tokens`` per turn, each session running its turns
back to back, the sessions' first turns spread over one turn's length (so
the streams overlap as people's do rather than all starting together). The
ramp runs ``start``, ``start + step``, ... streams, each step against the
tight relay and then the mesh (both up for the whole run, fresh sessions at
every step), until neither sustains the step or ``most`` is reached.

A step is *sustained* when every turn ended without error, the streams got
at least :data:`DELIVERY_FLOOR` of the pace asked (:func:`load.delivery`)
and, for the mesh, the added latency p99 is within
:data:`LATENCY_SLACK_MS` of the relay's at the same step. A step either
fails is run once more, relay and mesh again, and that second try decides
it (:data:`TRIES`): one unlucky run on a noisy machine does not end a
ramp. The capacity of each is the largest step before its first failure.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_mesh as bench

DELIVERY_FLOOR = 0.99
"""Share of the asked pace a step must deliver."""
LATENCY_SLACK_MS = 2.0
"""How far the mesh's added-latency p99 may exceed the relay's at the same step."""
TRIES = 2
"""Runs of a step at most: a step the relay or the mesh fails is run again
(both, fresh sessions), and the last run decides it."""


@dataclass(frozen=True)
class Step:
    streams: int
    delivery: float
    p99_ms: float | None
    errors: int


def holds(step: Step, reference_p99_ms: float | None = None) -> bool:
    """Whether ``step`` is sustained; ``reference_p99_ms`` is the relay's
    added-latency p99 at the same step (None: no latency bound, the relay)."""
    if step.errors or step.delivery < DELIVERY_FLOOR:
        return False
    if reference_p99_ms is None:
        return True
    return step.p99_ms is not None and step.p99_ms <= reference_p99_ms + LATENCY_SLACK_MS


def largest_sustained(verdicts: list[tuple[int, bool]]) -> int:
    """The largest stream count before the first step that failed (0 if the first did)."""
    best = 0
    for streams, ok in verdicts:
        if not ok:
            break
        best = streams
    return best


def tried(run_once: Callable[[int, bool], tuple[bool, bool]], mesh_on: bool) -> tuple[bool, bool]:
    """The verdicts (relay, mesh) of one step: ``run_once(attempt, mesh_on)``
    runs it (the mesh only while ``mesh_on``); a step that either fails is
    run again, up to :data:`TRIES` runs, and the last run decides."""
    relay_ok = mesh_ok = False
    for attempt in range(1, TRIES + 1):
        relay_ok, mesh_ok = run_once(attempt, mesh_on)
        if relay_ok and (mesh_ok or not mesh_on):
            break
    return relay_ok, mesh_ok


def ramp(start: int, step: int, most: int) -> list[int]:
    return list(range(start, most + 1, step))


def step_of(streams: int, summary: dict[str, Any]) -> Step:
    return Step(
        streams,
        summary.get("delivery", 0.0),
        (summary.get("added_latency_ms") or {}).get("p99"),
        summary["error_count"],
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens, delay = args.capacity_tokens, 0.01
    report: dict[str, Any] = {
        "command": "scripts/bench-mesh --capacity",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bench.machine(),
        "llmproxy_replicas": bench.llmproxy_replicas,
        "stream": {"tokens_per_turn": tokens, "token_delay_s": delay, "turns": args.turns},
        "rule": {"delivery_floor": DELIVERY_FLOOR, "latency_slack_ms": LATENCY_SLACK_MS},
        "steps": [],
    }
    print(f"machine: {report['machine']['cpu']}, {report['machine']['nproc']} cores", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    verdicts: dict[str, list[tuple[int, bool]]] = {"relay": [], "mesh": []}
    started = time.monotonic()
    warmup = {"type": "switch_agent", "agent_type": "ask", "content": "warm up", "reason": "x"}
    turn = {"type": "user_message", "content": "hello", "role": "user"}
    try:
        with (
            bench.bare_relay(args.loose_relay) as (relay_url, relay_pids),
            bench.mesh(workdir, "capacity", tokens, delay) as m,
        ):
            headers = {"Authorization": f"Bearer {m.token}"}
            services = bench.grouped(m.pids, bench.SERVICES)

            def run_once(s: bench.Scenario, attempt: int, mesh_on: bool) -> tuple[bool, bool]:
                print(
                    f"{s.sessions} streams" + (f", try {attempt}" if attempt > 1 else ""),
                    flush=True,
                )
                relay = bench.drive_relay(relay_url, s, relay_pids)
                relay_ok = holds(step_of(s.sessions, relay))
                mesh_ok = False
                entry: dict[str, Any] = {"streams": s.sessions, "try": attempt, "relay": relay}
                if mesh_on:
                    prefix = f"cap{s.sessions}-{uuid.uuid4().hex[:8]}"
                    real = bench.drive(m.url, headers, s, services, warmup, turn, True, prefix)
                    reference = step_of(s.sessions, relay).p99_ms
                    mesh_ok = holds(step_of(s.sessions, real), reference or 0.0)
                    entry["mesh"] = real
                entry["sustained"] = {"relay": relay_ok, "mesh": mesh_ok}
                report["steps"].append(entry)
                print(f"  sustained: relay {relay_ok}, mesh {mesh_ok}", flush=True)
                return relay_ok, mesh_ok

            for streams in ramp(args.start, args.step, args.most):
                s = bench.Scenario(
                    f"capacity-{streams}",
                    f"{streams} sessions × {1 / delay:.0f} tok/s",
                    streams,
                    args.turns,
                    tokens,
                    delay,
                    stagger=tokens * delay,
                )
                mesh_on = not verdicts["mesh"] or verdicts["mesh"][-1][1]
                relay_ok, mesh_ok = tried(functools.partial(run_once, s), mesh_on)
                if mesh_on:
                    verdicts["mesh"].append((streams, mesh_ok))
                verdicts["relay"].append((streams, relay_ok))
                if not relay_ok and not mesh_ok:
                    break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["capacity_streams"] = {name: largest_sustained(v) for name, v in verdicts.items()}
    report["run_s"] = round(time.monotonic() - started, 1)
    print(
        f"largest number of {1 / delay:.0f} tok/s streams sustained: "
        f"relay {report['capacity_streams']['relay']}, mesh {report['capacity_streams']['mesh']}",
        flush=True,
    )
    return report


def write(report: dict[str, Any], root: Path) -> Path:
    path = root / "docs" / f"bench-capacity-{report['date'][:10]}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
