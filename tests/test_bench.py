"""The benchmark scripts' parts: the relay's merging and its streams to the
source (on a real source server), the paced-delivery score, the capacity
ramp's stopping rule and the CPU meter's thread groups (no timing)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "bench"))

import bench_mesh
import capacity
import grpc_floor
import load
import relay

MS = 1_000_000  # ns


def test_the_tight_relay_merges_runs_of_tokens_but_never_an_end_of_turn() -> None:
    batch = [b"a ", b"b ", relay.END_OF_TURN, b"c ", relay.END_OF_TURN]

    assert list(relay.merged(batch)) == [b"a b ", b"", b"c ", b""]
    assert list(relay.merged([b"x "])) == [b"x "]
    assert list(relay.one_by_one(batch)) == batch


def _turn(arrivals_ms: list[float]) -> load.Turn:
    return load.Turn(sent=0, arrivals=[int(a * MS) for a in arrivals_ms])


def test_delivery_is_the_pace_each_stream_got() -> None:
    on_time = _turn([10.0 * i for i in range(1, 11)])  # 10 tokens, one per 10 ms
    half_pace = _turn([20.0 * i for i in range(1, 11)])
    started_late = _turn([500 + 10.0 * i for i in range(10)])  # TTFT, not pace

    assert load.delivery([on_time], 1, 10, 0.01) == pytest.approx(1.0)
    assert load.delivery([half_pace], 1, 10, 0.01) == pytest.approx(0.5)
    assert load.delivery([started_late], 1, 10, 0.01) == pytest.approx(1.0)
    # a burst after a stall cannot make up for the stall: at most 1 per turn
    assert load.delivery([on_time, _turn([1.0] * 10)], 2, 10, 0.01) == pytest.approx(1.0)


def test_delivery_counts_missing_tokens_and_failed_turns() -> None:
    five_of_ten = _turn([10.0 * i for i in range(1, 6)])
    on_time = _turn([10.0 * i for i in range(1, 11)])

    assert load.delivery([five_of_ten], 1, 10, 0.01) == pytest.approx(0.5)
    assert load.delivery([on_time], 2, 10, 0.01) == pytest.approx(0.5)  # one turn failed
    assert load.delivery([], 0, 10, 0.01) == 0.0


def test_a_step_holds_on_delivery_errors_and_latency_against_the_relay() -> None:
    good = capacity.Step(50, delivery=0.995, p99_ms=6.0, errors=0)

    assert capacity.holds(good)  # the relay: no latency bound
    assert capacity.holds(good, reference_p99_ms=4.0)  # within relay + 2 ms
    assert not capacity.holds(good, reference_p99_ms=3.9)
    assert not capacity.holds(capacity.Step(50, 0.98, 1.0, 0), reference_p99_ms=5.0)
    assert not capacity.holds(capacity.Step(50, 1.0, 1.0, 1))
    assert not capacity.holds(capacity.Step(50, 1.0, None, 0), reference_p99_ms=5.0)


def test_capacity_is_the_last_step_before_the_first_failure() -> None:
    assert capacity.largest_sustained([(50, True), (100, True), (150, False)]) == 100
    # a later step that passes by luck does not count
    assert capacity.largest_sustained([(50, True), (100, False), (150, True)]) == 50
    assert capacity.largest_sustained([(50, False)]) == 0
    assert capacity.largest_sustained([]) == 0
    assert capacity.ramp(50, 50, 200) == [50, 100, 150, 200]


def test_a_step_that_fails_is_run_again_and_the_last_run_decides() -> None:
    def runs(*outcomes: tuple[bool, bool]):  # type: ignore[no-untyped-def]
        made: list[tuple[int, bool]] = []

        def run_once(attempt: int, mesh_on: bool) -> tuple[bool, bool]:
            made.append((attempt, mesh_on))
            return outcomes[attempt - 1]

        return run_once, made

    run_once, made = runs((True, True))
    assert capacity.tried(run_once, mesh_on=True) == (True, True)
    assert made == [(1, True)]  # sustained at once: one run
    run_once, made = runs((True, False), (True, True))
    assert capacity.tried(run_once, mesh_on=True) == (True, True)
    assert made == [(1, True), (2, True)]  # one unlucky run does not end the ramp
    run_once, made = runs((True, False), (False, False))
    assert capacity.tried(run_once, mesh_on=True) == (False, False)
    assert len(made) == capacity.TRIES  # failed every time: the last run decides
    run_once, made = runs((True, False))
    assert capacity.tried(run_once, mesh_on=False) == (True, False)
    assert made == [(1, False)]  # the mesh already failed an earlier step: the relay alone, once
    run_once, made = runs((False, False), (True, False))
    assert capacity.tried(run_once, mesh_on=False) == (True, False)
    assert made == [(1, False), (2, False)]  # the relay gets its second run too


def test_threads_are_grouped_as_the_event_loop_grpc_core_and_the_rest() -> None:
    assert bench_mesh.thread_group(100, 100, "python") == "main"
    assert bench_mesh.thread_group(100, 101, "event_engine") == "grpc"
    assert bench_mesh.thread_group(100, 102, "grpc_global_tim") == "grpc"
    assert bench_mesh.thread_group(100, 103, "python") == "other"  # a SQLite worker, gRPC's poller


def test_a_process_threads_cpu_is_read_by_group() -> None:
    done = threading.Event()

    def burn() -> None:
        total = 0
        while not done.is_set():
            total += sum(range(1000))

    worker = threading.Thread(target=burn)
    worker.start()
    try:
        before = bench_mesh.thread_cpu_seconds(os.getpid())
        for _ in range(100_000):  # until the worker has run (the main thread runs too)
            after = bench_mesh.thread_cpu_seconds(os.getpid())
            if after["other"] > before["other"]:
                break
    finally:
        done.set()
        worker.join()
    assert set(after) == set(bench_mesh.THREAD_GROUPS)
    assert after["other"] > before["other"]
    # A running thread's schedstat moves at the scheduler's ticks and switches.
    for _ in range(100_000):
        os.sched_yield()
        after = bench_mesh.thread_cpu_seconds(os.getpid())
        if after["main"] > before["main"]:
            break
    assert after["main"] > before["main"]


def test_added_latency_is_told_by_the_tokens_place_in_their_turn() -> None:
    # Two turns of ten tokens: each token 1 ms late, but the first and the
    # last of each 9 ms (a turn's start and end waiting behind other work).
    turns = []
    for _ in range(2):
        late = [9, 1, 1, 1, 1, 1, 1, 1, 1, 9]
        stamps = [i * 10 * MS for i in range(10)]
        turns.append(
            load.Turn(
                sent=0,
                arrivals=[s + d * MS for s, d in zip(stamps, late, strict=True)],
                stamps=stamps,
            )
        )
    turns.append(load.Turn(sent=0, arrivals=[5 * MS], stamps=[]))  # unstamped: left out
    by_tenth = bench_mesh.added_p99_by_tenth(turns)
    assert by_tenth == [9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0]
    assert bench_mesh.added_p99_by_tenth([]) == [None] * 10


def test_the_grpc_floor_table_gives_each_environments_range_over_its_runs() -> None:
    args = argparse.Namespace(messages=100, calls=10, per_call=2)
    figures = dict.fromkeys(grpc_floor.LABELS, 50.0)
    runs = {
        "defaults": [figures, {**figures, "raw: read": 70.4}],
        "services'": [figures, figures],
    }

    table = grpc_floor.table(args, runs).splitlines()

    assert table[2] == "| µs of CPU | defaults | services' |"
    assert "| client read, raw bytes | 50–70 | 50 |" in table  # noqa: RUF001
    assert len(table) == 4 + len(grpc_floor.LABELS)


async def test_the_tight_relays_turns_share_streams_to_the_source_as_the_runtimes_calls_do() -> (
    None
):
    """Turns at once each get their own tokens and end; a stream carries
    ``CALLS_PER_STREAM`` turns, then the next turn opens another."""
    import asyncio

    import grpc

    from tests.conftest import free_port

    port = free_port()
    server = await relay.serve_source(port, relay.merged)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            streams = relay._SourceStreams(channel)

            async def turn(tokens: int) -> list[bytes]:
                return [t async for t in streams.turn(b"%d 0.001" % tokens)]

            answers = await asyncio.gather(*(turn(n) for n in (3, 5, 7)))
            words = [b"".join(answer).split() for answer in answers]
            assert [len(w) for w in words] == [3, 5, 7]
            assert all(w.startswith(b"w%d@" % i) for ws in words for i, w in enumerate(ws))
            assert len(streams._streams) == 1
            for _ in range(relay.CALLS_PER_STREAM - 3):
                await turn(1)
            assert streams._streams == []  # retired: it carried its share
            assert len(b"".join(await turn(2)).split()) == 2
            assert len(streams._streams) == 1
    finally:
        await server.stop(0)


def test_the_tight_relay_multiplexes_its_turns_when_the_runtime_does() -> None:
    assert not bench_mesh.multiplexed({})
    assert not bench_mesh.multiplexed({"AGENT_RUNTIME__LLM_PROXY_MULTIPLEX": "false"})
    assert bench_mesh.multiplexed({"AGENT_RUNTIME__LLM_PROXY_MULTIPLEX": "true"})
    assert bench_mesh.multiplexed({"AGENT_RUNTIME__LLM_PROXY_MULTIPLEX": " On "})
