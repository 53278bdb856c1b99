"""The gateway's errors, named for what went wrong, not for a transport.

They are mapped to HTTP statuses (handshake), ``error`` frames and WebSocket
close codes in exactly one place: :mod:`gateway.server`.
"""

from __future__ import annotations


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
