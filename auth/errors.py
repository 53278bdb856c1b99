"""The errors of the auth service, free of any transport.

Two families:

- :class:`OAuthError` and its subclasses carry an RFC 6749 §5.2 error code
  (``invalid_request``, ``invalid_grant`` ...) and a description that is safe
  to show to the client. ``auth.app`` maps them to HTTP statuses in one place.
- :class:`NotFound`, :class:`AlreadyExists` and :class:`WeakPassword` are raised
  by the user store and the password policy; the admin CLI reports them.
"""

from __future__ import annotations


class AuthError(Exception):
    """Base of every error this service raises on purpose."""


class NotFound(AuthError):
    """The named user does not exist."""


class AlreadyExists(AuthError):
    """A user with that username already exists."""


class WeakPassword(AuthError):
    """The password does not satisfy the password policy; the message says why."""


class InvalidUsername(AuthError):
    """The username is empty, too long or contains characters we refuse."""


class OAuthError(AuthError):
    """An RFC 6749 §5.2 error response; ``code`` is the ``error`` field."""

    code = "server_error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidRequest(OAuthError):
    """Missing, repeated or malformed parameter, or a wrong content type."""

    code = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed: unknown client or none presented."""

    code = "invalid_client"


class InvalidGrant(OAuthError):
    """The credentials (or, later, the refresh token) are wrong, expired or revoked."""

    code = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The client is known but may not use this grant type."""

    code = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """The grant type is not one this server implements."""

    code = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """The requested scope is malformed or exceeds what the client may ask for."""

    code = "invalid_scope"


class Throttled(InvalidGrant):
    """Too many failed logins; answered 429 with ``Retry-After``.

    The code stays ``invalid_grant`` (RFC 6749 §5.2 has no better one); the
    HTTP status and header tell a client how long to wait.
    """

    def __init__(self, description: str, *, retry_after: float) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class TemporarilyUnavailable(OAuthError):
    """A dependency (the database) failed; the request was refused, not guessed."""

    code = "temporarily_unavailable"


class UnsupportedTokenType(OAuthError):
    """RFC 7009 §2.2.1: the server cannot revoke this kind of token."""

    code = "unsupported_token_type"
