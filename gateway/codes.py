"""Every failure's WebSocket close code, ``error`` frame and HTTP status, in one place.

The rest of the gateway raises or names failures (:mod:`gateway.errors`,
a runtime call's gRPC status, a :class:`Closing` constant) and asks this
module how to answer them: :func:`closing_for_status` for a ``Converse``
stream that ended, :func:`error_frame_for` for an IDE frame refused on an
open connection, :func:`refuse_handshake` / :func:`refuse_session_access` /
:func:`refuse_overload` / :func:`refuse_token` for an upgrade, and
:func:`response_for_status` / :func:`refuse_query` for a REST view.

Close codes fall in two classes the IDE must tell apart (docs/GATEWAY.md
has the table):

- **terminal** — reconnecting with the same token or to the same session
  cannot help: 1008 (policy: someone else's session, token expired without
  refresh, ``auth`` for another user, frame rate exceeded), 1009 (frame too
  large), 1007 (text frame not UTF-8), 4001 (token revoked: log in again);
- **retryable** — reconnect with backoff, resuming from the last ``seq``:
  1001 (idle timeout), 1011 (internal error), 1012 (gateway restart), 1013
  (runtime unavailable or busy, or the IDE read too slowly).

1000 means the runtime ended the stream normally.
"""

from __future__ import annotations

import http
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Response

from gateway.errors import (
    FrameError,
    HandshakeProblem,
    InvalidQuery,
    InvalidToken,
    KeysUnavailable,
)
from gateway.frames import MAX_SEQ, Frame, error_frame

_MAX_CLOSE_REASON_BYTES = 123
_MAX_DESCRIPTION_CHARS = 1024
"""Of a runtime's reason passed on in an HTTP error body (a rule named in it)."""

TOKEN_REVOKED_CODE = 4001
"""Private-use close code: the token was revoked; the IDE must log in again."""

RETRYABLE_CLOSE_CODES = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
    }
)
"""Close codes after which the IDE should reconnect (with backoff)."""


# ---------------------------------------------------------------------------
# WebSocket close codes


@dataclass(frozen=True, slots=True)
class Closing:
    """How to end an IDE connection: an optional last frame, then a close."""

    code: int
    reason: str
    frame: Frame | None = None

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CLOSE_CODES


