"""mesh.outbox: adaptive coalescing keeps order, merges only while behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mesh.outbox import Outbox


def merge_strings(batch: list[object]) -> Iterator[object]:
    """Runs of str become one str; anything else passes alone."""
    run: list[str] = []
    for item in batch:
        if isinstance(item, str):
            run.append(item)
            continue
        if run:
            yield "".join(run)
            run = []
        yield item
    if run:
        yield "".join(run)


class SlowSink:
    """A send that suspends once per message (a write in flight), or waits
    for ``gate``; ``entered`` and ``written`` tell the test where it is."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.written = asyncio.Event()

    async def send(self, message: object) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0)  # the write's own suspension
        self.sent.append(message)
        self.written.set()


async def test_an_idle_stream_sends_each_item_alone() -> None:
    sink = SlowSink()
    outbox: Outbox[object, object] = Outbox(sink.send, merge_strings)
    for word in ("a", "b", "c"):
        sink.written.clear()
        outbox.put(word)
        await sink.written.wait()  # the producer is slower than the stream
    await outbox.close()
    assert sink.sent == ["a", "b", "c"]
    assert outbox.writes == 3


async def test_items_queued_behind_a_write_are_merged_but_never_across_others() -> None:
    sink = SlowSink()
    sink.gate = asyncio.Event()
    outbox: Outbox[object, object] = Outbox(sink.send, merge_strings)
    outbox.put("first")
    await sink.entered.wait()  # the sender took "first" and waits on the gate
    for item in ("a", "b", 1, "c", "d", 2):
        outbox.put(item)
    sink.gate.set()
    await outbox.close()
    assert sink.sent == ["first", "ab", 1, "cd", 2]


async def test_a_failed_write_surfaces_at_the_next_put_and_at_close() -> None:
    failed = asyncio.Event()

    async def broken(message: object) -> None:
        failed.set()
        raise ConnectionError("peer gone")

    outbox: Outbox[object, object] = Outbox(broken, merge_strings)
    outbox.put("x")
    await failed.wait()  # the sender raised in the same step: it is done
    with pytest.raises(ConnectionError):
        outbox.put("y")
    with pytest.raises(ConnectionError):
        await outbox.close()


async def test_cancel_drops_what_is_queued() -> None:
    sink = SlowSink()
    sink.gate = asyncio.Event()
    outbox: Outbox[object, object] = Outbox(sink.send, merge_strings)
    outbox.put("a")
    await sink.entered.wait()
    outbox.put("b")
    outbox.cancel()
    sink.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await outbox.close()  # waits for the cancelled sender to end
    assert sink.sent == []
    with pytest.raises(RuntimeError):
        outbox.put("c")


async def test_a_producer_that_never_yields_still_gets_its_first_item_out_first() -> None:
    """A burst read from one socket buffer: send() lets the idle sender start
    the first write at once; the rest queue behind it and merge."""
    sink = SlowSink()
    sink.gate = asyncio.Event()
    outbox: Outbox[object, object] = Outbox(sink.send, merge_strings)
    for word in ("a", "b", "c", "d"):
        await outbox.send(word)  # yields only when the sender was idle
    sink.gate.set()
    await outbox.close()
    assert sink.sent == ["a", "bcd"]
