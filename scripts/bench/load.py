# ruff: noqa: RUF002 - the multiplication sign is meant
"""The WebSocket side of the benchmark: sessions that stream, connections that idle.

:func:`run_sessions` is the driver for the streaming scenarios, used the
same way against the bare relay and against the gateway. Every session
connects and runs one warm-up turn (not measured); then all of them start
their measured turns at once and run them back to back. A turn is one
frame sent, then ``assistant_message`` frames read until ``is_final``; the
driver notes the monotonic time each token (each whitespace-separated word
of a frame) arrives, and, when tokens are stamped, when the source emitted it.

``python load.py idle ...`` is one client process holding idle
authenticated connections for the idle-connection scenario; it prints
``opened <n> failed <n> <first error>`` once they are all attempted, then
waits for SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


@dataclass
class Turn:
    sent: int  # monotonic ns
    arrivals: list[int] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)  # source emission, relay only
    final: int = 0


@dataclass
class SessionsResult:
    turns: list[Turn]
    started: int
    ended: int
    errors: list[str]


def delivery(turns: list[Turn], expected_turns: int, tokens: int, delay: float) -> float:
    """The share of a paced stream's pace the clients got, 0..1.

    Per turn: the tokens' nominal span (``(n - 1) × delay``) over the span
    they arrived in (first to last token), at most 1, times the share of
    the turn's ``tokens`` that arrived; averaged over the ``expected_turns``
    asked, so a turn that failed counts 0. A stream that falls behind its
    source delivers its last token late and scores below 1; when it only
    starts late (time to first token) it does not, and the added latency
    shows that instead.
    """
    if not expected_turns or tokens < 2 or delay <= 0:
        return 0.0
    score = 0.0
    for turn in turns:
        n = len(turn.arrivals)
        if n < 2:
            continue
        span = turn.arrivals[-1] - turn.arrivals[0]
        pace = 1.0 if span <= 0 else min(1.0, (n - 1) * delay * 1e9 / span)
        score += pace * min(1.0, n / tokens)
    return score / expected_turns


def stamp_of(token: str) -> int | None:
    """The source's emission time in a token ``<word>@<ns>`` (the relay's
    source and the offline model's ``stamp_tokens`` both write it)."""
    _, at, stamp = token.partition("@")
    return int(stamp) if at else None


async def _turn(ws: ClientConnection, frame: str, stamped: bool) -> Turn:
    turn = Turn(sent=time.monotonic_ns())
    await ws.send(frame)
    arrivals, stamps = turn.arrivals, turn.stamps
    while True:
        raw = await ws.recv()
        now = time.monotonic_ns()
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "assistant_message":
            if message.get("is_final"):
                turn.final = now
                return turn
            text = message.get("token") or message.get("content") or ""
            # A frame may carry several tokens (a hop merged deltas that
            # queued while it was busy): one arrival per token, all now.
            for token in text.split():
                arrivals.append(now)
                if stamped:
                    stamp = stamp_of(token)
                    if stamp is not None:
                        stamps.append(stamp)
        elif kind == "error":
            raise RuntimeError(f"error frame: {message.get('code')}: {message.get('content')}")


async def run_sessions(
    url: str,
    *,
    sessions: int,
    turns: int,
    headers: dict[str, str],
    warmup: dict[str, Any],
    measured: dict[str, Any],
    stamped: bool,
    mark: Callable[[], None],
    session_prefix: str,
    time_limit: float = 600.0,
    think: float = 0.0,
    stagger: float = 0.0,
) -> SessionsResult:
    """Run ``sessions`` concurrent sessions of one warm-up and ``turns`` turns.

    ``mark`` is called when every session has warmed up (just before the
    measured turns start) and again when the last measured turn ends. With
    ``think``, each session waits a uniform 0..2*``think`` seconds before each
    measured turn (seeded by its index). With ``stagger``, session ``i`` of
    ``n`` starts its first measured turn ``stagger × i / n`` seconds late
    and runs the rest back to back: streams that overlap as people's do,
    not all starting at the same instant.
    """
    ready = 0
    all_ready = asyncio.Event()
    go = asyncio.Event()
    collected: list[Turn] = []
    errors: list[str] = []

    def arrived() -> None:
        nonlocal ready
        ready += 1
        if ready == sessions:
            all_ready.set()

    async def one(index: int) -> None:
        try:
            ws = await connect(
                f"{url}/ws/{session_prefix}-{index}",
                additional_headers=headers,
                compression=None,
                max_size=None,
                open_timeout=60,
                ping_interval=None,
            )
        except BaseException:
            arrived()
            raise
        try:
            try:
                await _turn(ws, json.dumps(warmup), stamped)
            finally:
                arrived()
            await go.wait()
            if stagger:
                await asyncio.sleep(stagger * index / sessions)
            frame = json.dumps(measured)
            pauses = random.Random(index)  # noqa: S311 - the same think times every run
            for _ in range(turns):
                if think:
                    await asyncio.sleep(pauses.uniform(0, 2 * think))
                collected.append(await _turn(ws, frame, stamped))
        finally:
            await ws.close()

    async def guarded(index: int) -> None:
        try:
            await one(index)
        except Exception as exc:
            errors.append(f"session {index}: {type(exc).__name__}: {exc}"[:300])

    async with asyncio.timeout(time_limit):
        tasks = [asyncio.create_task(guarded(i)) for i in range(sessions)]
        await all_ready.wait()  # a session that failed to warm up counts as arrived
        mark()
        started = time.monotonic_ns()
        go.set()
        await asyncio.gather(*tasks)
        ended = max((t.final for t in collected), default=time.monotonic_ns())
        mark()
    return SessionsResult(collected, started, ended, errors)


# -- idle connections ------------------------------------------------------


async def hold_idle(
    url: str, headers: dict[str, str], count: int, prefix: str, expect_frame: bool, parallel: int
) -> None:
    held: list[ClientConnection] = []
    failed = 0
    first_error = ""
    gate = asyncio.Semaphore(parallel)

    async def open_one(index: int) -> None:
        nonlocal failed, first_error
        async with gate:
            try:
                ws = await connect(
                    f"{url}/ws/{prefix}-{index}",
                    additional_headers=headers,
                    compression=None,
                    open_timeout=120,
                    ping_interval=None,
                )
                if expect_frame:  # the gateway's session_info: the Converse stream is open
                    await asyncio.wait_for(ws.recv(), 120)
                held.append(ws)
            except Exception as exc:
                failed += 1
                if not first_error:
                    first_error = f"{type(exc).__name__}: {exc}"[:200]

    await asyncio.gather(*(open_one(i) for i in range(count)))
    print(f"opened {len(held)} failed {failed} {first_error}".strip(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for ws in held:
        ws.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("idle",))
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect-frame", action="store_true")
    parser.add_argument("--parallel", type=int, default=64)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    asyncio.run(
        hold_idle(args.url, headers, args.count, args.prefix, args.expect_frame, args.parallel)
    )


if __name__ == "__main__":
    main()
