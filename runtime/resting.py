"""Resting sessions: their histories out of memory until their next turn.

A session stays live in its replica while any stream is attached to it, and
an IDE keeps its stream open all day: without a bound, a replica would hold
the whole history of every session open in any IDE. A session *rests* when
no turn runs and no call waits. :class:`SessionHub` keeps at most
``AGENT_RUNTIME__RESTING_HISTORY_MB`` of resting sessions' histories in
memory: every second (:data:`SWEEP_SECONDS`), past it, the sessions that
have rested longest let theirs go
(:meth:`~runtime.conversation.Conversation.rest`), and the next client event
of such a session reads it back from the database first (:meth:`Keeper.hold`),
before anything looks at it. What a resting session keeps is small and bounded: its numbering, the
calls it answered, its plans, what the IDE told it. Only a session idle
for ``AGENT_RUNTIME__RESTING_AFTER_S`` may rest (:data:`DEFAULT_RESTING_AFTER_S`
says why), so what a replica holds is the budget and the histories of the
sessions active within that time; each history's size is kept as it grows
(:attr:`Keeper.footprint`), so a sweep costs one look per live session.

The history is the database's: a session rests only with nothing left to
write and no write in flight, so what comes back is what was dropped. What
the process learnt about it stays, in a few bytes a message: the token
counts the proxy made of each message (:meth:`ContextWindow.rest
<runtime.context.ContextWindow.rest>`). The next prompt encodes the history
read back once more and sends those counts with it, so waking costs one
query of the few columns a message needs (:meth:`Store.history_columns
<runtime.store.Store.history_columns>`: ~9-13 µs a message on a slow 2-core
machine, a third to a half of reading full records; ``scripts/bench-sqlite``) and the
encoding (~2 µs), not a count by the proxy's tokenizer.

Before it rests, a session idle for :data:`DOZING_AFTER_S` *dozes*
(:meth:`Keeper.doze`): its message objects go and each message's wire form
stays in one buffer (the text and :data:`DOZING_MESSAGE_BYTES` a message,
about a third of a live history of short messages), with its counts. The
buffer is the one the context window made for the last prompt, handed over
(:meth:`~runtime.context.ContextWindow.lend`); its next event decodes the
messages back in one parse, no query, and hands the buffer back to the
window, so nothing is encoded again (doze, wake and the next prompt: 2.3-2.5
µs a message against 7.0-7.5 when the doze and the prompt encoded it). A
dozing history counts towards the budget at that size, and rests past it
like any other. So between turns a session taking one every few seconds
holds a compact history, not the objects, whatever
``AGENT_RUNTIME__RESTING_AFTER_S`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol

import structlog

from runtime.context import Lent
from runtime.llm import ChatMessage, decode_messages, encode_message
from runtime.state import Session, message_from_columns
from runtime.store import Store

log = structlog.get_logger("runtime.resting")

GiveBack = Callable[[Sequence[ChatMessage], bytearray, "array[int]"], None]
"""Takes a waking history's messages and the wire forms they were decoded
from (:meth:`runtime.context.ContextWindow.woke`)."""

DEFAULT_RESTING_HISTORY_MB = 16
"""``AGENT_RUNTIME__RESTING_HISTORY_MB``'s default."""

DEFAULT_RESTING_AFTER_S = 60.0
"""``AGENT_RUNTIME__RESTING_AFTER_S``'s default: a minute. A session idle
for less is taking turns; resting it would read its history back at each
of them (a query and the encoding, 11-15 µs a message; its counts are kept),
work that grows with the history, on a machine already busy with those
turns. In a soak of 1,000 sessions taking a turn every ~15 s for 300 s,
resting them all (0 s, a 4 MiB budget) held the runtime's RSS to +7.6% and
+7.9% instead of +22.9%, while the time to first output rose over the run
(p50 68-93 -> 285-428 ms, against 98 -> 179 ms; docs/BENCHMARKS.md): an
operator may choose that bound, the default keeps busy sessions fast."""

SWEEP_SECONDS = 1.0
"""How often :class:`~runtime.hub.SessionHub` puts idle histories to rest."""

DOZING_AFTER_S = 2.0
"""How long a session is idle before its history *dozes* (:meth:`Keeper.doze`):
its message objects go, their wire forms stay (the text and a few bytes a
message), and its next event decodes them back, with no query. Two sweeps:
a session between two events of one exchange keeps its objects."""

DOZING_MESSAGE_BYTES = 40
"""What one message of a dozing history costs in memory besides its text
(its wire form's framing, its offset, its agent, its counts), measured with
tracemalloc on short messages (tests/runtime/test_resting.py checks it)."""

MESSAGE_OVERHEAD_BYTES = 250
"""What one message of a history costs in memory besides its text (its
objects, its encoded prompt entry, its counts), measured with tracemalloc
on short messages (tests/runtime/test_resting.py checks the estimate)."""

TEXT_COPIES = 2
"""A message's text is held twice: as a string and in its encoded prompt entry."""


def footprint(messages: Sequence[ChatMessage]) -> int:
    """About how many bytes ``messages`` hold in memory as a live history."""
    text = 0
    for message in messages:
        text += len(message.content)
        for call in message.tool_calls:
            text += len(call.name) + len(call.arguments_json) + len(call.call_id)
    return len(messages) * MESSAGE_OVERHEAD_BYTES + TEXT_COPIES * text