TOKEN_EXPIRED = Closing(CloseCode.POLICY_VIOLATION, "token expired")
TOKEN_REVOKED = Closing(TOKEN_REVOKED_CODE, "token revoked")
SUBJECT_CHANGED = Closing(CloseCode.POLICY_VIOLATION, "token is for another user")
FRAME_RATE_EXCEEDED = Closing(CloseCode.POLICY_VIOLATION, "frame rate exceeded")
IDLE_TIMEOUT = Closing(CloseCode.GOING_AWAY, "idle timeout")
SLOW_CONSUMER = Closing(CloseCode.TRY_AGAIN_LATER, "client too slow to read")
SERVICE_RESTART = Closing(CloseCode.SERVICE_RESTART, "service restart")
KEEPALIVE_TIMEOUT = Closing(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

_CLOSING_BY_STATUS: dict[grpc.StatusCode, Closing] = {
    grpc.StatusCode.OK: Closing(CloseCode.NORMAL_CLOSURE, "session ended"),
    grpc.StatusCode.UNAVAILABLE: Closing(CloseCode.TRY_AGAIN_LATER, "runtime unavailable"),
    grpc.StatusCode.CANCELLED: Closing(CloseCode.TRY_AGAIN_LATER, "runtime cancelled the stream"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: Closing(CloseCode.TRY_AGAIN_LATER, "runtime busy"),
    grpc.StatusCode.PERMISSION_DENIED: Closing(CloseCode.POLICY_VIOLATION, "permission denied"),
    # The runtime's only FAILED_PRECONDITION: the session was deleted.
    grpc.StatusCode.FAILED_PRECONDITION: Closing(
        CloseCode.POLICY_VIOLATION, "the session was deleted"
    ),
    grpc.StatusCode.UNAUTHENTICATED: Closing(CloseCode.INTERNAL_ERROR, "gateway not trusted"),
}


def closing_for_status(code: grpc.StatusCode, details: str | None) -> Closing:
    """How a ``Converse`` stream that ended with ``code`` ends the connection.

    OK → 1000; UNAVAILABLE, CANCELLED, RESOURCE_EXHAUSTED → 1013 (try again
    later); PERMISSION_DENIED → 1008 (terminal: someone else's session);
    FAILED_PRECONDITION → 1008 (terminal: the session was deleted);
    UNAUTHENTICATED (the runtime refused the gateway's credential) → 1011;
    anything else → an ``error`` frame, then 1011.
    """
    known = _CLOSING_BY_STATUS.get(code)
    if code is grpc.StatusCode.PERMISSION_DENIED and details:
        return Closing(known.code if known else CloseCode.POLICY_VIOLATION, clip_reason(details))
    if known is not None:
        return known
    message = f"the runtime failed ({code.name.lower()})"
    return Closing(CloseCode.INTERNAL_ERROR, "runtime error", error_frame("runtime_error", message))


def clip_reason(reason: str) -> str:
    """``reason`` cut to what a close frame can carry, on a character boundary."""
    encoded = reason.encode()[:_MAX_CLOSE_REASON_BYTES]
    return encoded.decode(errors="ignore")


def error_frame_for(error: Exception) -> Frame:
    """The ``error`` frame that answers an IDE frame the gateway could not
    take (the connection stays open): a :class:`FrameError` with its code,
    a re-authentication's InvalidToken (``invalid_token``) or
    KeysUnavailable (``keys_unavailable``, retryable); anything else is a
    parser bug and costs the frame only (``invalid_frame``)."""
    if isinstance(error, FrameError):
        return error_frame(error.code, error.message)
    if isinstance(error, InvalidToken):
        return error_frame("invalid_token", error.reason)
    if isinstance(error, KeysUnavailable):
        return error_frame("keys_unavailable", "cannot verify tokens now", retryable=True)
    return error_frame("invalid_frame", "the frame could not be read")


# ---------------------------------------------------------------------------
# HTTP statuses (handshake refusals and the REST views)


def json_response(
    status: http.HTTPStatus,
    body: dict[str, Any] | list[Any],
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    """A JSON response; every response closes its connection."""
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return _response(status, "application/json", payload, headers)


def text_response(status: http.HTTPStatus, media_type: str, text: str) -> Response:
    """A response of ``text`` as UTF-8 (``media_type`` should say so); it
    closes its connection."""
    return _response(status, media_type, text.encode(), ())


def _response(
    status: http.HTTPStatus, media_type: str, payload: bytes, headers: Sequence[tuple[str, str]]
) -> Response:
    return Response(
        status.value,
        status.phrase,
        Headers(
            [
                ("Content-Type", media_type),
                ("Content-Length", str(len(payload))),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
                *headers,
            ]
        ),
        payload,
    )


def refuse(
    status: http.HTTPStatus,
    error: str,
    description: str,
    *,
    retry_after: str | None = None,
) -> Response:
    """An ``{"error", "error_description"}`` refusal, with ``Retry-After``
    when the client may try again later."""
    headers = [("Retry-After", retry_after)] if retry_after is not None else []
    return json_response(status, {"error": error, "error_description": description}, headers)


def refuse_token(reason: str) -> Response:
    """401 for a missing, invalid, expired or revoked token."""
    return json_response(
        http.HTTPStatus.UNAUTHORIZED,
        {"error": "invalid_token", "error_description": reason},
        [("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{reason}"')],
    )


def refuse_keys_unavailable() -> Response:
    return refuse(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "cannot verify tokens now",
        retry_after="5",
    )


_HANDSHAKE_REFUSALS: dict[HandshakeProblem, tuple[http.HTTPStatus, str, str]] = {
    HandshakeProblem.NO_SUCH_PATH: (http.HTTPStatus.NOT_FOUND, "not_found", "no such path"),
    HandshakeProblem.METHOD_NOT_ALLOWED: (
        http.HTTPStatus.METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use GET",
    ),
    HandshakeProblem.BAD_SESSION_ID: (
        http.HTTPStatus.BAD_REQUEST,
        "invalid_session_id",
        "session ids are 1-128 characters of A-Z a-z 0-9 . _ : -",
    ),
    HandshakeProblem.BAD_LAST_SEQ: (
        http.HTTPStatus.BAD_REQUEST,
        "invalid_last_seq",
        f"last_seq must be an integer from 0 to {MAX_SEQ}",
    ),
    HandshakeProblem.ORIGIN_NOT_ALLOWED: (
        http.HTTPStatus.FORBIDDEN,
        "origin_not_allowed",
        "origin not allowed",
    ),
}


def refuse_handshake(problem: HandshakeProblem) -> Response:
    """The refusal of an upgrade request :func:`gateway.handshake.parse_upgrade`
    found unusable: 404 (no such path), 405 (not GET), 400 (session id,
    ``last_seq``), 403 (origin)."""
    status, error, description = _HANDSHAKE_REFUSALS[problem]
    return refuse(status, error, description)


def refuse_query(error: InvalidQuery) -> Response:
    """400 for a REST view's unusable path or query parameter."""
    return refuse(http.HTTPStatus.BAD_REQUEST, error.error, error.description)


def refuse_view_method() -> Response:
    """405 for a view's path asked with another method."""
    return refuse(
        http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here"
    )


def refuse_connect_rate(retry_after: str) -> Response:
    """429 when the client's address opens connections too fast."""
    return refuse(
        http.HTTPStatus.TOO_MANY_REQUESTS,
        "rate_limited",
        "too many connections from this address",
        retry_after=retry_after,
    )


OVERLOAD_RETRY_AFTER = "5"


def refuse_overload(scope: str) -> Response:
    """429 when the user (``scope`` "user") has too many connections open,
    503 when the process has."""
    if scope == "user":
        return refuse(
            http.HTTPStatus.TOO_MANY_REQUESTS,
            "too_many_connections",
            "this user has too many open connections",
            retry_after=OVERLOAD_RETRY_AFTER,
        )
    return refuse(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the gateway is at its connection limit",
        retry_after=OVERLOAD_RETRY_AFTER,
    )


def refuse_session_access(code: grpc.StatusCode, details: str | None) -> Response | None:
    """The handshake's answer when the ownership probe (``GetCurrentAgent``
    as the user) failed with ``code``; None lets the upgrade through.

    NOT_FOUND (a new session: ``open`` creates it) and UNIMPLEMENTED (a
    runtime without the unary reads: ``open`` still refuses a foreign
    session, with close 1008) pass; PERMISSION_DENIED → 403;
    FAILED_PRECONDITION (a deleted session) → 404; anything else
    as a view's failure (:func:`response_for_status`).
    """
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
        return None
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return refuse(http.HTTPStatus.FORBIDDEN, "forbidden", "the session belongs to another user")
    return response_for_status(code, details)


RUNTIME_RETRY_AFTER = "2"

_HTTP_BY_STATUS: dict[grpc.StatusCode, tuple[http.HTTPStatus, str, str]] = {
    # A foreign session must be indistinguishable from a missing one.
    grpc.StatusCode.NOT_FOUND: (http.HTTPStatus.NOT_FOUND, "not_found", "no such session"),
    grpc.StatusCode.PERMISSION_DENIED: (http.HTTPStatus.NOT_FOUND, "not_found", "no such session"),
    # A deleted session is gone for its owner too.
    grpc.StatusCode.FAILED_PRECONDITION: (
        http.HTTPStatus.NOT_FOUND,
        "not_found",
        "no such session",
    ),
    grpc.StatusCode.INVALID_ARGUMENT: (http.HTTPStatus.BAD_REQUEST, "invalid_request", ""),
    grpc.StatusCode.ALREADY_EXISTS: (http.HTTPStatus.CONFLICT, "already_exists", ""),
    # Not now, in this session's state (a turn runs, nothing to undo): the details say why.
    grpc.StatusCode.ABORTED: (http.HTTPStatus.CONFLICT, "conflict", ""),
    grpc.StatusCode.UNIMPLEMENTED: (
        http.HTTPStatus.NOT_IMPLEMENTED,
        "not_implemented",
        "the runtime does not offer this view yet",
    ),
    grpc.StatusCode.UNAVAILABLE: (
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the runtime is unavailable",
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the runtime did not answer in time",
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the runtime is busy",
    ),
}


def response_for_status(code: grpc.StatusCode, details: str | None) -> Response:
    """The HTTP answer of a REST view whose runtime call failed with ``code``.

    NOT_FOUND, PERMISSION_DENIED and FAILED_PRECONDITION (deleted) → 404;
    INVALID_ARGUMENT → 400 (with the
    runtime's details); ALREADY_EXISTS and ABORTED (with the details) → 409;
    UNIMPLEMENTED → 501;
    UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED → 503 with
    Retry-After; anything else → 502.
    """
    known = _HTTP_BY_STATUS.get(code)
    if known is None:
        return refuse(http.HTTPStatus.BAD_GATEWAY, "runtime_error", "the runtime failed")
    status, error, description = known
    if not description:
        description = (details or status.phrase)[:_MAX_DESCRIPTION_CHARS]
    retry = RUNTIME_RETRY_AFTER if status is http.HTTPStatus.SERVICE_UNAVAILABLE else None
    return refuse(status, error, description, retry_after=retry)
