"""The REST views on a port of their own, where request bodies are read.

The WebSocket port is a pure ``websockets`` server, and websockets refuses
any request with a body; the CodeLab IDE renames a session with ``PATCH
/api/v1/sessions/{id}`` and a JSON body (and ``PUT /api/v1/approval-rules``
replaces a user's approval rules). So the gateway process also serves
the same typed view table (:data:`gateway.rest.VIEWS`) on
``GATEWAY__REST_PORT`` through a small starlette app under uvicorn (both
already used by ``auth/``): starlette reads the body (``Content-Length`` or
chunked, at most :data:`gateway.rest.MAX_BODY_BYTES`: 413 beyond), and
:meth:`gateway.server.Gateway.answer_rest` answers it exactly as the
WebSocket port answers a view (connect-rate limit, token, owner-scoped
runtime call, the one status mapping in :mod:`gateway.codes`). The front
door routes every REST path (``/api/v1/sessions*``, ``/api/v1/agents*``,
``/api/v1/approval-rules*``, ``/api/v1/instructions``) here and WebSocket
upgrades to the WebSocket port.

No WebSocket, health or metrics here; anything but a view is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
from collections.abc import Generator

import structlog
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from websockets.datastructures import Headers
from websockets.http11 import Response as WsResponse

from gateway.codes import refuse
from gateway.rest import MAX_BODY_BYTES
from gateway.server import Gateway

log = structlog.get_logger("gateway.rest_server")


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """The whole body, refusing more than MAX_BODY_BYTES as it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _starlette(response: WsResponse) -> Response:
    headers = {
        name: value
        for name, value in response.headers.raw_items()
        if name.lower() not in ("content-length", "connection")
    }
    return Response(response.body, status_code=response.status_code, headers=headers)


class RestApp:
    """The ASGI app: every HTTP request is a view request for ``gateway``."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs without lifespan; no WebSocket here
            return
        request = Request(scope, receive)
        try:
            body = await _read_body(request)
        except _BodyTooLarge:
            answer = _starlette(
                refuse(
                    http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "body_too_large",
                    f"a request body is at most {MAX_BODY_BYTES} bytes",
                )
            )
            await answer(scope, receive, send)
            return
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        target = scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        peer = request.client.host if request.client is not None else ""
        response = await self._gateway.answer_rest(
            request.method, target, headers, peer, body or None
        )
        await _starlette(response)(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the gateway's
    composition root owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class RestServer:
    """:class:`RestApp` under uvicorn on ``host:port`` (0 picks a free one).

    :meth:`start` binds (raising OSError when it cannot) and returns once
    the socket accepts; :meth:`stop` is idempotent and gives requests in
    flight ``grace`` seconds.
    """

    def __init__(self, gateway: Gateway, host: str, port: int, *, grace: float) -> None:
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server = _Server(
            uvicorn.Config(
                RestApp(gateway),
                host=host,
                port=port,
                log_config=None,
                lifespan="off",
                access_log=False,
                # The client address is mesh.addresses' job (trusted proxies).
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=max(1, int(grace)),
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port; only valid after :meth:`start`."""
        if self._socket is None:
            raise RuntimeError("the REST server is not started")
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        # Bound here, so a taken port is an OSError of this call (uvicorn
        # binding itself would exit the process).
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="gateway-rest")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError("the REST server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("gateway_rest_started", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            self._server.should_exit = True
            await task
        if self._socket is not None:
            self._socket.close()
