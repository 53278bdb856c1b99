"""The WebSocket edge: handshake checks, REST views and one ``Converse`` per IDE.

Every request is answered first in :meth:`Gateway._process_request`, before
any upgrade, in this order (docs/GATEWAY.md explains each):

1. ``/health`` (liveness), ``/ready`` (readiness: the runtime answers its
   health check and the JWKS is loaded; 503 otherwise and from the moment
   shutdown begins) and ``/metrics`` (Prometheus) are answered at once;
2. the client address's connect rate (token bucket) → 429;
3. REST views (:mod:`gateway.rest`) → authenticated, owner-scoped runtime reads;
4. a WebSocket upgrade: path and ``last_seq`` → 400/404, ``Origin``
   allow-list → 403, process connection limit → 503, access token (from
   ``Authorization: Bearer`` or the subprotocol pair ``bearer, <token>``, of
   which only ``bearer`` is selected so the token is never echoed) and
   revocation → 401, per-user connection limit → 429, and finally the
   session's ownership: a unary ``GetCurrentAgent`` as the user, where
   PERMISSION_DENIED → 403 and NOT_FOUND (a new session) passes.

Each accepted connection opens one bidirectional ``Converse`` stream to the
runtime — at connect, or, for an idle session with nothing to replay, on the
IDE's first frame (``attach_on_first_frame``: the gateway then sends the
``session_info`` itself and the idle connection holds no stream) — and pumps
frames both ways in a task group. A timer per connection (not a task) checks
the token (expiry, revocation) and idleness. Backpressure is end to end: the
IDE→runtime pump waits for gRPC flow control before reading the next frame
(websockets then stops reading the socket after ``max_queue`` frames), and
the runtime→IDE pump waits for the WebSocket's ``write_limit`` to drain
before reading the next event — for at most ``slow_consumer_timeout``
seconds, after which the connection is closed with 1013. Closing cancels the
gRPC call, which cancels the runtime's turn.

Every failure's close code or HTTP status comes from :mod:`gateway.codes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import grpc
import structlog
from opentelemetry import trace
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from gateway import rest
from gateway.codes import (
    FRAME_RATE_EXCEEDED,
    IDLE_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    SERVICE_RESTART,
    SLOW_CONSUMER,
    SUBJECT_CHANGED,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    Closing,
    closing_for_status,
    json_response,
    refuse,
    refuse_keys_unavailable,
    refuse_token,
    response_for_status,
)
from gateway.config import GatewayConfig
from gateway.errors import FrameError, InvalidToken, KeysUnavailable, SlowConsumer
from gateway.frames import Frame, Reauthenticate, encode, error_frame, parse_frame
from gateway.frames import response_to_frame as frame_for
from gateway.jwks import Principal, TokenVerifier
from gateway.limits import AddressRateLimiter, ConnectionSlots, TokenBucket, retry_after
from gateway.metrics import GatewayMetrics
from gateway.revocations import Revocation, RevocationList
from mesh import tracing
from mesh.grpc_server import internal_metadata
from mesh.metrics import exposition
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from typing import TypeAlias

    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

    ConverseCall: TypeAlias = grpc.aio.StreamStreamCall[
        runtime_pb2.ConverseRequest, runtime_pb2.ConverseResponse
    ]

log = structlog.get_logger("gateway")

BEARER_SUBPROTOCOL = Subprotocol("bearer")
"""Browsers send ``Sec-WebSocket-Protocol: bearer, <token>``; we select this."""

_HEALTH_PATHS = frozenset({"/health", "/api/v1/health"})
_READY_PATHS = frozenset({"/ready", "/api/v1/ready"})
_METRICS_PATH = "/metrics"
_READY_TIMEOUT = 2.0
_tracer = tracing.tracer("gateway.server")

ReadyCheck = Callable[[], Awaitable[bool]]
"""True when a dependency the gateway needs is usable; may raise (not ready)."""
_WS_PREFIXES = ("/api/v1/ws/", "/ws/")
_REQUEST_ID = rest.SESSION_ID
_OVERLOAD_RETRY_AFTER = "5"
_TRACED_EVENTS = frozenset({"user_message", "switch_agent"})


# ---------------------------------------------------------------------------
# Handshake


@dataclass(slots=True)
class _Handshake:
    session_id: str
    principal: Principal
    resume_after_seq: int | None
    request_id: str
    quiet: runtime_pb2.GetCurrentAgentResponse | None = None
    """Set when the session is idle and the client asked for nothing to
    replay: the connection may attach to the runtime on its first frame."""
    created: bool = False


def _ws_session_id(path: str) -> str | None:
    for prefix in _WS_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


def _header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _offered_subprotocols(headers: Headers) -> list[str]:
    return [
        item.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for item in value.split(",")
        if item.strip()
    ]


def bearer_token(headers: Headers) -> str | None:
    """The access token of a handshake: ``Authorization: Bearer <token>``,
    else the item after ``bearer`` in ``Sec-WebSocket-Protocol``."""
    authorization = _header(headers, "Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    offered = _offered_subprotocols(headers)
    if BEARER_SUBPROTOCOL in offered:
        index = offered.index(BEARER_SUBPROTOCOL)
        if index + 1 < len(offered):
            return offered[index + 1]
    return None


def origin_allowed(headers: Headers, allowed: Sequence[str]) -> bool:
    """Whether the handshake's ``Origin`` passes the allow-list.

    An empty list allows anything, a missing ``Origin`` included; otherwise
    exactly one ``Origin`` equal (case-insensitively) to an entry is needed.
    """
    if not allowed:
        return True
    origin = _header(headers, "Origin")
    return origin is not None and origin.lower().rstrip("/") in allowed


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Only the marker is ever selected: selecting the token would echo it.
    return BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None


def _client_address(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _gone(holder: object) -> bool:
    """A reserved connection that died before (or after) its handler ran."""
    return isinstance(holder, ServerConnection) and holder.protocol.state is State.CLOSED


def _quiet_session_info(quiet: runtime_pb2.GetCurrentAgentResponse, created: bool) -> Frame:
    """The ``session_info`` the runtime would send for an idle session."""
    frame = frame_for(
        runtime_pb2.ConverseResponse(
            session_opened=runtime_pb2.SessionOpened(
                session_id=quiet.session_id,
                agent=quiet.agent,
                created=created,
                recovered=True,
                last_seq=quiet.last_seq,
            )
        )
    )
    assert frame is not None
    return frame


async def _guarded_send(link: _Link, frame: Frame) -> None:
    with contextlib.suppress(ConnectionClosed, SlowConsumer):
        await link.send(frame)


async def _discard_until_closed(websocket: ServerConnection) -> None:
    """Read and drop frames until the closing handshake is over.

    Unread frames fill the library's queue (``max_queue``), which stops it
    reading the socket, where the peer's close frame waits behind them.
    """
    with contextlib.suppress(ConnectionClosed):
        async for _ in websocket:
            pass


# ---------------------------------------------------------------------------
# Connections


OPEN_ATTEMPTS = 4
"""Tries at opening a session's stream when replicas answer UNAVAILABLE."""
OPEN_RETRY_DELAY = 0.25
"""Seconds before the second try; the n-th waits n times as long."""
ATTACH_PATIENCE = 30.0
"""Seconds an attach on the first frame keeps trying replicas that answer
UNAVAILABLE (a dead replica's lease runs out meanwhile): the IDE has sent a
frame and is owed its delivery, not a retryable close."""


