"""The sessions live in this process, and who may see them.

A session belongs to the user who created it. :class:`SessionHub` loads a
session from the :class:`~runtime.store.Store` into this process the first
time a client opens it, keeps one :class:`~runtime.conversation.Conversation`
per live session whatever the number of streams attached, and refuses any
other user with :class:`~runtime.errors.PermissionDenied`. Across replicas,
a session is live in one process at a time: the hub holds and renews its
lease (:class:`~runtime.leases.Leases`).
"""

from __future__ import annotations

import asyncio

import structlog

from mesh.ids import SESSION_ID, SESSION_ID_RULE
from runtime.conversation import Conversation, ConversationSettings
from runtime.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from runtime.llm import ChatModel
from runtime.metrics import RuntimeMetrics
from runtime.state import Session
from runtime.store import SessionExists, SessionRow, Store

log = structlog.get_logger("runtime.hub")


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if well formed, else raise InvalidArgument."""
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidArgument(f"session_id must be {SESSION_ID_RULE}")
    return session_id


class SessionHub:
    """The sessions live in this process, each with its one Conversation.

    A session is served by one runtime replica at a time: opening it takes a
    lease in the database (``lease_ttl`` seconds, renewed every third of it
    while the session is live here); a replica that finds the lease held by
    another refuses with :class:`~runtime.errors.Unavailable` (retryable), and
    takes the session over once the holder stops renewing. ``start`` begins
    the renewals; ``close`` cancels every running turn and releases the
    leases; idempotent.
    """

    def __init__(
        self,
        store: Store,
        llm: ChatModel,
        settings: ConversationSettings,
        *,
        default_agent: str,
        metrics: RuntimeMetrics | None = None,
        replica: str = "runtime",
        lease_ttl: float = 15.0,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._llm = llm
        self._settings = settings
        self._default_agent = default_agent
        self._live: dict[str, Conversation] = {}
        self._lock = asyncio.Lock()
        self._replica = replica
        self._lease_ttl = lease_ttl
        self._heartbeat: asyncio.Task[None] | None = None
        self._releases: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Start renewing the leases of live sessions (every third of their TTL)."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            live = list(self._live)
            try:
                held = await self._store.leases.renew(self._replica, live, self._lease_ttl)
            except Exception:  # the database is down: keep serving, try again
                log.warning("lease_renewal_failed", exc_info=True)
                continue
            for session_id in set(live) - held:
                conversation = self._live.pop(session_id, None)
                if conversation is not None:
                    log.warning("lease_lost", session_id=session_id)
                    await conversation.abandon()

    @property
    def store(self) -> Store:
        return self._store

    async def open(self, session_id: str, owner: str) -> tuple[Conversation, bool]:
        """The owner's live session, created if new; ``(conversation, created)``.

        A session whose turn was cut off (by a crash, or by losing its lease)
        numbers its next events after every seq its text deltas may have
        used (:attr:`Session.seq_reserved`), so no seq a client saw names a
        different event. Raises InvalidArgument for a malformed id and
        PermissionDenied when the session belongs to someone else.
        """
        check_session_id(session_id)
        async with self._lock:
            live = self._live.get(session_id)
            if live is not None:
                if live.session.owner != owner:
                    raise PermissionDenied("session belongs to another user")
                return live, False
            row = await self._store.get_session(session_id)
            created = row is None
            if row is None:
                try:
                    row = await self._store.create_session(session_id, owner, self._default_agent)
                except SessionExists:
                    row = await self._store.get_session(session_id)
                    if row is None:  # pragma: no cover - deleted in between
                        raise NotFound("session disappeared") from None
                    created = False
            if row.owner != owner:
                raise PermissionDenied("session belongs to another user")
            release = self._releases.pop(session_id, None)
            if release is not None:
                # It was just evicted here: its lease release must not land
                # after the lease is taken again below.
                await asyncio.wait([release])
            if not await self._store.leases.acquire(session_id, self._replica, self._lease_ttl):
                raise Unavailable(
                    "another runtime replica serves this session; retry shortly "
                    "(it moves here when that replica's lease expires)"
                )
            session = Session.from_store(await self._store.load(session_id))
            conversation = Conversation(
                session,
                self._llm,
                self._store,
                self._settings,
                on_idle=self._evict,
                metrics=self._metrics,
            )
            self._live[session_id] = conversation
        if session.state == "running":
            # This process did not run that turn: whoever did is gone, with
            # text deltas it may have sent but never wrote, numbered at most
            # up to the reservation. Number on after it.
            session.last_seq = max(session.last_seq, session.seq_reserved)
            await conversation.mark_interrupted()
        return conversation, created

    async def owned(self, session_id: str, owner: str) -> SessionRow:
        """The owner's session row.

        Raises NotFound for a missing session and PermissionDenied for someone
        else's (the gateway shows both as 404 in its views, and refuses the
        WebSocket handshake to a foreign session with 403).
        """
        check_session_id(session_id)
        row = await self._store.get_session(session_id)
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        if row.owner != owner:
            raise PermissionDenied("session belongs to another user")
        return row

    def live(self, session_id: str) -> Conversation | None:
        return self._live.get(session_id)

    async def create(self, session_id: str, owner: str, title: str) -> SessionRow:
        """A new session of ``owner``'s. Raises InvalidArgument for a malformed
        id and AlreadyExists for a taken one — the same whoever holds it, so
        the answer tells nothing about another user's session but that its
        id is taken (session ids are one namespace; generated ones are random)."""
        check_session_id(session_id)
        try:
            return await self._store.create_session(session_id, owner, self._default_agent, title)
        except SessionExists:
            raise AlreadyExists(
                f"session id {session_id!r} is taken; choose another or let the server pick one"
            ) from None

    def _evict(self, conversation: Conversation) -> None:
        session_id = conversation.session.session_id
        if self._live.get(session_id) is conversation:
            del self._live[session_id]
            release = asyncio.create_task(self._store.leases.release(session_id, self._replica))
            self._releases[session_id] = release
            release.add_done_callback(
                lambda done: (
                    self._releases.pop(session_id, None)
                    if self._releases.get(session_id) is done
                    else None
                )
            )

    async def close(self) -> None:
        """Cancel running turns, release every lease; idempotent."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat])
            self._heartbeat = None
        for session_id, conversation in list(self._live.items()):
            await conversation.close()
            await self._store.leases.release(session_id, self._replica)
        self._live.clear()
        if self._releases:
            await asyncio.wait(list(self._releases.values()))
