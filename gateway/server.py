"""The WebSocket edge: handshake checks, REST views and one ``Converse`` per IDE.

Every request is answered first in :meth:`Gateway._process_request`, before
any upgrade, in this order (docs/GATEWAY.md explains each):

1. ``/health`` (liveness) and ``/ready`` (readiness: the runtime answers its
   health check and the JWKS is loaded; 503 otherwise and from the moment
   shutdown begins) are answered at once (Prometheus metrics are not served
   here but on their own port, ``METRICS_PORT``: see ``gateway.__main__``);
2. the client address's connect rate (token bucket) → 429;
3. REST views (:mod:`gateway.rest`) → authenticated, owner-scoped runtime reads
   (the same views, with request bodies, on the REST port:
   :meth:`Gateway.answer_rest`, served by :mod:`gateway.rest_server`);
4. a WebSocket upgrade: path and ``last_seq`` → 400/404, ``Origin``
   allow-list → 403, process connection limit → 503, access token (from
   ``Authorization: Bearer`` or the subprotocol pair ``bearer, <token>``, of
   which only ``bearer`` is selected so the token is never echoed) and
   revocation → 401, per-user connection limit → 429, and finally the
   session's ownership: a unary ``GetCurrentAgent`` as the user, where
   PERMISSION_DENIED → 403 and NOT_FOUND (a new session) passes.

Each accepted connection is then served by :mod:`gateway.connection` (its
runtime stream, opened at connect, or on the IDE's first frame or the first
newer event another connection of the session gets; the two pumps; one
timer for the token, idleness and keepalive).

Every failure's close code or HTTP status comes from :mod:`gateway.codes`.
"""

from __future__ import annotations

import asyncio
import http
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from gateway import rest
from gateway.authentication import Authenticator
from gateway.codes import (
    SERVICE_RESTART,
    json_response,
    refuse_connect_rate,
    refuse_handshake,
    refuse_keys_unavailable,
    refuse_overload,
    refuse_session_access,
    refuse_token,
    refuse_view_method,
)
from gateway.config import GatewayConfig
from gateway.connection import Connections
from gateway.errors import BadHandshake, HandshakeProblem, InvalidToken, KeysUnavailable
from gateway.handshake import (
    Handshake,
    Upgrade,
    bearer_token,
    client_request_id,
    parse_upgrade,
    select_subprotocol,
)
from gateway.jwks import Principal, TokenVerifier
from gateway.limits import AddressRateLimiter, ConnectionSlots, retry_after
from gateway.metrics import GatewayMetrics
from gateway.profiles import Profiles
from gateway.revocations import Revocation, RevocationList
from mesh.addresses import Network, client_address
from runtime.v1 import runtime_pb2

if TYPE_CHECKING:
    from gateway.replicas import ReplicaChannels
    from runtime.v1.runtime_pb2_grpc import AgentRuntimeServiceAsyncStub

log = structlog.get_logger("gateway")

_HEALTH_PATHS = frozenset({"/health", "/api/v1/health"})
_READY_PATHS = frozenset({"/ready", "/api/v1/ready"})
_READY_TIMEOUT = 2.0

ReadyCheck = Callable[[], Awaitable[bool]]
"""True when a dependency the gateway needs is usable; may raise (not ready)."""


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    return select_subprotocol(subprotocols)


def _client_address(
    connection: ServerConnection, request: Request, trusted: Sequence[Network]
) -> str:
    """The client's address: the peer's, or, behind a trusted proxy (the
    front door), the one its ``X-Forwarded-For`` names (:mod:`mesh.addresses`)."""
    address = connection.remote_address
    peer = str(address[0]) if isinstance(address, tuple) and address else str(address)
    return client_address(peer, request.headers.get_all("X-Forwarded-For"), trusted)


