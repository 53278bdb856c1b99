"""One session's event stream: numbering, ordered durable writes, fan-out, replay.

Every event a session tells its clients gets the session's next ``seq``.
:class:`EventStream` gives it out, gathers what a turn step changes into one
:class:`~runtime.records.Step` (its durable events among it), writes each step
in one transaction, in order, and only then hands its events to the attached
streams (:class:`Subscriber`). Text deltas are the exception: they go out at
once and are written as one log row with the next step; until that write is
done a replay reads them from memory, so a client resuming mid-answer misses
none. Their seqs are reserved durably ahead of use (``SEQ_RESERVE_BLOCK``),
so a runtime taking the session over after a crash never reuses a seq a
client saw.

What a stream's pump receives besides events are real values: a
:class:`Resend` (replay after a seq), :data:`END_OF_STREAM` and
:data:`SESSION_MOVED`.

No transport and no turn logic here: :class:`~runtime.dispatch.Dispatcher`
decides what a step holds, :class:`~runtime.conversation.Conversation` flushes
it, the gRPC servicer writes what subscribers receive.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import structlog

from runtime.events import AssistantText, Event, Sequenced, from_payload, to_payload
from runtime.metrics import RuntimeMetrics
from runtime.records import EventRecord, Step
from runtime.state import Session

log = structlog.get_logger("runtime.stream")

SEQ_RESERVE_BLOCK = 4096
"""Text-delta sequence numbers reserved at a time (see :meth:`EventStream.text`)."""
SEQ_RESERVE_LOW = 1024
"""A step written while a turn runs renews the reservation when fewer are left."""


class EventLog(Protocol):
    """Where a stream's steps are written (:class:`runtime.store.Store`; a test fake)."""

    async def commit(self, step: Step) -> None: ...

    async def reserve_seqs(self, session_id: str, upto: int) -> None: ...

    async def events_after(self, session_id: str, after_seq: int) -> list[EventRecord]: ...


@dataclass(frozen=True, slots=True)
class Resend:
    """Asks a stream's pump to replay the events after ``after_seq``."""

    after_seq: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Tells a stream's pump that everything queued before it was all."""


@dataclass(frozen=True, slots=True)
class SessionMoved:
    """Tells a stream's pump that this replica lost the session: end retryably."""


@dataclass(frozen=True, slots=True)
class SessionDeleted:
    """Tells a stream's pump that the session was deleted: end for good."""


END_OF_STREAM = EndOfStream()
SESSION_MOVED = SessionMoved()
SESSION_DELETED = SessionDeleted()

Control = Resend | EndOfStream | SessionMoved | SessionDeleted
"""What a subscriber receives that is not an event; never dropped."""


@dataclass(slots=True)
class Subscriber:
    """One attached stream's view of the session's events.

    The queue is bounded. A stream that falls behind by a full queue is not
    ended: its queued events are dropped and it is marked ``overflowed``,
    and its pump catches up from the log (every event it missed is there,
    or in memory until written), then goes on live. Control items (a
    resend, the end of the stream, a moved session) are never dropped.
    """

    queue: asyncio.Queue[Sequenced | Control]
    overflowed: bool = False

    def offer(self, item: Sequenced | Control) -> None:
        """Queue ``item`` without blocking (see the class docstring)."""
        if self.overflowed and isinstance(item, Sequenced):
            return  # the catch-up reads it from the log
        try:
            self.queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        kept: list[Sequenced | Control] = []
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            if not isinstance(queued, Sequenced):
                kept.append(queued)
        if not isinstance(item, Sequenced):
            kept.append(item)
        for queued in kept:
            self.queue.put_nowait(queued)
        self.overflowed = True


