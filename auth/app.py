"""The HTTP face of the auth service (Starlette).

Routes:

- ``POST /oauth/token`` — RFC 6749 token endpoint; body
  ``application/x-www-form-urlencoded`` of at most :data:`MAX_FORM_BYTES`;
  client authentication ``none`` (public), ``client_secret_basic`` or
  ``client_secret_post``. Success is 200 with ``Cache-Control: no-store``;
  errors are RFC 6749 §5.2 JSON: 400, except ``invalid_client`` (401, with
  ``WWW-Authenticate``), a throttled login (429 ``invalid_grant`` with
  ``Retry-After``) and ``temporarily_unavailable`` (503).
- ``POST /oauth/revoke`` — RFC 7009; 200 with an empty body for any token,
  known or not, once the client is authenticated.
- ``GET /internal/revocations?after=N`` — the revocation feed for the gateway
  (:mod:`auth.revocations`), behind ``X-Internal-Auth``; 404 when no internal
  key is configured, 401 for a wrong key.
- ``GET /.well-known/jwks.json`` — the published keys (current, next,
  retiring), cacheable for 5 minutes.
- ``GET /.well-known/openid-configuration`` — discovery (RFC 8414 fields).
- ``GET /health`` — liveness.

Prometheus metrics (request counts and durations by route, in the
``registry`` given to :func:`create_app`) are not served here: this port is
public (the IDE logs in on it), so ``/metrics`` is a 404 like any unknown
path; ``auth.__main__`` serves them on ``METRICS_PORT``.

This is the only module that knows HTTP: :class:`~auth.errors.OAuthError` is
mapped to a status here, and anything unexpected becomes a logged 500
``server_error``. The client address is the socket peer unless a trusted
proxy forwarded the request (:mod:`mesh.addresses`). :func:`create_app` takes
every resource as an argument and owns none of them; the caller closes them.
"""

from __future__ import annotations

import hmac
import math
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth.audit import AuditLog
from auth.clients import Client, Clients
from auth.config import AuthConfig
from auth.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    TemporarilyUnavailable,
    Throttled,
)
from auth.grants import Request as GrantRequest
from auth.grants import TokenEndpoint, parse_basic
from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.refresh import RefreshTokens
from auth.revocations import RevocationFeed
from auth.store import UserStore
from auth.throttle import LoginThrottle, ThrottlePolicy
from auth.tokens import TokenIssuer
from mesh.addresses import client_address
from mesh.metrics import LATENCY_BUCKETS

MAX_FORM_BYTES = 16 * 1024
"""Largest token request body we read; a bigger one is ``invalid_request``."""

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
SIGNING_ALGORITHMS = ("RS256", "ES256")
AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]

log = structlog.get_logger("auth.app")


class _BodyTooLarge(Exception):
    pass


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if isinstance(error, InvalidClient):
        status = 401
        headers["WWW-Authenticate"] = 'Basic realm="codelab-auth"'
    elif isinstance(error, Throttled):
        status = 429
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    elif isinstance(error, TemporarilyUnavailable):
        status = 503
    else:
        status = 400
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
    engine: AsyncEngine,
    passwords: Passwords,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The ASGI app over one database engine and key ring (neither is owned).

    Request counts and durations go to ``registry`` (default: a new one);
    the app does not serve them (see :class:`mesh.metrics.MetricsServer`).
    """
    registry = registry if registry is not None else CollectorRegistry()
    issuer = TokenIssuer(
        keys,
        issuer=config.issuer,
        audience=config.audience,
        ttl=config.access_token_ttl,
        clock=clock,
    )
    audit = AuditLog(engine, clock=clock)
    endpoint = TokenEndpoint(
        users=UserStore(engine),
        passwords=passwords,
        issuer=issuer,
        clients=Clients(
            engine,
            passwords,
            first_party=Client(
                client_id=config.client_id, confidential=False, scopes=config.scopes
            ),
            clock=clock,
        ),
        refresh_tokens=RefreshTokens(engine, ttl=config.refresh_token_ttl, clock=clock),
        throttle=LoginThrottle(
            engine,
            ThrottlePolicy.from_threshold(config.lockout_threshold, config.lockout_duration),
            clock=clock,
        ),
        audit=audit,
    )
    feed = RevocationFeed(engine, horizon=config.key_retire_after, clock=clock)
    discovery: dict[str, Any] = {
        "issuer": config.issuer,
        "token_endpoint": f"{config.issuer}/oauth/token",
        "revocation_endpoint": f"{config.issuer}/oauth/revoke",
        "jwks_uri": f"{config.issuer}/.well-known/jwks.json",
        "grant_types_supported": list(endpoint.grant_types),
        "response_types_supported": [],
        "scopes_supported": list(config.scopes),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "access_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
    }

    def grant_request(request: Request, params: list[tuple[str, str]]) -> GrantRequest:
        peer = request.client.host if request.client else None
        address = client_address(
            peer, request.headers.getlist("x-forwarded-for"), config.trusted_proxies
        )
        basic = parse_basic(request.headers.get("authorization"))
        return GrantRequest(params=params, address=address, basic=basic)

    async def token(request: Request) -> Response:
        try:
            params = await _read_form(request)
            response = await endpoint.handle(grant_request(request, params))
        except OAuthError as error:
            return _oauth_error(error)
        return JSONResponse(response.to_json(), headers=NO_STORE)

    async def revoke(request: Request) -> Response:
        try:
            params = await _read_form(request)
            await endpoint.revoke(grant_request(request, params))
        except OAuthError as error:
            return _oauth_error(error)
        return Response(status_code=200, headers=NO_STORE)

    async def revocations_view(request: Request) -> Response:
        if config.internal_api_key is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        presented = request.headers.get("x-internal-auth", "")
        if not hmac.compare_digest(presented.encode(), config.internal_api_key.encode()):
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers=NO_STORE)
        raw = request.query_params.get("after", "0")
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "after must be an integer >= 0"},
                status_code=400,
            )
        rows, cursor = await feed.page(int(raw))
        return JSONResponse(
            {"revocations": [row.to_json() for row in rows], "next": cursor}, headers=NO_STORE
        )

    async def jwks_view(request: Request) -> Response:
        return JSONResponse(keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def discovery_view(request: Request) -> Response:
        return JSONResponse(discovery, headers={"Cache-Control": "public, max-age=300"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/internal/revocations", revocations_view, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks_view, methods=["GET"]),
            Route("/.well-known/openid-configuration", discovery_view, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
    )
    app.add_middleware(RequestLogMiddleware, metrics=HttpMetrics(registry))
    return app


class HttpMetrics:
    """``codelab_auth_http_requests_total`` and ``..._duration_seconds``, by
    route (unknown paths count as ``other``) and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "codelab_auth_http_requests",
            "HTTP requests answered, by route and status.",
            ["path", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "codelab_auth_http_request_duration_seconds",
            "HTTP request duration, by route.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class RequestLogMiddleware:
    """Binds ``request_id`` for the request's logs and logs one ``http_request`` line.

    Unhandled exceptions are logged here and answered with a JSON 500
    ``server_error`` (if nothing was sent yet). Never logs bodies or headers,
    which carry passwords and tokens.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

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
                elapsed = time.perf_counter() - started
                if self.metrics is not None:
                    path = scope["path"] if scope["path"] in _ROUTE_PATHS else "other"
                    self.metrics.requests.labels(path, str(status)).inc()
                    self.metrics.duration.labels(path).observe(elapsed)
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )


_ROUTE_PATHS = frozenset(
    {
        "/oauth/token",
        "/oauth/revoke",
        "/internal/revocations",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/health",
    }
)
