"""The sessions live in this process, and who may see them.

A session belongs to the user who created it. :class:`SessionHub` loads a
session from the :class:`~runtime.store.Store` into this process the first
time a client opens it, keeps one :class:`~runtime.conversation.Conversation`
per live session whatever the number of streams attached, and refuses any
other user with :class:`~runtime.errors.PermissionDenied`. Across replicas,
a session is live in one process at a time: the hub holds and renews its
lease (:class:`~runtime.leases.Leases`).

Deleting a session (:meth:`SessionHub.delete`) ends its live conversation
here (every attached stream ends with :class:`~runtime.errors.Deleted`) and
leaves a tombstone: the id stays taken, and opening it again is
:class:`~runtime.errors.Deleted` for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from mesh.ids import SESSION_ID, SESSION_ID_RULE
from runtime import reruns, resting
from runtime.agents import Roster
from runtime.conversation import Conversation
from runtime.errors import (
    AlreadyExists,
    Deleted,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    UpstreamError,
)
from runtime.events import SessionChanged
from runtime.executors import Executors
from runtime.llm import ChatModel
from runtime.metrics import RuntimeMetrics
from runtime.models import check_choice
from runtime.records import SessionRow
from runtime.rules import OperatorLimits
from runtime.settings import ConversationSettings
from runtime.state import Session
from runtime.store import SessionExists, Store

log = structlog.get_logger("runtime.hub")

MAX_TITLE_CHARS = 200
"""A session title's bound (the ``sessions.title`` column)."""


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
        address: str | None = None,
        executors: Executors | None = None,
    ) -> None:
        self._store = store
        self._executors = executors if executors is not None else Executors()
        self._metrics = metrics
        self._llm = llm
        self._settings = settings
        self._default_agent = default_agent
        self._live: dict[str, Conversation] = {}
        self._lock = asyncio.Lock()
        self._replica = replica
        self._lease_ttl = lease_ttl
        self.address = address
        """The gRPC address this replica advertises in its leases (None: not
        said; a replica refused by it cannot redirect the caller here)."""
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._releases: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Start renewing the leases of live sessions (every third of their
        TTL) and putting idle histories to rest (every second)."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_forever())
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._rest_forever())

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
                    await self._executors.release(session_id)

    async def _rest_forever(self) -> None:
        # Every second, not at each lease renewal (every few seconds): a
        # sweep is one look per live session (runtime.resting.Keeper), and
        # a session rests soon after it has been idle for resting_after_s.
        while True:
            await asyncio.sleep(resting.SWEEP_SECONDS)
            try:
                self.rest_idle()
            except Exception:  # a bug: log it, keep serving
                log.exception("resting_sweep_failed")

    def rest_idle(self, doze_after: float = resting.DOZING_AFTER_S) -> int:
        """Let the sessions idle for ``doze_after`` doze, and put to rest the
        sessions idle longest (and at least the operator's ``resting_after_s``)
        while the others that could rest hold more than the operator's bound
        (every second); how many rested (:mod:`runtime.resting`)."""
        settings = self._settings
        rested = resting.put_to_rest(
            self._live.values(),
            settings.resting_history_bytes,
            settings.resting_after_s,
            doze_after,
        )
        if rested:
            if self._metrics is not None:
                self._metrics.histories_rested.inc(rested)
            log.debug("sessions_rested", count=rested, live=len(self._live))
        return rested

    @property
    def store(self) -> Store:
        return self._store

    @property
    def rule_limits(self) -> OperatorLimits:
        """The operator's floor under users' approval rules."""
        return self._settings.rule_limits

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
            if row.deleted_at is not None:
                raise Deleted(f"session {session_id!r} was deleted")
            if row.owner != owner:
                raise PermissionDenied("session belongs to another user")
            await self._take_lease(session_id)
            session = Session.from_store(await self._store.load(session_id))
            conversation = Conversation(
                session,
                self._llm,
                self._store,
                self._settings,
                on_idle=self._evict,
                metrics=self._metrics,
                executors=self._executors,
            )
            if session.pending:
                # A turn waits on calls and goes on here when they are
                # answered: its next calls meet the owner's rules (a deny
                # rule above all), read before any answer can arrive.
                await conversation.load_rules()
            self._live[session_id] = conversation
        if session.state == "running":
            # This process did not run that turn: whoever did is gone, with
            # text deltas it may have sent but never wrote, numbered at most
            # up to the reservation. Number on after it.
            session.last_seq = max(session.last_seq, session.seq_reserved)
            await conversation.mark_interrupted()
        elif session.pending:
            # Calls the runtime ran itself when it stopped fail, never run
            # again unasked (they may have taken effect); the turn goes on.
            await conversation.executions.resume()
        return conversation, created

    async def owned(self, session_id: str, owner: str) -> SessionRow:
        """The owner's session row.

        Raises NotFound for a missing session, Deleted for a deleted one
        (whoever asks) and PermissionDenied for someone else's (the gateway
        shows all three as 404 in its views, and refuses the WebSocket
        handshake to a foreign session with 403, to a deleted one with 404).
        """
        check_session_id(session_id)
        row = await self._store.get_session(session_id)
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        if row.deleted_at is not None:
            raise Deleted(f"session {session_id!r} was deleted")
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

    async def rename(self, session_id: str, owner: str, title: str) -> SessionRow:
        """Set the title of one of ``owner``'s sessions.

        Raises InvalidArgument for a title over 200 characters, what
        :meth:`owned` raises, and Unavailable while another replica serves
        the session (its next step would write the old title back).
        """
        if len(title) > MAX_TITLE_CHARS:
            raise InvalidArgument(f"title must be at most {MAX_TITLE_CHARS} characters")
        async with self._lock:
            await self.owned(session_id, owner)
            live = self._live.get(session_id)
            if live is not None:
                # Steps built from now on carry the new title; one already
                # in flight lands before the write below.
                live.session.title = title
                await live.stream.drain()
                row = await self._store.rename_session(session_id, title)
            else:
                async with self._leased(session_id):
                    row = await self._store.rename_session(session_id, title)
        if row is None:  # pragma: no cover - deleted under the hub's lock: impossible here
            raise Deleted(f"session {session_id!r} was deleted")
        return row

    async def agents(self, session_id: str, owner: str) -> Roster:
        """The agents of the owner's session ``session_id`` (with its
        project's, once read, while it is live here); "": the runtime's."""
        if not session_id:
            return self._settings.agents
        row = await self.owned(session_id, owner)
        live = self.live(row.id)
        return self._settings.agents if live is None else live.session.project.agents

    @property
    def offered_models(self) -> tuple[str, ...]:
        """The model groups users may choose (:mod:`runtime.models`)."""
        return self._settings.user_models or (self._settings.model,)

    @property
    def default_model(self) -> str:
        """The group each agent uses without a choice or a per-agent default."""
        return self._settings.model

    async def model_windows(self) -> list[tuple[str, int]]:
        """The offered groups with their context windows as the LLM proxy
        reports them (asked once, then remembered by the client); 0 when
        unknown or while the proxy is unreachable: the list stays usable."""
        windows = dict.fromkeys(self.offered_models, 0)
        try:
            for name in windows:
                windows[name] = await self._llm.context_window(name)
        except UpstreamError:  # unreachable: asking for the next group would wait as long
            log.warning("model_windows_unknown")
        return list(windows.items())

    async def choose_model(self, session_id: str, owner: str, model: str) -> SessionRow:
        """Make ``model`` the group of every model call of one of ``owner``'s
        sessions from now on. Raises :class:`~runtime.models.UnknownModel`
        for a group not offered, what :meth:`owned` raises, and Unavailable
        while another replica serves the session. Idempotent.
        """
        check_choice(model, self.offered_models)
        async with self._lock:
            await self.owned(session_id, owner)
            live = self._live.get(session_id)
            if live is not None:
                live.session.model = model  # steps never write the column: no race
                await self._store.models.choose(session_id, model)
            else:
                async with self._leased(session_id):
                    await self._store.models.choose(session_id, model)
            row = await self._store.get_session(session_id)
        if row is None:  # pragma: no cover - deleted under the hub's lock: impossible here
            raise Deleted(f"session {session_id!r} was deleted")
        log.info("session_model_chosen", session_id=session_id, model=model)
        return row

    async def restore_branch(
        self, session_id: str, owner: str, branch: int, keep_changes: bool
    ) -> SessionChanged:
        """Make a branch of one of ``owner``'s sessions its active history
        again (:func:`runtime.reruns.restore`; a session not live here is
        changed in the database only, with no event). Raises what
        :meth:`owned` and that raise, and Unavailable while another replica
        serves the session."""
        async with self._lock:
            await self.owned(session_id, owner)
            live = self._live.get(session_id)
            if live is not None:
                async with live.history.hold():
                    return await reruns.restore(live, self._store, branch, keep_changes)
            async with self._leased(session_id):
                number, position, _ = await self._store.branches.restore(
                    session_id, branch, keep_changes=keep_changes
                )
        return SessionChanged("switch", session_id, number, position)

    async def delete(self, session_id: str, owner: str) -> None:
        """Delete one of ``owner``'s sessions, its data with it (a tombstone keeps the id).

        A conversation live here is stopped first: its model call is
        cancelled, nothing more is written, and every attached stream ends
        with :class:`~runtime.errors.Deleted`. Raises what :meth:`owned`
        raises (Deleted when already deleted), and Unavailable while another
        replica serves the session.
        """
        async with self._lock:
            await self.owned(session_id, owner)
            await self._executors.release(session_id)  # its files are indexed no more
            live = self._live.pop(session_id, None)
            if live is not None:
                await live.abandon(deleted=True)
                await live.stream.drain()
                await self._store.delete_session(session_id)
                return
            async with self._leased(session_id):
                await self._store.delete_session(session_id)

    async def _take_lease(self, session_id: str) -> None:
        """Take the session's lease for this replica; Unavailable if another
        holds it, naming the holder's address when it advertised one."""
        release = self._releases.pop(session_id, None)
        if release is not None:
            # It was just evicted here: its lease release must not land
            # after the lease is taken again.
            await asyncio.wait([release])
        leases = self._store.leases
        if not await leases.acquire(session_id, self._replica, self._lease_ttl, self.address):
            holder = await leases.holder(session_id)
            raise Unavailable(
                "another runtime replica serves this session; retry there, or here shortly "
                "(it moves here when that replica's lease expires)",
                holder=None if holder is None or holder[1] == self.address else holder[1],
            )

    @contextlib.asynccontextmanager
    async def _leased(self, session_id: str) -> AsyncIterator[None]:
        """Hold the lease of a session not live here for a moment, so no
        other replica writes to it meanwhile; Unavailable if another holds it."""
        await self._take_lease(session_id)
        try:
            yield
        finally:
            await self._store.leases.release(session_id, self._replica)

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
        for task in (self._heartbeat, self._sweeper):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        self._heartbeat = self._sweeper = None
        for session_id, conversation in list(self._live.items()):
            await conversation.close()
            await self._store.leases.release(session_id, self._replica)
        self._live.clear()
        if self._releases:
            await asyncio.wait(list(self._releases.values()))
