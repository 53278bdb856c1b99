"""The session's event stream without a database: an in-memory log stands in."""

from __future__ import annotations

import asyncio

from runtime.events import AssistantText, ErrorEvent, Sequenced, TurnDone, TurnStatus
from runtime.metrics import RuntimeMetrics
from runtime.records import EventRecord, Step
from runtime.state import Session
from runtime.stream import (
    END_OF_STREAM,
    SESSION_MOVED,
    EventStream,
    Resend,
    Subscriber,
)


class MemoryLog:
    """Keeps steps in memory; a commit waits for ``gate`` when one is set."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.reserved = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def commit(self, step: Step) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.steps.append(step)
        if step.seq_reserved is not None:
            self.reserved = max(self.reserved, step.seq_reserved)

    async def reserve_seqs(self, session_id: str, upto: int) -> None:
        self.reserved = max(self.reserved, upto)

    async def events_after(self, session_id: str, after_seq: int) -> list[EventRecord]:
        rows = [row for step in self.steps for row in step.events if row.last_seq > after_seq]
        return sorted(rows, key=lambda row: row.seq)


def make(*, queue: int = 100, max_replay: int = 1000) -> tuple[EventStream, MemoryLog, Session]:
    session = Session("s-1", "alice", "coder")
    log = MemoryLog()
    stream = EventStream(
        session, log, subscriber_queue=queue, max_replay=max_replay, metrics=RuntimeMetrics()
    )
    return stream, log, session


def drain(subscriber: Subscriber) -> list[object]:
    items: list[object] = []
    while not subscriber.queue.empty():
        items.append(subscriber.queue.get_nowait())
    return items


async def test_durable_events_go_out_only_once_their_step_is_written() -> None:
    stream, log, session = make()
    subscriber = stream.subscribe()
    done = TurnDone(TurnStatus.COMPLETED)
    assert stream.durable(ErrorEvent("x", "y")) == 1
    assert stream.durable(done) == 2
    assert drain(subscriber) == [], "not before the write"
    await stream.flush()
    assert drain(subscriber) == [Sequenced(1, ErrorEvent("x", "y")), Sequenced(2, done)]
    (step,) = log.steps
    assert [(row.seq, row.kind) for row in step.events] == [(1, "error"), (2, "turn_done")]
    assert step.last_seq == session.last_seq == 2
    assert stream.published_seq == 2


async def test_text_goes_out_at_once_within_a_reservation_and_is_written_as_one_row() -> None:
    stream, log, _ = make()
    subscriber = stream.subscribe()
    await stream.text("Hello ")
    assert log.reserved >= 1, "reserved before it was sent"
    await stream.text("world")
    assert drain(subscriber) == [
        Sequenced(1, AssistantText("Hello ")),
        Sequenced(2, AssistantText("world")),
    ]
    stream.durable(TurnDone(TurnStatus.COMPLETED))
    await stream.flush()
    (step,) = log.steps
    assert step.events[0] == EventRecord(1, 2, "text", {"chunks": [[1, "Hello "], [2, "world"]]})
    assert step.events[1].seq == 3
    replay, recovered = await stream.events_after(0)
    assert recovered
    assert [item.seq for item in replay] == [1, 2, 3]


async def test_a_replay_during_the_write_reads_the_text_from_memory_once() -> None:
    stream, log, _ = make()
    await stream.text("a")
    await stream.text("b")
    log.gate = asyncio.Event()
    writing = asyncio.create_task(stream.flush())
    await log.entered.wait()  # the commit waits at the gate
    replay, _ = await stream.events_after(0)
    assert replay == [Sequenced(1, AssistantText("a")), Sequenced(2, AssistantText("b"))]
    log.gate.set()
    await writing
    replay, _ = await stream.events_after(1)
    assert replay == [Sequenced(2, AssistantText("b"))], "from the log now, and once"


async def test_a_running_session_renews_its_reservation_in_a_step() -> None:
    stream, log, session = make()
    session.state = "running"
    await stream.flush()
    assert log.steps[0].seq_reserved is not None
    assert session.seq_reserved == log.reserved > session.last_seq


async def test_positions_it_cannot_replay_are_not_recovered() -> None:
    stream, _, session = make(max_replay=2)
    for _ in range(4):
        stream.durable(ErrorEvent("x", "y"))
    await stream.flush()
    assert await stream.events_after(None) == ([], True)
    assert await stream.events_after(session.last_seq + 1) == ([], False), "ahead of the log"
    assert await stream.events_after(1) == ([], False), "too far behind"
    replay, recovered = await stream.events_after(2)
    assert recovered
    assert [item.seq for item in replay] == [3, 4]


async def test_a_full_queue_drops_events_but_never_control_items() -> None:
    stream, _, _ = make(queue=2)
    subscriber = stream.subscribe()
    stream.publish(Sequenced(0, ErrorEvent("a", "a")))
    subscriber.offer(Resend(0))
    stream.publish(Sequenced(0, ErrorEvent("b", "b")))
    assert subscriber.overflowed
    subscriber.offer(END_OF_STREAM)
    assert drain(subscriber) == [Resend(0), END_OF_STREAM]


async def test_a_moved_session_drops_what_is_unwritten_and_ends_its_streams() -> None:
    stream, log, _ = make()
    subscriber = stream.subscribe()
    await stream.text("lost")
    stream.durable(ErrorEvent("x", "y"))
    drain(subscriber)
    stream.moved()
    assert drain(subscriber) == [SESSION_MOVED]
    assert await stream.events_after(0) == ([], True)
    assert not stream.pending_output
    assert log.steps == []


async def test_a_stream_is_settled_only_with_nothing_gathered_and_no_write_in_flight() -> None:
    """What a resting session needs (runtime/resting.py): every step written."""
    stream, log, _ = make()
    assert stream.settled
    stream.step().events.append(EventRecord(1, 1, "turn_done", {}))
    assert not stream.settled, "a step gathered, not yet written"
    log.gate = asyncio.Event()
    flushing = asyncio.create_task(stream.flush())
    await log.entered.wait()
    assert not stream.settled, "its write is in flight"
    log.gate.set()
    await flushing
    assert stream.settled
