"""The WebSocket edge: handshake authentication and one ``Converse`` per IDE.

The opening handshake is answered in :meth:`Gateway._process_request`:
plain HTTP GETs (health; later the REST views) are answered there, and a
WebSocket upgrade is refused with 401 before it happens unless it carries a
valid access token, either as ``Authorization: Bearer <token>`` or, for
browsers, as the subprotocol pair ``bearer, <token>`` — the server then
selects the ``bearer`` subprotocol, so the token is never echoed back.

Each accepted connection opens one bidirectional ``Converse`` stream to the
runtime and pumps frames both ways in a task group. Backpressure is end to
end: the IDE→runtime pump waits for gRPC flow control before reading the next
frame (websockets then stops reading the socket after ``max_queue`` frames),
and the runtime→IDE pump waits for the WebSocket's ``write_limit`` to drain
before reading the next event. Closing the WebSocket cancels the gRPC call,
which cancels the runtime's turn.

Every mapping of a failure to an HTTP status, ``error`` frame or close code
lives in this module (:func:`closing_for_status` and the ``_refuse_*``
responses).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import re
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import grpc
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.config import GatewayConfig
from gateway.errors import FrameError, InvalidToken, KeysUnavailable
from gateway.frames import Frame, Reauthenticate, encode, error_frame, parse_frame
from gateway.frames import response_to_frame as frame_for
from gateway.jwks import Principal, TokenVerifier
from mesh.grpc_server import internal_metadata
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
_WS_PREFIXES = ("/api/v1/ws/", "/ws/")
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_CLOSE_REASON_BYTES = 123


# ---------------------------------------------------------------------------
# Failure → close code, in one place


@dataclass(frozen=True, slots=True)
class Closing:
    """How to end an IDE connection: an optional last frame, then a close."""

    code: int
    reason: str
    frame: Frame | None = None


TOKEN_EXPIRED = Closing(CloseCode.POLICY_VIOLATION, "token expired")
SUBJECT_CHANGED = Closing(CloseCode.POLICY_VIOLATION, "token is for another user")
SERVICE_RESTART = Closing(CloseCode.SERVICE_RESTART, "service restart")

_CLOSING_BY_STATUS: dict[grpc.StatusCode, Closing] = {
    grpc.StatusCode.OK: Closing(CloseCode.NORMAL_CLOSURE, "session ended"),
    grpc.StatusCode.UNAVAILABLE: Closing(CloseCode.TRY_AGAIN_LATER, "runtime unavailable"),
    grpc.StatusCode.CANCELLED: Closing(CloseCode.TRY_AGAIN_LATER, "runtime cancelled the stream"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: Closing(CloseCode.TRY_AGAIN_LATER, "runtime busy"),
    grpc.StatusCode.PERMISSION_DENIED: Closing(CloseCode.POLICY_VIOLATION, "permission denied"),
    grpc.StatusCode.UNAUTHENTICATED: Closing(CloseCode.INTERNAL_ERROR, "gateway not trusted"),
}


def closing_for_status(code: grpc.StatusCode, details: str | None) -> Closing:
    """How a ``Converse`` stream that ended with ``code`` ends the connection.

    OK → 1000; UNAVAILABLE, CANCELLED, RESOURCE_EXHAUSTED → 1013 (try again
    later); PERMISSION_DENIED → 1008 (terminal: someone else's session);
    UNAUTHENTICATED (the runtime refused the gateway's credential) → 1011;
    anything else → an ``error`` frame, then 1011.
    """
    known = _CLOSING_BY_STATUS.get(code)
    if code is grpc.StatusCode.PERMISSION_DENIED and details:
        return Closing(known.code if known else CloseCode.POLICY_VIOLATION, _clip(details))
    if known is not None:
        return known
    message = f"the runtime failed ({code.name.lower()})"
    return Closing(CloseCode.INTERNAL_ERROR, "runtime error", error_frame("runtime_error", message))


def _clip(reason: str) -> str:
    encoded = reason.encode()[:_MAX_CLOSE_REASON_BYTES]
    return encoded.decode(errors="ignore")


def _json_response(
    status: http.HTTPStatus, body: dict[str, Any], headers: Sequence[tuple[str, str]] = ()
) -> Response:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        status.value,
        status.phrase,
        Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
                *headers,
            ]
        ),
        payload,
    )


def _refuse_token(reason: str) -> Response:
    return _json_response(
        http.HTTPStatus.UNAUTHORIZED,
        {"error": "invalid_token", "error_description": reason},
        [("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{reason}"')],
    )


def _refuse_unavailable() -> Response:
    return _json_response(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        {"error": "temporarily_unavailable", "error_description": "cannot verify tokens now"},
        [("Retry-After", "5")],
    )


def _refuse(status: http.HTTPStatus, error: str, description: str) -> Response:
    return _json_response(status, {"error": error, "error_description": description})


# ---------------------------------------------------------------------------
# Handshake


@dataclass(frozen=True, slots=True)
class _Handshake:
    session_id: str
    principal: Principal
    resume_after_seq: int | None
    request_id: str


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


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Only the marker is ever selected: selecting the token would echo it.
    return BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None


# ---------------------------------------------------------------------------
# Connections


@dataclass(slots=True)
class _Link:
    """One IDE connection and its counters."""

    websocket: ServerConnection
    session_id: str
    principal: Principal
    refreshed: asyncio.Event = field(default_factory=asyncio.Event)
    frames_in: int = 0
    frames_out: int = 0

    async def send(self, frame: Frame) -> None:
        await self.websocket.send(encode(frame))
        self.frames_out += 1


class Gateway:
    """The WebSocket server in front of the runtime.

    :meth:`start` binds; :meth:`stop` is idempotent: it stops accepting,
    closes every connection with 1012 (service restart), gives handlers
    ``shutdown_grace`` seconds and cancels the rest.
    """

    def __init__(
        self,
        config: GatewayConfig,
        verifier: TokenVerifier,
        runtime: AgentRuntimeServiceAsyncStub,
    ) -> None:
        self._config = config
        self._verifier = verifier
        self._runtime = runtime
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
            select_subprotocol=_select_subprotocol,
            compression=None,
            open_timeout=config.open_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
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

    # -- HTTP ------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path in _HEALTH_PATHS:
            if request.method not in {"GET", "HEAD"}:
                return _refuse(http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        session_id = _ws_session_id(url.path)
        if session_id is None or not session_id or "/" in session_id:
            # The REST read views (agents, sessions, history, approvals)
            # will be routed here, before the 404.
            return _refuse(http.HTTPStatus.NOT_FOUND, "not_found", "no such path")
        return await self._authorize_upgrade(connection, request, session_id, url.query)

    async def _authorize_upgrade(
        self, connection: ServerConnection, request: Request, session_id: str, query: str
    ) -> Response | None:
        if request.method != "GET":
            return _refuse(http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        if not _SESSION_ID.fullmatch(session_id):
            return _refuse(
                http.HTTPStatus.BAD_REQUEST,
                "invalid_session_id",
                "session ids are 1-128 characters of A-Z a-z 0-9 . _ : -",
            )
        resume_after_seq: int | None = None
        last_seq = parse_qs(query).get("last_seq")
        if last_seq:
            if not last_seq[0].isdigit() or len(last_seq[0]) > 20:
                return _refuse(
                    http.HTTPStatus.BAD_REQUEST, "invalid_last_seq", "last_seq is not an integer"
                )
            resume_after_seq = int(last_seq[0])
        token = bearer_token(request.headers)
        if token is None:
            log.info("handshake_refused", path=urlsplit(request.path).path, reason="missing token")
            return _refuse_token("missing bearer token")
        try:
            principal = await self._verifier.verify(token)
        except InvalidToken as exc:
            log.info("handshake_refused", session_id=session_id, reason=exc.reason)
            return _refuse_token(exc.reason)
        except KeysUnavailable:
            log.warning("handshake_refused", session_id=session_id, reason="keys unavailable")
            return _refuse_unavailable()
        request_id = _header(request.headers, "X-Request-Id")
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        self._handshakes[connection] = _Handshake(
            session_id, principal, resume_after_seq, request_id
        )
        return None

    # -- WebSocket -------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        handshake = self._handshakes.pop(connection, None)
        if handshake is None:  # pragma: no cover - process_request always stores one
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        link = _Link(connection, handshake.session_id, handshake.principal)
        started = time.monotonic()
        metadata = internal_metadata(
            self._config.internal_api_key,
            user=handshake.principal.subject,
            request_id=handshake.request_id,
        )
        with structlog.contextvars.bound_contextvars(
            session_id=handshake.session_id,
            user=handshake.principal.subject,
            request_id=handshake.request_id,
        ):
            call = self._runtime.Converse(metadata=metadata)
            try:
                opening = runtime_pb2.OpenSession(session_id=handshake.session_id)
                if handshake.resume_after_seq is not None:
                    opening.resume_after_seq = handshake.resume_after_seq
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # A failed call is reported by the runtime pump's read.
                    await call.write(runtime_pb2.ConverseRequest(open=opening))
                await self._pump(link, call)
            finally:
                call.cancel()
                log.info(
                    "connection_closed",
                    duration=round(time.monotonic() - started, 3),
                    frames_in=link.frames_in,
                    frames_out=link.frames_out,
                    close_code=connection.close_code,
                )

    async def _pump(self, link: _Link, call: ConverseCall) -> None:
        """Run both directions and the expiry watch until one of them ends."""
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._ide_to_runtime(link, call)),
                group.create_task(self._runtime_to_ide(link, call)),
                group.create_task(self._enforce_expiry(link)),
            ]

            def stop_the_others(done: asyncio.Task[None]) -> None:
                for task in tasks:
                    if task is not done:
                        task.cancel()

            for task in tasks:
                task.add_done_callback(stop_the_others)

    async def _ide_to_runtime(self, link: _Link, call: ConverseCall) -> None:
        """Forward IDE frames until the WebSocket closes."""
        try:
            async for message in link.websocket:
                link.frames_in += 1
                if isinstance(message, bytes):
                    await link.send(error_frame("binary_frame", "binary frames are not supported"))
                    continue
                try:
                    action = parse_frame(message)
                except FrameError as exc:
                    await link.send(error_frame(exc.code, exc.message))
                    continue
                if isinstance(action, Reauthenticate):
                    await self._reauthenticate(link, action.token)
                    continue
                try:
                    await call.write(action)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # The stream is over; the runtime pump reports why and
                    # closes the WebSocket.
                    await link.websocket.wait_closed()
                    return
        except ConnectionClosed:
            return

    async def _runtime_to_ide(self, link: _Link, call: ConverseCall) -> None:
        """Forward runtime events until the stream ends, then close."""
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    closing = closing_for_status(grpc.StatusCode.OK, None)
                    break
                frame = frame_for(response)
                if frame is None:
                    log.warning("unknown_runtime_event", seq=response.seq)
                    continue
                await link.send(frame)
        except grpc.aio.AioRpcError as exc:
            closing = closing_for_status(exc.code(), exc.details())
            log.info("runtime_stream_failed", status=exc.code().name)
        except ConnectionClosed:
            return
        await self._close(link, closing)

    async def _reauthenticate(self, link: _Link, token: str) -> None:
        try:
            principal = await self._verifier.verify(token)
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
        link.refreshed.set()

    async def _enforce_expiry(self, link: _Link) -> None:
        """Close the connection once its token expires without a refresh."""
        while True:
            remaining = (
                link.principal.expires_at.timestamp() + self._config.jwt_leeway - time.time()
            )
            if remaining <= 0:
                await self._close(link, TOKEN_EXPIRED)
                return
            link.refreshed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await link.refreshed.wait()

    async def _close(self, link: _Link, closing: Closing) -> None:
        if closing.frame is not None:
            with contextlib.suppress(ConnectionClosed):
                await link.send(closing.frame)
        log.info("connection_closing", close_code=closing.code, reason=closing.reason)
        await link.websocket.close(closing.code, closing.reason)
