"""The HTTP face of the auth service (Starlette).

Routes:

- ``POST /oauth/token`` — RFC 6749 token endpoint; body
  ``application/x-www-form-urlencoded`` of at most :data:`MAX_FORM_BYTES`.
  Success is 200 with ``Cache-Control: no-store``; errors are RFC 6749 §5.2
  JSON, 400 except ``invalid_client`` (401, with ``WWW-Authenticate``).
- ``GET /.well-known/jwks.json`` — the public keys, cacheable for 5 minutes.
- ``GET /.well-known/openid-configuration`` — discovery (RFC 8414 fields).
- ``GET /health`` — liveness.

This is the only module that knows HTTP: :class:`~auth.errors.OAuthError` is
mapped to a status here, and anything unexpected becomes a logged 500
``server_error``. :func:`create_app` takes every resource as an argument and
owns none of them; the caller closes them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth.config import AuthConfig
from auth.errors import InvalidClient, InvalidRequest, OAuthError
from auth.grants import Client, TokenEndpoint
from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.store import UserStore
from auth.tokens import TokenIssuer

MAX_FORM_BYTES = 16 * 1024
"""Largest token request body we read; a bigger one is ``invalid_request``."""

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
SIGNING_ALGORITHMS = ("RS256", "ES256")

log = structlog.get_logger("auth.app")


class _BodyTooLarge(Exception):
    pass


def _oauth_error(error: OAuthError) -> JSONResponse:
    status = 401 if isinstance(error, InvalidClient) else 400
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="codelab-auth"'
    return JSONResponse(
        {"error": error.code, "error_description": error.description},
        status_code=status,
        headers=headers,
    )


async def _read_form(request: Request) -> list[tuple[str, str]]:
    """The decoded form fields in order; raises :class:`InvalidRequest`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"the request body must be {FORM_CONTENT_TYPE}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise _BodyTooLarge
    except _BodyTooLarge:
        raise InvalidRequest("the request body is too large") from None
    try:
        text = bytes(body).decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the request body is not valid form data") from None


def create_app(
    config: AuthConfig,
    *,
    keys: KeyRing,
    users: UserStore,
    passwords: Passwords,
    issuer: TokenIssuer | None = None,
) -> Starlette:
    """The ASGI app; ``issuer`` defaults to one built from ``config`` and ``keys``."""
    if issuer is None:
        issuer = TokenIssuer(
            keys,
            issuer=config.issuer,
            audience=config.audience,
            ttl=config.access_token_ttl,
        )
    endpoint = TokenEndpoint(
        users=users,
        passwords=passwords,
        issuer=issuer,
        clients=[
            Client(
                client_id=config.client_id,
                grant_types=frozenset({"password"}),
                scopes=config.scopes,
            )
        ],
    )
    jwks = keys.jwks()
    discovery: dict[str, Any] = {
        "issuer": config.issuer,
        "token_endpoint": f"{config.issuer}/oauth/token",
        "jwks_uri": f"{config.issuer}/.well-known/jwks.json",
        "grant_types_supported": list(endpoint.grant_types),
        "response_types_supported": [],
        "scopes_supported": list(config.scopes),
        "token_endpoint_auth_methods_supported": ["none"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "access_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
    }

    async def token(request: Request) -> Response:
        try:
            params = await _read_form(request)
            response = await endpoint.handle(params)
        except OAuthError as error:
            return _oauth_error(error)
        return JSONResponse(
            response.to_json(),
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def jwks_view(request: Request) -> Response:
        return JSONResponse(jwks, headers={"Cache-Control": "public, max-age=300"})

    async def discovery_view(request: Request) -> Response:
        return JSONResponse(discovery, headers={"Cache-Control": "public, max-age=300"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/.well-known/jwks.json", jwks_view, methods=["GET"]),
            Route("/.well-known/openid-configuration", discovery_view, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
    )
    app.add_middleware(RequestLogMiddleware)
    return app


class RequestLogMiddleware:
    """Binds ``request_id`` for the request's logs and logs one ``http_request`` line.

    Unhandled exceptions are logged here and answered with a JSON 500
    ``server_error`` (if nothing was sent yet). Never logs bodies or headers,
    which carry passwords and tokens.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id" and 0 < len(value) <= 128:
                request_id = value.decode("latin-1")
                break
        status = 500
        started = time.perf_counter()
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_wrapper)
            except ClientDisconnect:
                status = 499
            except Exception:
                log.exception("http_request_failed", method=scope["method"], path=scope["path"])
                if not response_started:
                    error = JSONResponse(
                        {"error": "server_error", "error_description": "internal error"},
                        status_code=500,
                    )
                    await error(scope, receive, send)
            finally:
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