async def recall(session: Session, store: Store) -> None:
    """Read a resting ``session``'s history back from ``store``."""
    rows = await store.history_columns(session.session_id)
    if len(rows) != session.resting:
        # Only this replica writes the session while it holds the lease,
        # and it wrote every message it had: a bug, not a race. The
        # database is the history; what comes next is numbered after it.
        log.error(
            "resting_history_mismatch",
            session_id=session.session_id,
            rested=session.resting,
            stored=len(rows),
        )
    for role, content, tool_calls, tool_call_id, name, agent in rows:
        session.messages.append(message_from_columns(role, content, tool_calls, tool_call_id, name))
        session.message_agents.append(agent)
    session.resting = None


class Keeper:
    """A live session's hold on its history: :meth:`hold` reads it back if
    it rested and keeps it from resting until the block ends."""

    def __init__(
        self, session: Session, store: Store, recalled: Callable[[], None] = lambda: None
    ) -> None:
        self._session = session
        self._store = store
        self._recalled = recalled
        self._holds = 0
        self._reading = asyncio.Lock()
        self._counted = 0
        self._last: ChatMessage | None = None
        self._bytes = 0
        self._wire = bytearray()
        self._starts = array("Q")
        """While dozing: each message's wire form, and where each starts."""
        self._give_back: GiveBack | None = None
        self.active_at = time.monotonic()
        """When the session was last active (a client event, a turn's end)."""

    @property
    def held(self) -> bool:
        return self._holds > 0

    @property
    def footprint(self) -> int:
        """:func:`footprint` of the history in memory, kept as it grows: what
        it gained since last asked is counted, and all of it again only when
        it changed otherwise (shorter, or its last counted message replaced)."""
        if self.dozing:
            return self._bytes
        messages = self._session.messages
        counted = self._counted
        if counted > len(messages) or (counted and messages[counted - 1] is not self._last):
            counted = self._bytes = 0
        if counted < len(messages):
            self._bytes += footprint(messages[counted:])
            self._last = messages[-1]
        self._counted = len(messages)
        return self._bytes

    @property
    def dozing(self) -> bool:
        """The history's messages are in :attr:`_wire`, not in the session."""
        return bool(self._starts)

    @property
    def rested(self) -> bool:
        """The history is out of memory (not dozing): :meth:`hold` reads it back."""
        return self._session.resting is not None and not self.dozing

    def doze(self, lent: Lent | None = None, give_back: GiveBack | None = None) -> None:
        """Let the message objects go, keeping each message's wire form
        (:func:`~runtime.llm.encode_message`) and agent: :meth:`hold`
        decodes them back, with no query. ``lent``: the wire forms of the
        history's first messages already made (the context window's,
        :meth:`~runtime.context.ContextWindow.lend`), kept instead of
        encoding them again; ``give_back`` takes them back at the wake, with
        the messages decoded."""
        session = self._session
        assert session.messages, "an empty history has nothing to let go"
        if lent is not None and len(lent[1]) <= len(session.messages):
            self._wire, self._starts = lent
        for message in session.messages[len(self._starts) :]:
            self._starts.append(len(self._wire))
            self._wire += encode_message(message)
        self._give_back = give_back
        session.resting = len(session.messages)
        session.messages.clear()
        self._counted, self._last = 0, None
        self._bytes = len(self._wire) + DOZING_MESSAGE_BYTES * len(self._starts)

    def forget(self) -> None:
        """Drop the history from memory, dozing or not; :meth:`hold` reads it
        back from the database."""
        session = self._session
        if not self.dozing:
            session.resting = len(session.messages)
        session.messages.clear()
        session.message_agents.clear()
        self._let_go()

    def _wake(self) -> None:
        session = self._session
        messages = decode_messages(self._wire)
        session.messages.extend(messages)
        session.resting = None
        if self._give_back is not None:
            self._give_back(messages, self._wire, self._starts)
        self._let_go()

    def _let_go(self) -> None:
        self._give_back = None
        self._wire, self._starts = bytearray(), array("Q")
        self._counted = self._bytes = 0
        self._last = None

    def touch(self) -> None:
        self.active_at = time.monotonic()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self._holds += 1
        try:
            if self.dozing:
                self._wake()
            elif self._session.resting is not None:  # (the lock only when it rested)
                async with self._reading:
                    if self._session.resting is not None:
                        await recall(self._session, self._store)
                        self._recalled()
            yield
        finally:
            self._holds -= 1
            self.touch()


class Rests(Protocol):
    """A live session as :func:`put_to_rest` sees it (a Conversation)."""

    session: Session
    history: Keeper

    @property
    def can_rest(self) -> bool: ...

    def rest(self, *, doze: bool = False) -> None: ...


def put_to_rest(
    live: Iterable[Rests], budget: int, idle_for: float, doze_after: float = DOZING_AFTER_S
) -> int:
    """Let the sessions of ``live`` idle for ``doze_after`` seconds doze,
    then rest those that rested longest until the histories of the others
    that could rest hold at most ``budget`` bytes; how many were put to
    rest. A session that cannot rest (a turn runs, a call waits) is not
    touched; one idle for less than ``idle_for`` seconds is not counted
    and does not rest."""
    live = list(live)
    now = time.monotonic()
    for conversation in live:
        if (
            conversation.history.active_at <= now - doze_after
            and conversation.can_rest
            and conversation.session.resting is None
            and conversation.session.messages
        ):
            conversation.rest(doze=True)
    idle_since = now - idle_for
    awake = [
        (conversation, conversation.history.footprint)
        for conversation in live
        if conversation.history.active_at <= idle_since and conversation.can_rest
    ]
    held = sum(size for _, size in awake)
    rested = 0
    for conversation, size in sorted(awake, key=lambda pair: pair[0].history.active_at):
        if held <= budget:
            break
        conversation.rest()
        held -= size
        rested += 1
    return rested