def _gone(holder: object) -> bool:
    """A reserved connection that died before (or after) its handler ran."""
    return isinstance(holder, ServerConnection) and holder.protocol.state is State.CLOSED


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
        replicas: ReplicaChannels | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics if metrics is not None else GatewayMetrics()
        self._ready_checks = dict(ready_checks or {})
        self._draining = False
        self._runtime = runtime
        self._auth = Authenticator(
            verifier,
            revocations
            if revocations is not None
            else RevocationList(retention=config.revocation_retention),
        )
        self._views = rest.RuntimeReads(
            runtime, internal_api_key=config.internal_api_key, timeout=config.view_timeout
        )
        self._profiles = Profiles(config.client_profiles)
        self._connect_rate = AddressRateLimiter(config.connect_rate, config.connect_burst)
        self._slots = ConnectionSlots(
            per_user=config.max_connections_per_user, total=config.max_connections
        )
        self._connections = Connections(
            config, runtime, self._metrics, self._slots, self._auth, self._profiles, replicas
        )
        self._server: Server | None = None
        self.rest_port: int | None = None
        """The REST port (:mod:`gateway.rest_server`) once it is bound; None without one."""
        self._stopped = False
        self._handshakes: weakref.WeakKeyDictionary[ServerConnection, Handshake] = (
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
            # Keepalive pings come from each connection's timer
            # (gateway.connection), not from a task per connection.
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
        self._connections.revoke(revocation.subject)

    # -- authentication --------------------------------------------------

    async def _authenticate_request(self, token: str | None, path: str) -> Principal | Response:
        if token is None:
            log.info("request_refused", path=path, reason="missing token")
            return refuse_token("missing bearer token")
        try:
            return await self._auth.authenticate(token)
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
        if url.path in _HEALTH_PATHS or url.path in _READY_PATHS:
            if request.method not in {"GET", "HEAD"}:
                return refuse_handshake(HandshakeProblem.METHOD_NOT_ALLOWED)
            if url.path in _READY_PATHS:
                return await self._readiness()
            return json_response(http.HTTPStatus.OK, {"status": "ok"})
        address = _client_address(connection, request, self._config.trusted_proxies)
        wait = self._connect_rate.take(address)
        if wait > 0:
            log.info("request_refused", path=url.path, reason="connect rate")
            return refuse_connect_rate(retry_after(wait))
        request_id = client_request_id(request.headers) or uuid.uuid4().hex
        try:
            upgrade = parse_upgrade(
                request.method, url.path, url.query, request.headers, self._config.allowed_origins
            )
        except BadHandshake as exc:
            if exc.problem is HandshakeProblem.ORIGIN_NOT_ALLOWED:
                log.info("handshake_refused", session_id=exc.session_id, reason="origin")
            return refuse_handshake(exc.problem)
        if upgrade is None:
            return await self._answer_view(
                request.method, url.path, url.query, request.headers, request_id
            )
        return await self._authorize_upgrade(connection, upgrade, url.path, request_id)

    async def answer_rest(
        self, method: str, target: str, headers: Headers, peer: str, body: bytes | None
    ) -> Response:
        """A request on the REST port (:mod:`gateway.rest_server`): the same
        connect-rate limit, token check and views as on this port, and the
        request's ``body`` (already read, at most ``rest.MAX_BODY_BYTES``)."""
        url = urlsplit(target)
        address = client_address(
            peer, headers.get_all("X-Forwarded-For"), self._config.trusted_proxies
        )
        wait = self._connect_rate.take(address)
        if wait > 0:
            log.info("request_refused", path=url.path, reason="connect rate")
            return refuse_connect_rate(retry_after(wait))
        request_id = client_request_id(headers) or uuid.uuid4().hex
        return await self._answer_view(method, url.path, url.query, headers, request_id, body)

    async def _answer_view(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        request_id: str,
        body: bytes | None = None,
    ) -> Response:
        route = rest.match(method, path)
        if route is None:
            return refuse_handshake(HandshakeProblem.NO_SUCH_PATH)
        if isinstance(route, http.HTTPStatus):
            return refuse_view_method()
        principal = await self._authenticate_request(bearer_token(headers), path)
        if isinstance(principal, Response):
            return principal
        with structlog.contextvars.bound_contextvars(user=principal.subject, request_id=request_id):
            return await self._views.answer(
                route,
                query,
                user=principal.subject,
                request_id=request_id,
                body=body,
                profile=self._profiles.for_client(principal.client_id),
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
        upgrade: Upgrade,
        path: str,
        request_id: str,
    ) -> Response | None:
        """The refusal of a well-formed upgrade, or None once its slot is
        reserved and its :class:`Handshake` stored for :meth:`_handle`."""
        session_id, resume_after_seq = upgrade.session_id, upgrade.resume_after_seq
        if self._slots.process_full():
            self._slots.prune(_gone)
            if self._slots.process_full():
                return self._refuse_overload("process")
        principal = await self._authenticate_request(upgrade.token, path)
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
        self._handshakes[connection] = Handshake(
            session_id, principal, resume_after_seq, request_id, quiet, created
        )
        return None

    @staticmethod
    def _refuse_overload(scope: str) -> Response:
        log.warning("handshake_refused", reason=f"{scope} connection limit")
        return refuse_overload(scope)

    async def _check_session_access(
        self, session_id: str, user: str, request_id: str
    ) -> Response | runtime_pb2.GetCurrentAgentResponse | None:
        """The refusal when ``user`` may not open ``session_id``; else the
        session's state, or None when it is new or the runtime cannot say.

        The runtime answers PERMISSION_DENIED for someone else's session and
        NOT_FOUND for a new one (which ``open`` will create); which status
        refuses and which passes is :func:`gateway.codes.refuse_session_access`.
        """
        try:
            reply = await self._views.current_agent(session_id, user=user, request_id=request_id)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            refusal = refuse_session_access(code, exc.details())
            if refusal is None:
                return None
            if code is grpc.StatusCode.PERMISSION_DENIED:
                log.info("handshake_refused", session_id=session_id, reason="foreign session")
            else:
                log.warning("handshake_refused", session_id=session_id, status=code.name)
            return refusal
        return reply

    async def _quiet_session(
        self,
        session_id: str,
        user: str,
        request_id: str,
        probe: runtime_pb2.GetCurrentAgentResponse | None,
        resume_after_seq: int | None,
    ) -> tuple[runtime_pb2.GetCurrentAgentResponse | None, bool]:
        """(the session's state, created) when the connection may attach
        later (on its first frame, or when the session moves on): the
        session is idle and nothing is to be replayed.
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
            reply = await self._views.create_session(session_id, user=user, request_id=request_id)
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
        await self._connections.handle(connection, handshake)
