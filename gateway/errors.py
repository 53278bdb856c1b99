"""The gateway's errors, named for what went wrong, not for a transport.

They are mapped to HTTP statuses (handshake), ``error`` frames and WebSocket
close codes in exactly one place: :mod:`gateway.codes`.
"""

from __future__ import annotations

import enum


class GatewayError(Exception):
    """Base class of the gateway's own errors."""


class InvalidToken(GatewayError):
    """An access token was refused; ``reason`` is safe to show and to log.

    The reason never contains the token or any of its claims' values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(GatewayError):
    """The issuer's signing keys could not be fetched; try again later."""


class FrameError(GatewayError):
    """An IDE frame is unusable; ``code`` is stable, ``message`` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SlowConsumer(GatewayError):
    """The IDE did not read its frames for longer than the send timeout."""


class HandshakeProblem(enum.Enum):
    """Why a WebSocket upgrade request is unusable as sent."""

    NO_SUCH_PATH = "no such path"
    METHOD_NOT_ALLOWED = "method not allowed"
    BAD_SESSION_ID = "malformed session id"
    BAD_LAST_SEQ = "malformed last_seq"
    ORIGIN_NOT_ALLOWED = "origin not allowed"


class BadHandshake(GatewayError):
    """A WebSocket upgrade request is malformed or not allowed as sent;
    ``session_id`` is the one it named, when it named a usable one."""

    def __init__(self, problem: HandshakeProblem, session_id: str | None = None) -> None:
        super().__init__(problem.value)
        self.problem = problem
        self.session_id = session_id


class InvalidQuery(GatewayError):
    """A REST view's path or query parameter is unusable; ``error`` is
    stable, ``description`` is for humans."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
