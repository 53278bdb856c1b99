# ruff: noqa: RUF001 - the multiplication sign is meant
"""``scripts/bench-mesh``: the real mesh against a bare relay, in one run.

(a) the bare relay (``relay.py``): source → relay → edge, three processes,
    driven by this one; (b) the mesh started by ``scripts/devstack.py`` with
    the offline model, a fresh ``CODELAB_HOME`` in a temporary directory and
    an llmproxy config written there per token shape. Both are driven by the
    same client code (``load.py``) with the same scenarios; see the "Mesh"
    section of docs/BENCHMARKS.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import load
import soak

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from mesh import process  # the repository's, not an installed copy
from mesh.config import boolean

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SERVICES = ("gateway", "runtime", "llmproxy", "auth")
llmproxy_replicas = 1
"""llmproxy processes in the mesh (``--llmproxy-replicas``, passed on as
CODELAB_LLMPROXY_REPLICAS): by default one, as ``scripts/up`` starts. Two
were the default while LiteLLM's per-chunk cost made one llmproxy the first
process to fill a core; since the fast path, a second process on two cores
costs more CPU per token than it spares (docs/BENCHMARKS.md, tenth session)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    sessions: int
    turns: int
    tokens: int
    delay: float
    think: float = 0.0
    """Mean seconds a session waits before each measured turn (uniform 0..2×)."""
    stagger: float = 0.0
    """Seconds over which the sessions' first measured turns are spread."""


def scenarios(quick: bool) -> dict[str, Scenario]:
    long = 200 if quick else 500  # one mesh launch serves both unpaced scenarios
    return {
        s.name: s
        for s in (
            Scenario("single", "1 session, unpaced", 1, 3 if quick else 5, long, 0.0),
            Scenario("wide", "50 sessions, unpaced", 50, 1 if quick else 2, long, 0.0),
            Scenario("paced", "50 sessions × 100 tok/s", 50, 1 if quick else 2, 100, 0.01),
            Scenario("short", "50 sessions, short turns", 50, 4 if quick else 10, 10, 0.0),
            Scenario(
                "ttft", "50 sessions, turns spread out (TTFT)", 50, 3 if quick else 6, 10, 0.0, 1.0
            ),
        )
    }


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports_in_a_row(count: int) -> int:
    """A port p with p .. p+count-1 all free (devstack numbers replicas so)."""
    for _ in range(100):
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise SystemExit(f"no {count} free ports in a row")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


THREAD_GROUPS = ("main", "grpc", "other")
"""How ``thread_cpu_seconds`` groups a process's threads: its event loop's
thread, gRPC core's own threads (``event_engine``, ``grpc_*``), and the
rest (Python threads: gRPC's poller, each SQLite connection's worker)."""


def thread_group(pid: int, tid: int, comm: str) -> str:
    if tid == pid:
        return "main"
    if comm.startswith(("event_engine", "grpc_")):
        return "grpc"
    return "other"


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s live threads by :data:`THREAD_GROUPS` (from
    each thread's ``schedstat``, in nanoseconds; a thread that ended is not
    counted, so these may add up to less than :func:`cpu_seconds`)."""
    spent = dict.fromkeys(THREAD_GROUPS, 0.0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            ran_ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        spent[thread_group(pid, int(task.name), comm)] += ran_ns / 1e9
    return spent


def rss_kb(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE_KB


def children(pid: int) -> dict[str, int]:
    """The direct children of ``pid`` by the module they run (``-m NAME``)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
            continue
        if b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode()
            name, n = module, 1
            while name in found:  # replicas: llmproxy, llmproxy-2, ...
                n += 1
                name = f"{module}-{n}"
            found[name] = int(entry.name)
    return found


def grouped(pids: dict[str, int], names: tuple[str, ...]) -> dict[str, list[int]]:
    """Each service in ``names`` with the pids of all its replicas."""
    return {n: [pid for k, pid in pids.items() if k == n or k.startswith(n + "-")] for n in names}


