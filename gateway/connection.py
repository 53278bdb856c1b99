"""The IDE connections: each one's runtime stream, its two pumps, its timer.

A connection accepted by :class:`gateway.server.Gateway` (which did every
handshake check) is served here. It opens one bidirectional ``Converse``
stream to the runtime — at connect, or, for an idle session with nothing to
replay, on the IDE's first frame: the gateway then sends the
``session_info`` itself and the idle ("quiet") connection holds no stream —
and pumps frames both ways in a task group (opening and its retries:
:mod:`gateway.attach`). One timer per connection (not a task) checks the
token (expiry, revocation) and idleness and sends keepalive pings, doing
what :func:`gateway.watchdog.decide` says. Backpressure is end to end:
the IDE→runtime pump waits for gRPC flow control before reading the next
frame (websockets then stops reading the socket after ``max_queue``
frames), and the runtime→IDE pump waits for the
WebSocket's ``write_limit`` to drain before reading the next event — for at
most ``slow_consumer_timeout`` seconds, after which the connection is closed
with 1013. Closing cancels the gRPC call, which cancels the runtime's turn.

A quiet connection is also attached without a frame of its own as soon as
this gateway learns that its session has moved past the seq it was told:
another connection of the session here receives a newer event (a turn that
another window started), or connects having been told a newer seq. So each
window sees every event of its session live, while an idle one costs only
its place in its session's lists (:class:`gateway.link.SessionLinks`) and a
timeout without deadline around its read, which the wake moves to now.
Connections to other gateway replicas are not seen (docs/GATEWAY.md).

Every failure's close code comes from :mod:`gateway.codes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from opentelemetry import trace
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from gateway.attach import ATTACH_PATIENCE, open_stream, quiet_session_info
from gateway.authentication import Authenticator
from gateway.codes import (
    FRAME_RATE_EXCEEDED,
    KEEPALIVE_TIMEOUT,
    SLOW_CONSUMER,
    SUBJECT_CHANGED,
    TOKEN_REVOKED,
    Closing,
    closing_for_status,
    error_frame_for,
)
from gateway.config import GatewayConfig
from gateway.errors import FrameError, InvalidToken, KeysUnavailable, SlowConsumer
from gateway.frames import Reauthenticate, parse_frame
from gateway.handshake import Handshake
from gateway.limits import ConnectionSlots, TokenBucket
from gateway.link import Link, SessionLinks, discard_until_closed
from gateway.metrics import GatewayMetrics
from gateway.profiles import FrameShaper, Profiles
from gateway.watchdog import Limits, Watch, decide
from mesh import tracing
from mesh.grpc_server import internal_metadata
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from gateway.attach import ConverseCall
    from gateway.replicas import ReplicaChannels
    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

log = structlog.get_logger("gateway")
_tracer = tracing.tracer("gateway.connection")
_TRACED_EVENTS = frozenset({"user_message", "switch_agent"})


class Connections:
    """Every open IDE connection of one gateway, by user.

    ``auth`` checks an ``auth`` frame's token and, on every timer check,
    whether a connection's token has been revoked since it was issued.
    """

    def __init__(
        self,
        config: GatewayConfig,
        runtime: AgentRuntimeServiceAsyncStub,
        metrics: GatewayMetrics,
        slots: ConnectionSlots,
        auth: Authenticator,
        profiles: Profiles,
        replicas: ReplicaChannels | None = None,
    ) -> None:
        self._config = config
        self._runtime = runtime
        self._replicas = replicas
        self._metrics = metrics
        self._slots = slots
        self._auth = auth
        self._limits = Limits(config.idle_timeout, config.ping_interval, config.ping_timeout)
        self._profiles = profiles
        self._payload_limits = config.payload_limits
        self._links: dict[str, set[Link]] = {}
        self._sessions: dict[str, SessionLinks] = {}

    def revoke(self, subject: str) -> None:
        """Check every connection of ``subject`` now; those whose token is
        revoked close with 4001."""
        for link in list(self._links.get(subject, ())):
            self._watch(link)

    async def handle(self, connection: ServerConnection, handshake: Handshake) -> None:
        """Serve one accepted WebSocket until it closes; frees its slot."""
        user = handshake.principal.subject
        config = self._config
        session_id = handshake.session_id
        peers = self._sessions.get(session_id)
        if peers is None:
            peers = self._sessions[session_id] = SessionLinks()
        link = Link(
            connection,
            session_id,
            handshake.principal,
            TokenBucket(config.frame_rate, config.frame_burst),
            config.slow_consumer_timeout if config.slow_consumer_timeout > 0 else None,
            peers,
            FrameShaper(self._profiles.for_client(handshake.principal.client_id)),
            seen_seq=handshake.resume_after_seq or 0,
        )
        peers.links.append(link)
        self._links.setdefault(user, set()).add(link)
        started = time.monotonic()
        link.next_ping = started + (config.ping_interval or 0)
        self._metrics.connections_open.inc()
        # Each connection runs in its own task, with its own copy of the
        # context: binding here cannot leak to another connection, and
        # holding no context manager open saves an idle connection ~0.7 KB.
        structlog.contextvars.bind_contextvars(
            session_id=handshake.session_id, user=user, request_id=handshake.request_id
        )
        try:
            self._watch(link)
            await self._serve(link, handshake)
        finally:
            if link.watchdog is not None:
                link.watchdog.cancel()
            if link.call is not None:
                link.call.cancel()
            if link.closing is not None:
                with contextlib.suppress(Exception):
                    await link.closing
            links = self._links.get(user)
            if links is not None:
                links.discard(link)
                if not links:
                    del self._links[user]
            peers.links.remove(link)
            if not peers.links and self._sessions.get(session_id) is peers:
                del self._sessions[session_id]
            self._slots.release(user, connection)
            duration = time.monotonic() - started
            metrics = self._metrics
            metrics.connections_open.dec()
            metrics.connections.labels(str(connection.close_code)).inc()
            metrics.connection_duration.observe(duration)
            metrics.frames_in.inc(link.frames_in)
            metrics.frames_out.inc(link.frames_out)
            log.info(
                "connection_closed",
                duration=round(duration, 3),
                frames_in=link.frames_in,
                frames_out=link.frames_out,
                close_code=connection.close_code,
            )

    async def _serve(self, link: Link, handshake: Handshake) -> None:
        """Attach to the runtime (now, or for a quiet session on the first
        frame or when the session moves on) and pump both ways until either
        side ends."""
        first: runtime_pb2.ConverseResponse | None = None
        pending: runtime_pb2.ConverseRequest | None = None
        quiet = handshake.quiet
        profile = link.shaper.profile
        if quiet is None:
            opening = profile.opening(handshake.session_id, handshake.resume_after_seq)
            link.call, first = await open_stream(
                self._runtime, opening, self._metadata(link, handshake), replicas=self._replicas
            )
        else:
            # Nothing to receive until the IDE speaks or the session moves
            # on: hold no stream (and none of the runtime's memory) until
            # then. Attaching resumes after the seq announced here, so
            # nothing in between is lost.
            for frame in link.shaper.local(quiet_session_info(quiet, handshake.created)):
                await link.send_if_open(frame)
            announced, handshake.quiet = quiet.last_seq, None
            del quiet  # an idle connection keeps as little as it can
            link.seen_seq = announced
            pending = await self._until_needed(link)
            if pending is None and (not link.woken or link.websocket.state is not State.OPEN):
                return
            opening = profile.opening(handshake.session_id, announced)
            metadata = self._metadata(link, handshake)
            link.call, first = await open_stream(
                self._runtime, opening, metadata, ATTACH_PATIENCE, self._replicas
            )
            if (
                first is not None
                and first.WhichOneof("event") == "session_opened"
                and first.session_opened.recovered
            ):
                first = None  # the client has its session_info already
        call = link.call
        assert call is not None
        if link.environment is not None:
            await self._forward(link, call, link.environment)
            link.environment = None
        if pending is not None:
            # When the stream is already over, the runtime pump reads why.
            await self._forward(link, call, pending)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._guarded(link, self._ide_to_runtime(link, call))),
                group.create_task(self._guarded(link, self._runtime_to_ide(link, call, first))),
            ]

            def stop_the_others(done: asyncio.Task[None]) -> None:
                for task in tasks:
                    if task is not done:
                        task.cancel()

            for task in tasks:
                task.add_done_callback(stop_the_others)

    async def _until_needed(self, link: Link) -> runtime_pb2.ConverseRequest | None:
        """Keep ``link`` quiet until its first action (returned) or until
        the session moves past what it was told (None, ``link.woken`` set);
        None without ``woken`` when the connection ends first.

        A peer here that was sent or told a newer seq (an event arrived
        between this connection's handshake and now) wakes it at once; a
        quiet peer told an older one is woken by this connection's news.
        """
        peers = link.peers
        if link.behind_a_peer():
            link.woken = True
            return None
        peers.moved_on(link.seen_seq)
        peers.quiet.append(link)
        try:
            return await self._first_action(link)
        finally:
            with contextlib.suppress(ValueError):
                peers.quiet.remove(link)

    def _metadata(self, link: Link, handshake: Handshake) -> tuple[tuple[str, str], ...]:
        """The runtime call's metadata: the credential, the user, the request id."""
        return internal_metadata(
            self._config.internal_api_key,
            user=link.principal.subject,
            request_id=handshake.request_id,
        )

    async def _guarded(self, link: Link, work: Coroutine[Any, Any, None]) -> None:
        """Run one side of the connection; a blocked send closes with 1013."""
        try:
            await work
        except SlowConsumer:
            await self._slow_consumer(link)
        except ConnectionClosed:
            return

    async def _slow_consumer(self, link: Link) -> None:
        log.warning("slow_consumer", timeout=self._config.slow_consumer_timeout)
        await self._close(link, SLOW_CONSUMER)

    async def _first_action(self, link: Link) -> runtime_pb2.ConverseRequest | None:
        """Read IDE frames until one is for the runtime; None when the
        connection ends first or the link is woken (``link.woken``). Errors
        and re-authentication are answered here; an ``environment`` is kept
        for when the link attaches.

        Only the wait for a frame is interrupted by a wake (cancelling
        websockets' ``recv`` loses no message: the next read returns it);
        a frame being answered is answered first.
        """
        try:
            while not link.woken:
                wake = link.wake = asyncio.timeout(None)
                try:
                    async with wake:
                        message = await link.websocket.recv()
                except TimeoutError:
                    return None  # woken: a wake moved the deadline to now
                finally:
                    link.wake = None
                action = await self._on_frame(link, message)
                if action is not None and action.WhichOneof("event") == "environment":
                    link.environment = action  # no reason to attach: the IDE said nothing yet
                elif action is not None:
                    return action
        except SlowConsumer:
            await self._slow_consumer(link)
        except ConnectionClosed:
            pass
        return None

    async def _on_frame(
        self, link: Link, message: str | bytes
    ) -> runtime_pb2.ConverseRequest | None:
        """Check one IDE frame; the action to forward, or None when it was
        answered here (an error frame, a re-authentication). A frame over the
        rate closes the connection (FrameRateExceeded)."""
        link.frames_in += 1
        link.last_activity = time.monotonic()
        if link.frame_bucket.take() > 0:
            log.warning("frame_rate_exceeded", frames_in=link.frames_in)
            closing = asyncio.create_task(self._close(link, FRAME_RATE_EXCEEDED))
            try:
                await discard_until_closed(link.websocket)
            finally:
                await closing
            raise ConnectionClosed(None, None)
        try:
            if isinstance(message, bytes):
                raise FrameError("binary_frame", "binary frames are not supported")
            action = parse_frame(message, self._payload_limits)
        except FrameError as exc:
            await link.send(error_frame_for(exc))
            return None
        except Exception as exc:
            # A parser bug must cost one frame, not the connection.
            log.exception("frame_parse_failed")
            await link.send(error_frame_for(exc))
            return None
        if isinstance(action, Reauthenticate):
            await self._reauthenticate(link, action.token)
            return None
        return link.shaper.incoming(action)

    async def _forward(
        self, link: Link, call: ConverseCall, action: runtime_pb2.ConverseRequest
    ) -> bool:
        """Write one action to the runtime; False when the stream is over."""
        try:
            if action.WhichOneof("event") in _TRACED_EVENTS:
                await self._write_traced(call, action)
            else:
                await call.write(action)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        return True

    async def _ide_to_runtime(self, link: Link, call: ConverseCall) -> None:
        """Forward IDE frames until the WebSocket closes."""
        async for message in link.websocket:
            action = await self._on_frame(link, message)
            if action is not None and not await self._forward(link, call, action):
                # The stream is over; the runtime pump reports why and
                # closes the WebSocket.
                await discard_until_closed(link.websocket)
                return

    @staticmethod
    async def _write_traced(call: ConverseCall, action: runtime_pb2.ConverseRequest) -> None:
        """Forward a frame that starts a turn inside a ``ws.message`` span,
        whose context travels in the request's ``traceparent``."""
        with _tracer.start_as_current_span(
            "ws.message",
            kind=trace.SpanKind.SERVER,
            attributes={"ws.frame": action.WhichOneof("event") or ""},
        ):
            action.traceparent = tracing.traceparent()
            await call.write(action)

    async def _runtime_to_ide(
        self, link: Link, call: ConverseCall, first: runtime_pb2.ConverseResponse | None = None
    ) -> None:
        """Forward runtime events (``first`` was read already) until the stream ends."""
        try:
            if first is not None:
                link.saw(first.seq)
                for frame in link.shaper.outgoing(first):
                    await link.send(frame)
            while True:
                try:
                    response = await call.read()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if call.cancelled() and task is not None and not task.cancelling():
                        # _close cancelled the call; let it finish the close.
                        await link.websocket.wait_closed()
                        return
                    raise
                if not isinstance(response, runtime_pb2.ConverseResponse):  # grpc.aio.EOF
                    closing = closing_for_status(grpc.StatusCode.OK, None)
                    break
                link.saw(response.seq)
                if response.WhichOneof("event") is None:
                    log.warning("unknown_runtime_event", seq=response.seq)
                    continue
                for frame in link.shaper.outgoing(response):
                    await link.send(frame)
        except grpc.aio.AioRpcError as exc:
            if link.websocket.state is not State.OPEN:
                return  # we cancelled the call while closing
            closing = closing_for_status(exc.code(), exc.details())
            log.info("runtime_stream_failed", status=exc.code().name)
        for frame in link.shaper.flush():  # an answer the stream ended in
            await link.send_if_open(frame)
        await self._close(link, closing)

    async def _reauthenticate(self, link: Link, token: str) -> None:
        try:
            principal = await self._auth.authenticate(token)
        except (InvalidToken, KeysUnavailable) as exc:
            await link.send(error_frame_for(exc))
            return
        if principal.subject != link.principal.subject:
            log.warning("reauthentication_refused", reason="subject changed")
            await self._close(link, SUBJECT_CHANGED)
            return
        link.principal = principal
        self._watch(link)

    def _watch(self, link: Link) -> None:
        """Check ``link`` now (:func:`gateway.watchdog.decide`): close it, or
        send the keepalive ping that is due, then set its timer for the next
        check. A timer, not a task: it costs an idle connection almost nothing."""
        if link.watchdog is not None:
            link.watchdog.cancel()
            link.watchdog = None
        if link.closing is not None:
            return
        now = time.monotonic()
        expires_at, last_activity = link.shaper.profile.lifetime(
            link.principal.expires_at.timestamp() + self._config.jwt_leeway,
            link.last_activity,
            link.last_pong,
        )
        watch = Watch(
            revoked=self._auth.is_revoked(link.principal),
            expires_at=expires_at,
            last_activity=last_activity,
            next_ping=link.next_ping,
            ping_sent=link.ping_sent,
            pong_pending=link.pong is None or not link.pong.done(),
        )
        verdict = decide(watch, self._limits, wall=time.time(), now=now)
        loop = asyncio.get_running_loop()
        if verdict.close is not None:
            if verdict.close is TOKEN_REVOKED:
                log.info("connection_revoked")
            elif verdict.close is KEEPALIVE_TIMEOUT:
                log.info("keepalive_timeout", timeout=self._limits.ping_timeout)
            link.closing = loop.create_task(self._close(link, verdict.close))
            return
        if verdict.next_ping is not None:
            link.next_ping = verdict.next_ping
            link.pong, link.ping_sent = None, now
            link.pinging = loop.create_task(self._ping(link))
        link.watchdog = loop.call_later(verdict.next_check, self._watch, link)

    @staticmethod
    async def _ping(link: Link) -> None:
        """Send a keepalive ping; its pong lands in ``link.pong``."""
        with contextlib.suppress(ConnectionClosed):
            link.pong = pong = asyncio.ensure_future(await link.websocket.ping())
            pong.add_done_callback(lambda _: setattr(link, "last_pong", time.monotonic()))

    async def _close(self, link: Link, closing: Closing) -> None:
        """Cancel the runtime call, send ``closing.frame`` if any, close.

        A last frame is only attempted within the send timeout; a client
        that does not read gets the close frame queued behind its unread
        frames, and the TCP connection is aborted after ``close_timeout``.
        """
        if link.call is not None and closing.code != CloseCode.NORMAL_CLOSURE:
            link.call.cancel()
        if closing.frame is not None:
            with contextlib.suppress(ConnectionClosed, SlowConsumer):
                await link.send(closing.frame)
        log.info("connection_closing", close_code=closing.code, reason=closing.reason)
        try:
            # close() waits for the write buffer to drain before its own
            # close_timeout starts: a client that never reads would hold it
            # (and this connection's slot) forever.
            async with asyncio.timeout(self._config.close_timeout):
                await link.websocket.close(closing.code, closing.reason)
        except TimeoutError:
            log.warning("connection_aborted", reason="close timed out")
            link.websocket.transport.abort()