class EventStream:
    """The numbered, durable, fanned-out events of one live session.

    ``session`` is the state the stream numbers from (``last_seq``,
    ``seq_reserved``) and whose summary each step writes. ``subscriber_queue``
    bounds each subscriber's queue; a client further behind than
    ``max_replay`` events is not replayed to (it reloads).
    """

    session: Session

    def __init__(
        self,
        session: Session,
        store: EventLog,
        *,
        subscriber_queue: int,
        max_replay: int,
        metrics: RuntimeMetrics,
    ) -> None:
        self.session = session
        self._store = store
        self._subscriber_queue = subscriber_queue
        self._max_replay = max_replay
        self._metrics = metrics
        self._subscribers: list[Subscriber] = []
        self.published_seq = session.last_seq
        """The highest seq handed to subscribers (what a live-only stream starts after)."""
        self._step: Step | None = None
        self._outgoing: list[Sequenced] = []
        self._unflushed: list[tuple[int, str]] = []
        """Text deltas sent but not yet known to be in the log (replays read them)."""
        self._text_written_upto = 0
        """The last delta seq put in a step (its commit may still be in flight)."""
        self._commit_lock = asyncio.Lock()

    # -- subscribers -----------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether any stream is subscribed."""
        return bool(self._subscribers)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(asyncio.Queue(maxsize=self._subscriber_queue))
        self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Detach ``subscriber``; idempotent."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

    def publish(self, item: Sequenced) -> None:
        """Hand ``item`` to every subscriber now (seq 0: an ephemeral answer, not logged).

        Never blocks on one slow stream: a stream that falls a whole queue
        behind catches up from the log (:meth:`Subscriber.offer`).
        """
        if item.seq > self.published_seq:
            self.published_seq = item.seq
        for subscriber in self._subscribers:
            if subscriber.overflowed:
                continue
            subscriber.offer(item)
            if subscriber.overflowed:
                log.info("subscriber_overflowed", session_id=self.session.session_id)

    # -- writing ---------------------------------------------------------------

    def step(self) -> Step:
        """The step being gathered (opened on first use); the next :meth:`flush` writes it."""
        if self._step is None:
            session = self.session
            self._step = Step(
                session_id=session.session_id,
                last_seq=session.last_seq,
                agent=session.agent,
                state=session.state,
                message_count=session.message_count,
            )
        return self._step

    def durable(self, event: Event) -> int:
        """Number ``event`` and queue it with the open step; returns its seq.

        It reaches subscribers once the step is written (:meth:`flush`).
        """
        step = self.step()
        seq = self.session.next_seq()
        kind, payload = to_payload(event)
        step.events.append(EventRecord(seq, seq, kind, payload))
        self._outgoing.append(Sequenced(seq, event))
        return seq

    async def text(self, text: str) -> None:
        """Number a text delta and send it now; it is written with the next step.

        Its seq is durably reserved before it is sent: when the reservation
        runs out, one short write raises it by ``SEQ_RESERVE_BLOCK``.
        """
        session = self.session
        seq = session.next_seq()
        if seq > session.seq_reserved:
            upto = seq + SEQ_RESERVE_BLOCK
            await self._store.reserve_seqs(session.session_id, upto)
            session.seq_reserved = upto
        self._unflushed.append((seq, text))
        self.publish(Sequenced(seq, AssistantText(text)))

    async def flush(self) -> None:
        """Write the open step (and unwritten text) with the session's summary, then send
        its events.

        Steps are written one at a time, in order. The write is shielded: a
        cancelled caller does not leave half a step unwritten (it finishes
        in the background; :meth:`drain` waits for it).
        """
        session = self.session
        step = self.step()
        text = [(seq, t) for seq, t in self._unflushed if seq > self._text_written_upto]
        if text:
            chunks = [[seq, t] for seq, t in text]
            step.events.insert(0, EventRecord(text[0][0], text[-1][0], "text", {"chunks": chunks}))
            self._text_written_upto = text[-1][0]
        step.last_seq = session.last_seq
        step.agent = session.agent
        step.state = session.state
        step.message_count = session.message_count
        step.title = session.title or None
        if session.state == "running" and session.seq_reserved - session.last_seq < SEQ_RESERVE_LOW:
            # Model calls follow: reserve their deltas' seqs in this write,
            # so streaming rarely waits for a write of its own.
            step.seq_reserved = session.last_seq + SEQ_RESERVE_BLOCK
        outgoing, self._outgoing, self._step = self._outgoing, [], None
        await asyncio.shield(self._commit(step, self._text_written_upto))
        if step.seq_reserved is not None:
            session.seq_reserved = max(session.seq_reserved, step.seq_reserved)
        for item in outgoing:
            self.publish(item)

    async def _commit(self, step: Step, text_upto: int) -> None:
        async with self._commit_lock:
            with self._metrics.db_commit.time():
                await self._store.commit(step)
        # Only now do replays find this text in the log: until here they read
        # it from memory (a replay between the two would otherwise miss it).
        self._unflushed = [(seq, t) for seq, t in self._unflushed if seq > text_upto]

    @property
    def pending_output(self) -> bool:
        """Whether durable events wait for the next :meth:`flush`."""
        return bool(self._outgoing)

    @property
    def settled(self) -> bool:
        """Nothing is gathered to be written and no write is in flight."""
        return self._step is None and not self._commit_lock.locked()

    async def drain(self) -> None:
        """Return once no write of this stream is in flight."""
        async with self._commit_lock:
            pass

    def moved(self, *, deleted: bool = False) -> None:
        """The session moved to another replica (or was deleted): drop what is
        unwritten (the other replica owns the log now; a deleted session has
        none) and end every subscriber's stream, retryably unless deleted."""
        self._step, self._outgoing, self._unflushed = None, [], []
        ending = SESSION_DELETED if deleted else SESSION_MOVED
        for subscriber in self._subscribers:
            subscriber.offer(ending)

    # -- replay ------------------------------------------------------------------

    async def events_after(self, after_seq: int | None) -> tuple[list[Sequenced], bool]:
        """The session's events after ``after_seq`` (none for None), and ``recovered``.

        ``recovered`` is False when they cannot be had: the client is more
        than ``max_replay`` events behind, or ahead of every seq the session
        gave out (after a restart).
        """
        if after_seq is None:
            return [], True
        session = self.session
        if after_seq > session.last_seq:
            # No seq this session gave out is that high (a crash skips past
            # every seq its unwritten deltas may have used): the position is
            # not one of ours. The session's numbering stays as it is.
            return [], False
        if session.last_seq - after_seq > self._max_replay:
            return [], False
        snapshot = [(seq, text) for seq, text in self._unflushed if seq > after_seq]
        rows = await self._store.events_after(session.session_id, after_seq)
        found: dict[int, Event] = {}
        for row in rows:
            if row.kind == "text":
                for seq, text in row.payload["chunks"]:
                    if seq > after_seq:
                        found[seq] = AssistantText(text)
            else:
                found[row.seq] = from_payload(row.kind, row.payload)
        for seq, text in snapshot:
            found[seq] = AssistantText(text)
        return [Sequenced(seq, found[seq]) for seq in sorted(found)], True