class CpuMeter:
    """utime+stime of named processes between ``mark()`` calls, and their
    threads' CPU by group (:func:`thread_cpu_seconds`)."""

    def __init__(self, pids: dict[str, int] | dict[str, list[int]]) -> None:
        self.pids = {n: p if isinstance(p, list) else [p] for n, p in pids.items()}
        self.marks: list[dict[str, float]] = []
        self.thread_marks: list[dict[str, dict[str, float]]] = []

    def mark(self) -> None:
        snapshot = {name: sum(map(cpu_seconds, pids)) for name, pids in self.pids.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        snapshot["client"] = usage.ru_utime + usage.ru_stime
        snapshot["machine"] = machine_busy_seconds()
        self.marks.append(snapshot)
        threads: dict[str, dict[str, float]] = {}
        for name, pids in self.pids.items():
            groups = threads[name] = dict.fromkeys(THREAD_GROUPS, 0.0)
            for pid in pids:
                for group, seconds in thread_cpu_seconds(pid).items():
                    groups[group] += seconds
        self.thread_marks.append(threads)

    def spent(self) -> dict[str, float]:
        first, last = self.marks[0], self.marks[-1]
        return {name: round(last[name] - first[name], 3) for name in first if name != "machine"}

    def spent_by_thread(self) -> dict[str, dict[str, float]]:
        """Each process's CPU seconds between the first and last mark by thread group."""
        first, last = self.thread_marks[0], self.thread_marks[-1]
        return {
            name: {g: round(last[name][g] - first[name][g], 4) for g in THREAD_GROUPS}
            for name in first
        }

    def foreign(self) -> float:
        """CPU seconds the machine spent outside the measured processes."""
        first, last = self.marks[0], self.marks[-1]
        ours = sum(self.spent().values())
        return round(max(0.0, last["machine"] - first["machine"] - ours), 3)


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine (first line of /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [PYTHON, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    return process


def stop(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def multiplexed(environ: dict[str, str]) -> bool:
    """Whether the mesh's runtime multiplexes its model calls
    (``AGENT_RUNTIME__LLM_PROXY_MULTIPLEX``), so the tight relay does too."""
    return boolean(environ.get("AGENT_RUNTIME__LLM_PROXY_MULTIPLEX", "false"))


@contextlib.contextmanager
def bare_relay(loose: bool = False) -> Iterator[tuple[str, dict[str, int]]]:
    """The bare relay's three processes (tight unless ``loose``, see relay.py)."""
    # The mesh's process environment too (scripts/devstack.py passes it).
    env = {**process.ENVIRONMENT, **os.environ, "PYTHONPATH": str(ROOT)}  # relay.py imports mesh.*
    ports = {role: free_port() for role in ("source", "relay", "edge")}
    upstream = {
        "source": "",
        "relay": f"127.0.0.1:{ports['source']}",
        "edge": f"127.0.0.1:{ports['relay']}",
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for role in ("source", "relay", "edge"):
            proc = procs[role] = spawn(
                [
                    str(HERE / "relay.py"),
                    role,
                    "--port",
                    str(ports[role]),
                    "--upstream",
                    upstream[role],
                    *(["--loose"] if loose else []),
                    *(["--multiplex"] if multiplexed(env) and not loose else []),
                ],
                env,
            )
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"bare relay: {role} did not start")
        yield f"ws://127.0.0.1:{ports['edge']}", {r: p.pid for r, p in procs.items()}
    finally:
        for proc in reversed(procs.values()):
            stop(proc)


@dataclass
class Mesh:
    url: str
    token: str
    pids: dict[str, int]
    home: Path


MESH_LIMITS = {
    # The benchmark is one user with up to 10,000 connections from one
    # address; these are the edge's abuse limits, not its capacity.
    "GATEWAY__MAX_CONNECTIONS_PER_USER": "20000",
    "GATEWAY__MAX_CONNECTIONS": "20000",
    "GATEWAY__CONNECT_RATE": "0",
    "AGENT_RUNTIME__MAX_CONCURRENT_RPCS": "20000",
}


@contextlib.contextmanager
def mesh(
    workdir: Path, name: str, tokens: int, delay: float, database_url: str | None = None
) -> Iterator[Mesh]:
    home = workdir / f"home-{name}"
    config = workdir / f"llm-{name}.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: offline\n"
        "    litellm_params:\n"
        "      model: offline/echo\n"
        f"      reply_tokens: {tokens}\n"
        f"      token_delay: {delay}\n"
        "      stamp_tokens: true\n"
        "    model_info:\n"
        "      max_input_tokens: 32768\n"
        "      supports_function_calling: true\n"
        "router_settings:\n"
        "  num_retries: 0\n"
    )
    ports = {n: free_port() for n in ("gateway", "runtime", "auth")}
    ports["llmproxy"] = free_ports_in_a_row(llmproxy_replicas)
    env = {
        **os.environ,
        **MESH_LIMITS,
        "CODELAB_HOME": str(home),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LLM_PROXY__CONFIG": str(config),
        "GATEWAY__PORT": str(ports["gateway"]),
        "AGENT_RUNTIME__PORT": str(ports["runtime"]),
        "LLM_PROXY__PORT": str(ports["llmproxy"]),
        "AUTH_SERVICE__PORT": str(ports["auth"]),
        "CODELAB_LLMPROXY_REPLICAS": str(llmproxy_replicas),
        "CODELAB_FRONT_PORT": "0",  # the bench talks to the gateway itself
        # No metrics endpoints: the fixed ports scripts/up uses may be taken.
        "GATEWAY__METRICS_PORT": "0",
        "AGENT_RUNTIME__METRICS_PORT": "0",
        "LLM_PROXY__METRICS_PORT": "0",
        "AUTH_SERVICE__METRICS_PORT": "0",
    }
    if database_url:
        env["AGENT_RUNTIME__DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [PYTHON, str(ROOT / "scripts" / "devstack.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = threading.Event()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line:
                up.set()
        up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not up.wait(300) or process.poll() is not None:  # a busy machine starts slowly
            raise SystemExit("devstack did not come up:\n" + "".join(output))
        pids = children(process.pid)
        pids = {n: pid for n, pid in pids.items() if n.split("-")[0] in SERVICES}
        pids["devstack"] = process.pid
        yield Mesh(
            f"ws://127.0.0.1:{ports['gateway']}", (home / "token").read_text().strip(), pids, home
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)


# -- measuring ---------------------------------------------------------------


def on_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the client on the loop the mesh and the relay run on (uvloop)."""
    with asyncio.Runner(loop_factory=process.loop_factory("uvloop")) as runner:
        return runner.run(main)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)


def p50_p99(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}


def added_p99_by_tenth(turns: list[load.Turn]) -> list[float | None]:
    """The added latency p99 (ms) of the tokens in each tenth of their turn
    (a token's place: its index over its turn's token count): whether the
    late tokens are where turns start or end, or all along them."""
    tenths: list[list[float]] = [[] for _ in range(10)]
    for turn in turns:
        n = len(turn.arrivals)
        if not n or len(turn.stamps) != n:
            continue
        for i, (arrived, stamp) in enumerate(zip(turn.arrivals, turn.stamps, strict=True)):
            tenths[i * 10 // n].append((arrived - stamp) / 1e6)
    return [pct(values, 99) for values in tenths]


def summarize(
    s: Scenario,
    result: load.SessionsResult,
    cpu: dict[str, float],
    foreign: float,
    threads: dict[str, dict[str, float]],
) -> dict[str, Any]:
    turns = result.turns
    tokens = sum(len(t.arrivals) for t in turns)
    wall = (result.ended - result.started) / 1e9
    ms = 1e-6
    ttft = [(t.arrivals[0] - t.sent) * ms for t in turns if t.arrivals]
    gaps = [(b - a) * ms for t in turns for a, b in zip(t.arrivals, t.arrivals[1:], strict=False)]
    # lateness against the source's nominal schedule, anchored at the first token
    late = [
        ((t.arrivals[i] - t.arrivals[0]) - i * s.delay * 1e9) * ms
        for t in turns
        for i in range(len(t.arrivals))
    ]
    out: dict[str, Any] = {
        "sessions": s.sessions,
        "turns_per_session": s.turns,
        "tokens_per_turn": s.tokens,
        "token_delay_s": s.delay,
        "think_s": s.think,
        "turns": len(turns),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "turns_per_s": round(len(turns) / wall, 2) if wall else None,
        "ttft_ms": p50_p99(ttft),
        "inter_arrival_ms": p50_p99(gaps),
        "gap_excess_ms": p50_p99([g - s.delay * 1e3 for g in gaps]),
        "lateness_vs_schedule_ms": p50_p99(late),
        "cpu_s": cpu,
        "other_processes_cpu_s": foreign,
        "other_processes_cores": round(foreign / wall, 2) if wall else None,
        "cpu_us_per_token": {k: round(v / tokens * 1e6, 1) for k, v in cpu.items()}
        if tokens
        else {},
        "cpu_ms_per_turn": {k: round(v / len(turns) * 1e3, 2) for k, v in cpu.items()}
        if turns
        else {},
        "errors": result.errors[:5],
        "error_count": len(result.errors),
    }
    if tokens:
        # By thread: the event loop's, gRPC core's, the rest (see THREAD_GROUPS).
        out["cpu_us_per_token_by_thread"] = {
            name: {g: round(v / tokens * 1e6, 1) for g, v in groups.items()}
            for name, groups in threads.items()
        }
    if s.delay:
        # the share of the pace asked each stream got (see load.delivery)
        share = load.delivery(turns, s.sessions * s.turns, s.tokens, s.delay)
        out["delivery"] = round(share, 4)
        out["asked_tokens_per_s"] = round(s.sessions / s.delay, 1)
        out["delivered_tokens_per_s"] = round(share * s.sessions / s.delay, 1)
    stamped = [t for t in turns if t.stamps and len(t.stamps) == len(t.arrivals)]
    if stamped:
        out["added_latency_ms"] = p50_p99(
            [(a - st) * ms for t in stamped for a, st in zip(t.arrivals, t.stamps, strict=False)]
        )
        out["added_latency_p99_by_tenth_of_turn_ms"] = added_p99_by_tenth(stamped)
        out["source_drift_ms"] = p50_p99(
            [
                ((t.stamps[i] - t.stamps[0]) - i * s.delay * 1e9) * ms
                for t in stamped
                for i in range(len(t.stamps))
            ]
        )
    return out


def drive(
    url: str,
    headers: dict[str, str],
    s: Scenario,
    pids: dict[str, list[int]],
    warmup: dict[str, Any],
    measured: dict[str, Any],
    stamped: bool,
    prefix: str,
) -> dict[str, Any]:
    meter = CpuMeter(pids)
    result = on_loop(
        load.run_sessions(
            url,
            sessions=s.sessions,
            turns=s.turns,
            headers=headers,
            warmup=warmup,
            measured=measured,
            stamped=stamped,
            mark=meter.mark,
            session_prefix=prefix,
            think=s.think,
            stagger=s.stagger,
        )
    )
    summary = summarize(s, result, meter.spent(), meter.foreign(), meter.spent_by_thread())
    added = summary.get("added_latency_ms") or {}
    print(
        f"  {s.name}: {summary['tokens']} tokens {summary['tokens_per_s']} tok/s "
        f"ttft p50 {summary['ttft_ms']['p50']} ms, {summary['turns_per_s']} turns/s, "
        f"added p50/p99 {added.get('p50')}/{added.get('p99')} ms, "
        f"errors {summary['error_count']}",
        flush=True,
    )
    return summary


def idle(
    url: str,
    token: str,
    count: int,
    pid: int,
    others: dict[str, int],
    expect_frame: bool,
    clients: int,
) -> dict[str, Any]:
    """Open ``count`` idle connections from ``clients`` processes; RSS of ``pid``."""
    time.sleep(1.0)
    before = {"edge": rss_kb(pid), **{n: rss_kb(p) for n, p in others.items()}}
    started = time.monotonic()
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    procs = []
    prefix = uuid.uuid4().hex[:8]
    for i, n in enumerate(share):
        args = [
            str(HERE / "load.py"),
            "idle",
            "--url",
            url,
            "--count",
            str(n),
            "--prefix",
            f"idle-{prefix}-{i}",
        ]
        if token:
            args += ["--token", token]
        if expect_frame:
            args.append("--expect-frame")
        procs.append(spawn(args))
    opened, failed, reasons = 0, 0, []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            match = re.match(r"opened (\d+) failed (\d+) ?(.*)", line)
            if not match:
                reasons.append(f"client exited: {line!r}")
                continue
            opened += int(match[1])
            failed += int(match[2])
            if match[3]:
                reasons.append(match[3])
        took = time.monotonic() - started
        time.sleep(2.0)
        after = {"edge": rss_kb(pid), **{n: rss_kb(p) for n, p in others.items()}}
        client_rss = sum(rss_kb(p.pid) for p in procs if p.poll() is None)
    finally:
        for proc in procs:
            stop(proc)
    delta = {n: after[n] - before[n] for n in before}
    result = {
        "target": count,
        "opened": opened,
        "failed": failed,
        "errors": reasons[:3],
        "open_s": round(took, 1),
        "client_processes": clients,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_connection_kb": {
            n: round(d / opened, 1) if opened else None for n, d in delta.items()
        },
        "client_rss_per_connection_kb": round(client_rss / opened, 1) if opened else None,
    }
    print(
        f"  idle: opened {opened}/{count} in {took:.1f}s, edge +{delta['edge']} kB "
        f"({result['rss_per_connection_kb']['edge']} kB/conn)",
        flush=True,
    )
    return result


# -- profiling ---------------------------------------------------------------


def start_profiles(
    pids: dict[str, int], out: Path
) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if spy is None:
        return {}
    running = {}
    for name, pid in pids.items():
        path = out / f"{name}.txt"
        running[name] = (
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--nonblocking",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--duration",
                    "600",
                    "--pid",
                    str(pid),
                    "--output",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            path,
        )
    time.sleep(1.0)  # py-spy attaches
    return running


WAITING = {"selectors.py:EpollSelector.select"}


def frame_name(frame: str) -> str:
    """``func (path/file.py:12)`` → ``path/file.py:func`` relative to the venv or repo."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match[1], match[2]
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{func}"


def finish_profiles(running: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> dict[str, Any]:
    for proc, _ in running.values():
        proc.send_signal(signal.SIGINT)
    found: dict[str, Any] = {}
    for name, (proc, path) in running.items():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not path.exists():
            continue
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = waiting = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [frame_name(f) for f in stack.split(";") if f]
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += n
            if frames[-1] in WAITING:
                waiting += n  # the event loop blocked in epoll: not CPU
                continue
            own[frames[-1]] += n
            for f in set(frames):
                inclusive[f] += n
        busy = max(1, total - waiting)
        ours = [
            (f, c)
            for f, c in inclusive.most_common()
            if f.split("/")[0] in ("gateway", "runtime", "llmproxy", "mesh") and "__main__" not in f
        ]
        found[name] = {
            "samples": total,
            "epoll_wait_share": round(100 * waiting / total, 1) if total else None,
            "self_top": [(f, round(100 * c / busy, 1)) for f, c in own.most_common(12)],
            "inclusive_top_ours": [(f, round(100 * c / busy, 1)) for f, c in ours[:12]],
            "inclusive_top": [(f, round(100 * c / busy, 1)) for f, c in inclusive.most_common(30)],
        }
    return found


# -- the run -----------------------------------------------------------------


async def create_database(name: str, drop: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        if drop:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    mem = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    full = scenarios(args.quick)
    only = [name for name in args.only.split(",") if name]
    unknown = set(only) - full.keys()
    if unknown:
        known = ", ".join(full)
        raise SystemExit(f"--only: no scenario {', '.join(sorted(unknown))} (one of {known})")
    plan = {n: s for n, s in full.items() if not only or n in only}
    # A run of some scenarios only measures them: no idle connections unless asked.
    idle_count = args.idle or (0 if only else 2000 if args.quick else 10_000)
    if args.profile_scenario not in full:
        raise SystemExit(f"--profile-scenario: one of {', '.join(full)}")
    profiling = "" if args.no_profile else args.profile_scenario
    if profiling and profiling not in plan:
        profiling = ""
    report: dict[str, Any] = {
        "command": "scripts/bench-mesh" + (" --quick" if args.quick else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine(), "nofile_limit": hard},
        "relay": "loose" if args.loose_relay else "tight",
        "scenarios": {n: {"title": s.title} for n, s in plan.items()},
        "mesh_env": {**MESH_LIMITS, "CODELAB_LLMPROXY_REPLICAS": str(llmproxy_replicas)},
    }
    print(f"machine: {report['machine']['cpu']}, {report['machine']['nproc']} cores", flush=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    try:
        print(f"(a) bare relay ({report['relay']})", flush=True)
        with bare_relay(args.loose_relay) as (url, pids):
            for s in plan.values():
                report["scenarios"][s.name]["baseline"] = drive_relay(url, s, pids)
            if idle_count:
                report["idle_baseline"] = idle(
                    url, "", idle_count, pids["edge"], {"relay": pids["relay"]}, False, args.clients
                )
        warmup = {
            "type": "switch_agent",
            "agent_type": "ask",
            "content": "warm up",
            "reason": "benchmark",
        }
        turn = {"type": "user_message", "content": "hello", "role": "user"}

        def on_mesh(m: Mesh, names: list[str], key: str) -> None:
            headers = {"Authorization": f"Bearer {m.token}"}
            services = grouped(m.pids, SERVICES)
            for n in names:
                if n not in plan:
                    continue
                s = plan[n]
                report["scenarios"][n][key] = drive(
                    m.url, headers, s, services, warmup, turn, True, f"{n}-{uuid.uuid4().hex[:8]}"
                )

        wide, paced, short = full["wide"], full["paced"], full["short"]
        if {"single", "wide"} & plan.keys():
            print("(b) mesh, unpaced", flush=True)
            with mesh(workdir, "unpaced", wide.tokens, 0.0) as m:
                report["mesh_pids"] = m.pids
                on_mesh(m, ["single", "wide"], "mesh")
                if profiling in ("single", "wide"):
                    report["profile"] = profile(m, full[profiling], workdir, warmup, turn, report)
        if "paced" in plan:
            print("(b) mesh, paced", flush=True)
            with mesh(workdir, "paced", paced.tokens, paced.delay) as m:
                on_mesh(m, ["paced"], "mesh")
                if profiling == "paced":
                    report["profile"] = profile(m, paced, workdir, warmup, turn, report)
        if {"short", "ttft"} & plan.keys() or idle_count:
            print("(b) mesh, short turns, SQLite", flush=True)
            with mesh(workdir, "short-sqlite", short.tokens, 0.0) as m:
                on_mesh(m, ["short", "ttft"], "mesh")
                if profiling in ("short", "ttft"):
                    report["profile"] = profile(m, full[profiling], workdir, warmup, turn, report)
                if idle_count:
                    report["idle_mesh"] = idle(
                        m.url,
                        m.token,
                        idle_count,
                        m.pids["gateway"],
                        {"runtime": m.pids["runtime"]},
                        True,
                        args.clients,
                    )
        if not args.no_postgres and "short" in plan:
            print("(b) mesh, short turns, PostgreSQL", flush=True)
            db = f"codelab_bench_{os.getpid()}"
            asyncio.run(create_database(db, drop=False))
            try:
                url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
                with mesh(workdir, "short-pg", short.tokens, 0.0, url) as m:
                    on_mesh(m, ["short"], "mesh_postgres")
            finally:
                asyncio.run(create_database(db, drop=True))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["run_s"] = round(time.monotonic() - started, 1)
    ratios(report)
    return report


def profile(
    m: Mesh,
    s: Scenario,
    workdir: Path,
    warmup: dict[str, Any],
    turn: dict[str, Any],
    report: dict[str, Any],
) -> Any:
    """One more run of ``s`` with py-spy on gateway, runtime and llmproxy (the
    warm-up turn and the sessions' opening included)."""
    running = start_profiles({n: m.pids[n] for n in ("gateway", "runtime", "llmproxy")}, workdir)
    if not running:
        return "py-spy not installed"
    once = dataclasses.replace(s, name=f"{s.name}-profiled")
    headers = {"Authorization": f"Bearer {m.token}"}
    services = grouped(m.pids, ("gateway", "runtime", "llmproxy"))
    report["profiled_scenario"] = s.title
    report["profiled_run"] = drive(
        m.url, headers, once, services, warmup, turn, True, f"prof-{uuid.uuid4().hex[:8]}"
    )
    return finish_profiles(running)


def drive_relay(url: str, s: Scenario, pids: dict[str, int]) -> dict[str, Any]:
    frame = {"type": "user_message", "content": "hello", "role": "user"}
    query = f"?tokens={s.tokens}&delay={s.delay}"
    meter = CpuMeter(pids)

    async def go() -> load.SessionsResult:
        return await load.run_sessions(
            url,
            sessions=s.sessions,
            turns=s.turns,
            headers={},
            warmup=frame,
            measured=frame,
            stamped=True,
            mark=meter.mark,
            session_prefix=f"{s.name}{query}&s=",
            think=s.think,
            stagger=s.stagger,
        )

    summary = summarize(s, on_loop(go()), meter.spent(), meter.foreign(), meter.spent_by_thread())
    print(
        f"  {s.name}: {summary['tokens']} tokens {summary['tokens_per_s']} tok/s "
        f"ttft p50 {summary['ttft_ms']['p50']} ms, added p99 "
        f"{summary['added_latency_ms']['p99']} ms",
        flush=True,
    )
    return summary


def ratios(report: dict[str, Any]) -> None:
    for entry in report["scenarios"].values():
        base = entry.get("baseline")
        for key in ("mesh", "mesh_postgres"):
            real = entry.get(key)
            if not base or not real:
                continue
            entry[f"ratio_{key}"] = {
                "tokens_per_s": round(real["tokens_per_s"] / base["tokens_per_s"], 3),
                "turns_per_s": round(real["turns_per_s"] / base["turns_per_s"], 3),
                "ttft_p50": round(real["ttft_ms"]["p50"] / base["ttft_ms"]["p50"], 2),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller scenarios (~1 minute)")
    parser.add_argument("--idle", type=int, default=0, help="idle connections (10000; 2000 quick)")
    parser.add_argument("--clients", type=int, default=4, help="client processes for idle")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (single,wide,paced,short,ttft); "
        "no idle connections unless --idle",
    )
    parser.add_argument(
        "--profile-scenario",
        default="wide",
        help="the scenario py-spy profiles, once more after its measured run (default wide)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--llmproxy-replicas",
        type=int,
        default=1,
        help="llmproxy processes in the mesh (default 1, as scripts/up starts)",
    )
    parser.add_argument("--json", default="", help="write the raw results here")
    parser.add_argument(
        "--loose-relay",
        action="store_true",
        help="the bare relay as first shipped (asyncio, no merging) instead of the tight one",
    )
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="ramp paced 100 tok/s streams until the relay and the mesh no longer keep up",
    )
    parser.add_argument("--start", type=int, default=50, help="capacity: first step's streams")
    parser.add_argument("--step", type=int, default=50, help="capacity: streams added per step")
    parser.add_argument("--most", type=int, default=1000, help="capacity: last step at most")
    parser.add_argument("--turns", type=int, default=2, help="capacity: turns per session")
    parser.add_argument(
        "--capacity-tokens", type=int, default=300, help="capacity: tokens per turn"
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="also write docs/bench-mesh-<date>.json and the Mesh section",
    )
    soak.add_arguments(parser)
    args = parser.parse_args()
    if args.llmproxy_replicas < 1:
        parser.error("--llmproxy-replicas must be at least 1")
    global llmproxy_replicas
    llmproxy_replicas = args.llmproxy_replicas
    # SIGTERM unwinds like Ctrl-C, so every started mesh and relay is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.soak:
        sys.exit(soak.main(args, mesh, rss_kb))
    if args.capacity:
        import capacity

        report = capacity.run(args)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        if args.write:
            print(f"wrote {capacity.write(report, ROOT)}")
        return
    if args.write and args.only:
        raise SystemExit("--write needs every scenario: drop --only")
    report = run(args)
    if isinstance(report.get("profile"), dict):
        import report as markdown

        print("\n".join(markdown.profile(report)), flush=True)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    if args.write:
        import report as markdown

        day = report["date"][:10]
        (ROOT / "docs" / f"bench-mesh-{day}.json").write_text(text + "\n")
        markdown.write_section(
            report, ROOT / "docs" / "BENCHMARKS.md", f"docs/bench-mesh-{day}.json"
        )
    print(json.dumps({k: v for k, v in report.items() if k != "profile"}, indent=1)[:6000])


if __name__ == "__main__":
    main()