@dataclass(slots=True, eq=False)
class _Link:
    """One IDE connection, its gRPC call and its counters."""

    websocket: ServerConnection
    session_id: str
    principal: Principal
    frame_bucket: TokenBucket
    send_timeout: float | None
    call: ConverseCall | None = None
    watchdog: asyncio.TimerHandle | None = None
    """The next check of token, idleness and keepalive (:meth:`Gateway._watch`)."""
    closing: asyncio.Task[None] | None = None
    last_activity: float = field(default_factory=time.monotonic)
    next_ping: float = 0.0
    """When the next keepalive ping is due (monotonic)."""
    ping_sent: float = 0.0
    """When the last ping was started; 0 before the first."""
    pinging: asyncio.Task[None] | None = None
    pong: asyncio.Future[float] | None = None
    """The last ping's pong (None until the ping is on the wire)."""
    frames_in: int = 0
    frames_out: int = 0

    async def send(self, frame: Frame) -> None:
        """Send one frame; raises SlowConsumer when the IDE has not made room
        within ``send_timeout``, ConnectionClosed when it is gone."""
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.websocket.send(encode(frame))
        except TimeoutError:
            raise SlowConsumer("the client does not read its frames") from None
        self.frames_out += 1
        self.last_activity = time.monotonic()


class Gateway:
    """The WebSocket server in front of the runtime.

    :meth:`start` binds; :meth:`stop` is idempotent: it stops accepting,
    closes every connection with 1012 (service restart), gives handlers
    ``shutdown_grace`` seconds and cancels the rest. :meth:`revoke` is the
    revocation feed's listener.
    """

    def __init__(
        self,
        config: GatewayConfig,
        verifier: TokenVerifier,
        runtime: AgentRuntimeServiceAsyncStub,
        *,
        revocations: RevocationList | None = None,
        metrics: GatewayMetrics | None = None,
        ready_checks: Mapping[str, ReadyCheck] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics if metrics is not None else GatewayMetrics()
        self._ready_checks = dict(ready_checks or {})
        self._draining = False
        self._verifier = verifier
        self._runtime = runtime
        self._revocations = (
            revocations
            if revocations is not None
            else RevocationList(retention=config.revocation_retention)
        )
        self._views = rest.RestViews(
            runtime, internal_api_key=config.internal_api_key, timeout=config.view_timeout
        )
        self._connect_rate = AddressRateLimiter(config.connect_rate, config.connect_burst)
        self._slots = ConnectionSlots(
            per_user=config.max_connections_per_user, total=config.max_connections
        )
        self._links: dict[str, set[_Link]] = {}
        self._server: Server | None = None
        self._stopped = False
        self._handshakes: weakref.WeakKeyDictionary[ServerConnection, _Handshake] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def port(self) -> int:
        """The bound port; only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections holding a slot (handshaking or open)."""
        return self._slots.count

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            return
        config = self._config
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=_select_subprotocol,
            compression=None,
            open_timeout=config.open_timeout,
            # Keepalive pings come from each connection's watchdog timer
            # (Gateway._watch), not from a task per connection.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=config.close_timeout,
            max_size=config.max_frame_bytes,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
        )
        log.info("gateway_started", host=config.host, port=self.port)

    async def stop(self) -> None:
        """Close every connection with 1012 and stop; idempotent."""
        server = self._server
        if server is None or self._stopped:
            return
        self._stopped = True
        self._draining = True
        if self._config.shutdown_delay > 0:
            # /ready answers 503 while the listener still accepts, so a
            # load balancer stops sending new connections before it closes.
            log.info("gateway_draining", delay=self._config.shutdown_delay)
            await asyncio.sleep(self._config.shutdown_delay)
        server.close(code=SERVICE_RESTART.code, reason=SERVICE_RESTART.reason)
        try:
            async with asyncio.timeout(self._config.shutdown_grace):
                await server.wait_closed()
        except TimeoutError:
            log.warning("gateway_stop_grace_expired", handlers=len(server.handler_tasks))
            for task in list(server.handler_tasks):
                task.cancel()
            await server.wait_closed()
        log.info("gateway_stopped")

    def revoke(self, revocation: Revocation) -> None:
        """Check every connection of the revoked user now; those whose token
        the revocation voids close with 4001. The revocation must already be
        in the gateway's :class:`RevocationList`."""
        for link in list(self._links.get(revocation.subject, ())):
            self._watch(link)

    # -- authentication --------------------------------------------------

    def _is_revoked(self, principal: Principal) -> bool:
        issued_at = principal.issued_at.timestamp() if principal.issued_at else None
        return self._revocations.is_revoked(principal.subject, issued_at)

    async def _authenticate(self, token: str) -> Principal:
        """The principal of a valid, unrevoked token; raises InvalidToken or
        KeysUnavailable."""
        principal = await self._verifier.verify(token)
        if self._is_revoked(principal):
            raise InvalidToken("token revoked")
        return principal

    async def _authenticate_request(self, request: Request, path: str) -> Principal | Response:
        token = bearer_token(request.headers)
        if token is None:
            log.info("request_refused", path=path, reason="missing token")
            return refuse_token("missing bearer token")
        try:
            return await self._authenticate(token)
        except InvalidToken as exc:
            log.info("request_refused", path=path, reason=exc.reason)
            return refuse_token(exc.reason)
        except KeysUnavailable:
            log.warning("request_refused", path=path, reason="keys unavailable")
            return refuse_keys_unavailable()

    # -- HTTP ------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path in _HEALTH_PATHS or url.path in _READY_PATHS or url.path == _METRICS_PATH:
            if request.method not in {"GET", "HEAD"}:
                return refuse(http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
            if url.path == _METRICS_PATH:
                body, content_type = exposition(self._metrics.registry)
                return Response(
                    http.HTTPStatus.OK.value,
                    http.HTTPStatus.OK.phrase,
                    Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))]),
                    body,
                )
            if url.path in _READY_PATHS:
                return await self._readiness()
            return json_response(http.HTTPStatus.OK, {"status": "ok"})
        wait = self._connect_rate.take(_client_address(connection))
        if wait > 0:
            log.info("request_refused", path=url.path, reason="connect rate")
            return refuse(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                "rate_limited",
                "too many connections from this address",
                retry_after=retry_after(wait),
            )
        request_id = _header(request.headers, "X-Request-Id")
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        session_id = _ws_session_id(url.path)
        if session_id is None:
            return await self._answer_view(request, url.path, url.query, request_id)
        if not session_id or "/" in session_id:
            return refuse(http.HTTPStatus.NOT_FOUND, "not_found", "no such path")
        return await self._authorize_upgrade(connection, request, session_id, url, request_id)

    async def _answer_view(
        self, request: Request, path: str, query: str, request_id: str
    ) -> Response:
        route = rest.match(request.method, path)
        if route is None:
            return refuse(http.HTTPStatus.NOT_FOUND, "not_found", "no such path")
        if isinstance(route, http.HTTPStatus):
            return refuse(route, "method_not_allowed", "method not allowed here")
        principal = await self._authenticate_request(request, path)
        if isinstance(principal, Response):
            return principal
        with structlog.contextvars.bound_contextvars(user=principal.subject, request_id=request_id):
            return await self._views.answer(
                route, query, user=principal.subject, request_id=request_id
            )

    async def _readiness(self) -> Response:
        """200 when every ready check passes, else 503 naming the failing ones."""
        if self._draining:
            return json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "stopping", "failing": []}
            )
        names = list(self._ready_checks)
        results = await asyncio.gather(*(self._ready_check(self._ready_checks[n]) for n in names))
        failing = [name for name, ok in zip(names, results, strict=True) if not ok]
        if failing:
            return json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not_ready", "failing": failing}
            )
        return json_response(http.HTTPStatus.OK, {"status": "ready", "failing": []})

    @staticmethod
    async def _ready_check(check: ReadyCheck) -> bool:
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                return await check()
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        if response.status_code >= 400:
            self._metrics.handshakes_refused.labels(str(response.status_code)).inc()
        # A reserved slot whose upgrade did not happen (the library refused
        # the handshake after process_request, or the server is closing).
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            handshake = self._handshakes.pop(connection, None)
            if handshake is not None:
                self._slots.release(handshake.principal.subject, connection)

    async def _authorize_upgrade(
        self,
        connection: ServerConnection,
        request: Request,
        session_id: str,
        url: Any,
        request_id: str,
    ) -> Response | None:
        if request.method != "GET":
            return refuse(http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        if not rest.SESSION_ID.fullmatch(session_id):
            return refuse(
                http.HTTPStatus.BAD_REQUEST,
                "invalid_session_id",
                "session ids are 1-128 characters of A-Z a-z 0-9 . _ : -",
            )
        resume_after_seq: int | None = None
        last_seq = parse_qs(url.query).get("last_seq")
        if last_seq:
            if not last_seq[0].isdigit() or len(last_seq[0]) > 20 or int(last_seq[0]) >= 2**64:
                return refuse(
                    http.HTTPStatus.BAD_REQUEST, "invalid_last_seq", "last_seq is not an integer"
                )
            resume_after_seq = int(last_seq[0])
        if not origin_allowed(request.headers, self._config.allowed_origins):
            log.info("handshake_refused", session_id=session_id, reason="origin")
            return refuse(http.HTTPStatus.FORBIDDEN, "origin_not_allowed", "origin not allowed")
        if self._slots.process_full():
            self._slots.prune(_gone)
            if self._slots.process_full():
                return self._refuse_overload("process")
        principal = await self._authenticate_request(request, url.path)
        if isinstance(principal, Response):
            return principal
        user = principal.subject
        refusal = self._slots.reserve(user, connection)
        if refusal is not None:
            self._slots.prune(_gone, None if refusal.scope == "process" else user)
            refusal = self._slots.reserve(user, connection)
        if refusal is not None:
            return self._refuse_overload(refusal.scope)
        try:
            probe = await self._check_session_access(session_id, user, request_id)
            if isinstance(probe, Response):
                self._slots.release(user, connection)
                return probe
            quiet, created = await self._quiet_session(
                session_id, user, request_id, probe, resume_after_seq
            )
        except BaseException:
            self._slots.release(user, connection)
            raise
        self._handshakes[connection] = _Handshake(
            session_id, principal, resume_after_seq, request_id, quiet, created
        )
        return None

    def _refuse_overload(self, scope: str) -> Response:
        log.warning("handshake_refused", reason=f"{scope} connection limit")
        if scope == "user":
            return refuse(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                "too_many_connections",
                "this user has too many open connections",
                retry_after=_OVERLOAD_RETRY_AFTER,
            )
        return refuse(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway is at its connection limit",
            retry_after=_OVERLOAD_RETRY_AFTER,
        )

    async def _check_session_access(
        self, session_id: str, user: str, request_id: str
    ) -> Response | runtime_pb2.GetCurrentAgentResponse | None:
        """The refusal when ``user`` may not open ``session_id``; else the
        session's state, or None when it is new or the runtime cannot say.

        The runtime answers PERMISSION_DENIED for someone else's session and
        NOT_FOUND for a new one (which ``open`` will create). A runtime
        without the unary reads (UNIMPLEMENTED) is let through: ``open``
        still refuses a foreign session, with close 1008.
        """
        request = runtime_pb2.GetCurrentAgentRequest(session_id=session_id)
        try:
            reply = await self._views.call(
                "GetCurrentAgent", request, user=user, request_id=request_id
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                return None
            if code is grpc.StatusCode.PERMISSION_DENIED:
                log.info("handshake_refused", session_id=session_id, reason="foreign session")
                return refuse(
                    http.HTTPStatus.FORBIDDEN, "forbidden", "the session belongs to another user"
                )
            log.warning("handshake_refused", session_id=session_id, status=code.name)
            return response_for_status(code, exc.details())
        return reply if isinstance(reply, runtime_pb2.GetCurrentAgentResponse) else None

    async def _quiet_session(
        self,
        session_id: str,
        user: str,
        request_id: str,
        probe: runtime_pb2.GetCurrentAgentResponse | None,
        resume_after_seq: int | None,
    ) -> tuple[runtime_pb2.GetCurrentAgentResponse | None, bool]:
        """(the session's state, created) when the connection may attach on
        its first frame: the session is idle and nothing is to be replayed.
        A new session is created here, so it is idle too. (None, False)
        means attach at connect."""
        if not self._config.attach_on_first_frame:
            return None, False
        if probe is not None:
            if not probe.idle:
                return None, False
            if resume_after_seq is not None and resume_after_seq != probe.last_seq:
                return None, False
            return probe, False
        if resume_after_seq is not None:
            return None, False
        try:
            reply = await self._views.call(
                "CreateSession",
                runtime_pb2.CreateSessionRequest(session_id=session_id),
                user=user,
                request_id=request_id,
            )
        except grpc.aio.AioRpcError:
            return None, False  # created meanwhile, or no such call: attach at connect
        session = reply.session
        return runtime_pb2.GetCurrentAgentResponse(
            session_id=session.session_id, agent=session.agent, last_seq=0, idle=True
        ), True

    # -- WebSocket -------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        handshake = self._handshakes.pop(connection, None)
        if handshake is None:  # pragma: no cover - process_request always stores one
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        user = handshake.principal.subject
        config = self._config
        link = _Link(
            connection,
            handshake.session_id,
            handshake.principal,
            TokenBucket(config.frame_rate, config.frame_burst),
            config.slow_consumer_timeout if config.slow_consumer_timeout > 0 else None,
        )
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

    async def _serve(self, link: _Link, handshake: _Handshake) -> None:
        """Attach to the runtime (now, or on the first frame of a quiet
        session) and pump both ways until either side ends."""
        first: runtime_pb2.ConverseResponse | None = None
        pending: runtime_pb2.ConverseRequest | None = None
        quiet = handshake.quiet
        if quiet is None:
            opening = runtime_pb2.OpenSession(session_id=handshake.session_id)
            if handshake.resume_after_seq is not None:
                opening.resume_after_seq = handshake.resume_after_seq
            link.call, first = await self._open(opening, self._metadata(link, handshake))
        else:
            # Nothing to receive until the IDE speaks: hold no stream (and
            # none of the runtime's memory) until then. Attaching resumes
            # after the seq announced here, so nothing in between is lost.
            await _guarded_send(link, _quiet_session_info(quiet, handshake.created))
            last_seq, handshake.quiet = quiet.last_seq, None
            del quiet  # an idle connection keeps as little as it can
            pending = await self._first_action(link)
            if pending is None:
                return
            opening = runtime_pb2.OpenSession(
                session_id=handshake.session_id, resume_after_seq=last_seq
            )
            metadata = self._metadata(link, handshake)
            link.call, first = await self._open(opening, metadata, ATTACH_PATIENCE)
            if (
                first is not None
                and first.WhichOneof("event") == "session_opened"
                and first.session_opened.recovered
            ):
                first = None  # the client has its session_info already
        call = link.call
        assert call is not None
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

    def _metadata(self, link: _Link, handshake: _Handshake) -> tuple[tuple[str, str], ...]:
        """The runtime call's metadata: the credential, the user, the request id."""
        return internal_metadata(
            self._config.internal_api_key,
            user=link.principal.subject,
            request_id=handshake.request_id,
        )

    async def _open(
        self,
        opening: runtime_pb2.OpenSession,
        metadata: tuple[tuple[str, str], ...],
        patience: float = 0.0,
    ) -> tuple[ConverseCall, runtime_pb2.ConverseResponse | None]:
        """Open the session's Converse stream; returns it with its first event.

        A replica answering UNAVAILABLE before the first event (another
        replica holds the session, or it is going away) is retried: the
        channel balances the next attempt to another replica. Without
        ``patience`` a few times; with it, for that many seconds. A call
        that still fails is returned without a first event; the pump's read
        reports its status.
        """
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            attempt += 1
            call = self._runtime.Converse(metadata=metadata)
            try:
                await call.write(runtime_pb2.ConverseRequest(open=opening))
                first = await call.read()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                delay = min(OPEN_RETRY_DELAY * attempt, 1.0)
                again = attempt < OPEN_ATTEMPTS or time.monotonic() + delay < deadline
                if again and await call.code() == grpc.StatusCode.UNAVAILABLE:
                    call.cancel()
                    await asyncio.sleep(delay)
                    continue
                return call, None
            if not isinstance(first, runtime_pb2.ConverseResponse):  # grpc.aio.EOF
                return call, None
            return call, first

    async def _guarded(self, link: _Link, work: Coroutine[Any, Any, None]) -> None:
        """Run one side of the connection; a blocked send closes with 1013."""
        try:
            await work
        except SlowConsumer:
            log.warning("slow_consumer", timeout=self._config.slow_consumer_timeout)
            await self._close(link, SLOW_CONSUMER)
        except ConnectionClosed:
            return

    async def _first_action(self, link: _Link) -> runtime_pb2.ConverseRequest | None:
        """Read IDE frames until one is for the runtime; None when the
        connection ends first. Errors and re-authentication are answered here."""
        try:
            async for message in link.websocket:
                action = await self._on_frame(link, message)
                if action is not None:
                    return action
        except SlowConsumer:
            log.warning("slow_consumer", timeout=self._config.slow_consumer_timeout)
            await self._close(link, SLOW_CONSUMER)
        except ConnectionClosed:
            pass
        return None

    async def _on_frame(
        self, link: _Link, message: str | bytes
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
                await _discard_until_closed(link.websocket)
            finally:
                await closing
            raise ConnectionClosed(None, None)
        if isinstance(message, bytes):
            await link.send(error_frame("binary_frame", "binary frames are not supported"))
            return None
        try:
            action = parse_frame(message)
        except FrameError as exc:
            await link.send(error_frame(exc.code, exc.message))
            return None
        except Exception:
            # A parser bug must cost one frame, not the connection.
            log.exception("frame_parse_failed")
            await link.send(error_frame("invalid_frame", "the frame could not be read"))
            return None
        if isinstance(action, Reauthenticate):
            await self._reauthenticate(link, action.token)
            return None
        return action

    async def _forward(
        self, link: _Link, call: ConverseCall, action: runtime_pb2.ConverseRequest
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

    async def _ide_to_runtime(self, link: _Link, call: ConverseCall) -> None:
        """Forward IDE frames until the WebSocket closes."""
        async for message in link.websocket:
            action = await self._on_frame(link, message)
            if action is not None and not await self._forward(link, call, action):
                # The stream is over; the runtime pump reports why and
                # closes the WebSocket.
                await _discard_until_closed(link.websocket)
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
        self, link: _Link, call: ConverseCall, first: runtime_pb2.ConverseResponse | None = None
    ) -> None:
        """Forward runtime events (``first`` was read already) until the stream ends."""
        try:
            if first is not None:
                frame = frame_for(first)
                if frame is not None:
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
                frame = frame_for(response)
                if frame is None:
                    log.warning("unknown_runtime_event", seq=response.seq)
                    continue
                await link.send(frame)
        except grpc.aio.AioRpcError as exc:
            if link.websocket.state is not State.OPEN:
                return  # we cancelled the call while closing
            closing = closing_for_status(exc.code(), exc.details())
            log.info("runtime_stream_failed", status=exc.code().name)
        await self._close(link, closing)

    async def _reauthenticate(self, link: _Link, token: str) -> None:
        try:
            principal = await self._authenticate(token)
        except InvalidToken as exc:
            await link.send(error_frame("invalid_token", exc.reason))
            return
        except KeysUnavailable:
            await link.send(
                error_frame("keys_unavailable", "cannot verify tokens now", retryable=True)
            )
            return
        if principal.subject != link.principal.subject:
            log.warning("reauthentication_refused", reason="subject changed")
            await self._close(link, SUBJECT_CHANGED)
            return
        link.principal = principal
        self._watch(link)

    def _watch(self, link: _Link) -> None:
        """Close ``link`` if its token is revoked (4001) or expired without a
        refresh (1008), after ``idle_timeout`` without a frame either way
        (1001; pings do not count), or when a keepalive ping got no pong
        within ``ping_timeout`` (1011); send the next ping when it is due;
        then check again when the earliest of these could next happen. A
        timer, not a task: it costs an idle connection almost nothing."""
        if link.watchdog is not None:
            link.watchdog.cancel()
            link.watchdog = None
        if link.closing is not None:
            return
        closing = None
        now = time.time()
        expires = link.principal.expires_at.timestamp() + self._config.jwt_leeway
        if self._is_revoked(link.principal):
            log.info("connection_revoked")
            closing = TOKEN_REVOKED
        elif expires <= now:
            closing = TOKEN_EXPIRED
        next_check = expires - now
        if closing is None and self._config.idle_timeout > 0:
            idle_left = link.last_activity + self._config.idle_timeout - time.monotonic()
            if idle_left <= 0:
                closing = IDLE_TIMEOUT
            next_check = min(next_check, idle_left)
        loop = asyncio.get_running_loop()
        interval, timeout = self._config.ping_interval, self._config.ping_timeout
        if closing is None and interval:
            now_m = time.monotonic()
            awaited = link.ping_sent > 0 and (link.pong is None or not link.pong.done())
            if awaited and timeout and now_m - link.ping_sent >= timeout:
                log.info("keepalive_timeout", timeout=timeout)
                closing = KEEPALIVE_TIMEOUT
            elif not awaited and now_m >= link.next_ping:
                link.next_ping = now_m + interval
                link.pong, link.ping_sent = None, now_m
                link.pinging = loop.create_task(self._ping(link))
                awaited = True
            if awaited:
                # No ping while one is unanswered, as in websockets' own
                # keepalive: look again when the next is due, then at its timeout.
                due = link.ping_sent + (timeout or interval)
                if link.next_ping > now_m:
                    due = min(due, link.next_ping)
                next_check = min(next_check, due - now_m)
            else:
                next_check = min(next_check, link.next_ping - now_m)
        if closing is not None:
            link.closing = loop.create_task(self._close(link, closing))
            return
        link.watchdog = loop.call_later(max(next_check, 0.05), self._watch, link)

    @staticmethod
    async def _ping(link: _Link) -> None:
        """Send a keepalive ping; its pong lands in ``link.pong``."""
        with contextlib.suppress(ConnectionClosed):
            link.pong = await link.websocket.ping()

    async def _close(self, link: _Link, closing: Closing) -> None:
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
