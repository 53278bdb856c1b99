"""What a request asks for, read from its method, path and headers; pure.

:func:`parse_upgrade` reads a WebSocket upgrade request — its session id
from the path, the resume point from ``?last_seq=``, the access token and
the ``Origin`` against the allow-list — without I/O, so its tests feed it
strings. A request it refuses raises :class:`gateway.errors.BadHandshake`,
which :mod:`gateway.codes` turns into an HTTP status. The checks that need
I/O (connection limits, the token's signature, the session's owner) stay in
:class:`gateway.server.Gateway`, in the order docs/GATEWAY.md gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.typing import Subprotocol

from gateway.errors import BadHandshake, HandshakeProblem
from gateway.frames import last_seq_from_query
from gateway.jwks import Principal
from mesh.ids import SESSION_ID
from runtime.v1 import runtime_pb2

BEARER_SUBPROTOCOL = Subprotocol("bearer")
"""Browsers send ``Sec-WebSocket-Protocol: bearer, <token>``; we select this."""

WEBSOCKET_PREFIXES = ("/api/v1/ws/", "/ws/")
"""A WebSocket path is one of these followed by the session id."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A well-formed WebSocket upgrade request (not yet authenticated)."""

    session_id: str
    resume_after_seq: int | None
    """``?last_seq=``: replay the session's events after it; None for none."""
    token: str | None
    """The access token offered (:func:`bearer_token`), None when missing."""


@dataclass(slots=True)
class Handshake:
    """What an accepted upgrade established, handed to
    :meth:`gateway.connection.Connections.handle`."""

    session_id: str
    principal: Principal
    resume_after_seq: int | None
    request_id: str
    quiet: runtime_pb2.GetCurrentAgentResponse | None = None
    """Set when the session is idle and the client asked for nothing to
    replay: the connection may attach to the runtime later, on its first
    frame or when the session moves past ``quiet.last_seq``."""
    created: bool = False


def parse_upgrade(
    method: str, path: str, query: str, headers: Headers, allowed_origins: Sequence[str]
) -> Upgrade | None:
    """The upgrade ``path`` asks for; None when ``path`` is no WebSocket path.

    Checked in this order, each raising :class:`BadHandshake` with its
    problem: a session id after the prefix and no further ``/``
    (NO_SUCH_PATH), method GET (METHOD_NOT_ALLOWED), the session id's form
    (BAD_SESSION_ID), ``last_seq`` from 0 to ``MAX_SEQ`` (BAD_LAST_SEQ; an
    empty one is no resume point), the ``Origin`` (ORIGIN_NOT_ALLOWED). The
    token comes from ``Authorization: Bearer``, else the subprotocol pair
    ``bearer, <token>``, else one ``access_token`` query parameter. A
    missing token is not refused here: it is checked after the process's
    connection limit, so a flood of tokenless upgrades costs no more.
    """
    session_id = websocket_session_id(path)
    if session_id is None:
        return None
    if not session_id or "/" in session_id:
        raise BadHandshake(HandshakeProblem.NO_SUCH_PATH)
    if method != "GET":
        raise BadHandshake(HandshakeProblem.METHOD_NOT_ALLOWED, session_id)
    if not SESSION_ID.fullmatch(session_id):
        raise BadHandshake(HandshakeProblem.BAD_SESSION_ID)
    resume_after_seq: int | None = None
    last_seq = parse_qs(query).get("last_seq")
    if last_seq:
        resume_after_seq = last_seq_from_query(last_seq[0])
        if resume_after_seq is None:
            raise BadHandshake(HandshakeProblem.BAD_LAST_SEQ, session_id)
    if not origin_allowed(headers, allowed_origins):
        raise BadHandshake(HandshakeProblem.ORIGIN_NOT_ALLOWED, session_id)
    token = bearer_token(headers)
    if "Authorization" not in headers and BEARER_SUBPROTOCOL not in offered_subprotocols(headers):
        # RFC 6750 §2.3, for clients that can set neither a header nor a
        # subprotocol; only at the upgrade, and never logged (the gateway
        # logs paths, not queries).
        given = parse_qs(query).get("access_token") or []
        token = given[0] if len(given) == 1 else None
    return Upgrade(session_id, resume_after_seq, token)


def websocket_session_id(path: str) -> str | None:
    """What follows a WebSocket prefix in ``path`` (maybe empty); None when
    ``path`` has no such prefix."""
    for prefix in WEBSOCKET_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


def bearer_token(headers: Headers) -> str | None:
    """The access token of a request: ``Authorization: Bearer <token>``,
    else the item after ``bearer`` in ``Sec-WebSocket-Protocol``."""
    authorization = single_header(headers, "Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    offered = offered_subprotocols(headers)
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
    origin = single_header(headers, "Origin")
    return origin is not None and origin.lower().rstrip("/") in allowed


def client_request_id(headers: Headers) -> str | None:
    """The client's ``X-Request-Id`` when there is exactly one and it looks
    like a session id (so it is safe to log and pass on); else None."""
    value = single_header(headers, "X-Request-Id")
    return value if value is not None and SESSION_ID.fullmatch(value) else None


def select_subprotocol(subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    """The subprotocol to answer with: only ever the ``bearer`` marker, since
    selecting the token would echo it."""
    return BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None


def single_header(headers: Headers, name: str) -> str | None:
    """The value of a header sent exactly once; None when absent or repeated."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def offered_subprotocols(headers: Headers) -> list[str]:
    """Every item of every ``Sec-WebSocket-Protocol`` header, in order."""
    return [
        item.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for item in value.split(",")
        if item.strip()
    ]
