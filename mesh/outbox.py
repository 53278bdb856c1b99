"""Adaptive coalescing for an outbound stream: one sender, merged when behind.

A hop that relays a token stream pays per message it writes (encoding, a
syscall, the next hop's read). :class:`Outbox` lets the producer hand over
every item without waiting, and one sender task writes them in order: when
the stream is idle, an item goes out as soon as the producer yields; when a
write is still in flight, items queue, and the next write takes all of them
through ``merge``, which may combine neighbours (text deltas) into one
message. Latency stays that of a single write when the path is idle, and the
number of writes falls as the load rises.

``merge`` must keep order and must not combine across an item it cannot
merge: it sees the queued items as one list and returns the messages to
write for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
M = TypeVar("M")


class Outbox(Generic[T, M]):
    """Items of type ``T`` put without waiting, written as ``M`` by one task.

    Must be created inside a running event loop. :meth:`close` sends what is
    queued and stops; :meth:`cancel` drops it. If a write fails, the next
    :meth:`put` and :meth:`close` raise that error.
    """

    def __init__(
        self,
        send: Callable[[M], Awaitable[object]],
        merge: Callable[[list[T]], Iterable[M]],
    ) -> None:
        self._send = send
        self._merge = merge
        self._items: list[T] = []
        self._closing = False
        self._wakeup: asyncio.Future[None] | None = None
        self._idle = True
        """The sender holds nothing: it waits, or has not started yet."""
        self._sender = asyncio.get_running_loop().create_task(self._run())
        self.writes = 0
        """Messages written so far (each one ``merge`` result)."""

    def put(self, item: T) -> bool:
        """Queue ``item``; it is written once the caller next yields.

        Returns True when the sender was idle (nothing queued, no write in
        flight): the caller should yield before producing more, or the
        first item waits for everything it produces in one go (see
        :meth:`send`).
        """
        if self._sender.done():
            self._raise_failure()
        if self._closing:
            raise RuntimeError("put() after close()")
        self._items.append(item)
        idle = self._idle
        self._wake()
        return idle

    async def send(self, item: T) -> None:
        """:meth:`put`, then let an idle sender start writing ``item`` now.

        A producer that reads buffered input without ever suspending (a
        burst of chunks that arrived in one socket read) would otherwise
        delay the first item until the burst is consumed. One loop turn per
        idle-to-busy transition; while a write is in flight it never yields.
        """
        if self.put(item):
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Write everything queued, then stop the sender; raises its error."""
        self._closing = True
        self._wake()
        await self._sender

    def cancel(self) -> None:
        """Stop the sender now; queued items are dropped."""
        self._closing = True
        self._sender.cancel()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _raise_failure(self) -> None:
        if self._sender.cancelled():
            raise RuntimeError("the outbox was cancelled")
        error = self._sender.exception()
        if error is not None:
            raise error
        raise RuntimeError("the outbox is closed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                if self._closing:
                    return
                self._idle = True
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            self._idle = False
            batch, self._items = self._items, []
            for message in self._merge(batch):
                await self._send(message)
                self.writes += 1
