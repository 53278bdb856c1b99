"""Who an access token speaks for, and whether it still may.

:class:`Authenticator` is the one object the handshake, the REST views and
an open connection's ``auth`` frame and timer ask: a token's signature and
claims are checked by :class:`gateway.jwks.TokenVerifier`, then its
issue time against the :class:`gateway.revocations.RevocationList`.
"""

from __future__ import annotations

from gateway.errors import InvalidToken
from gateway.jwks import Principal, TokenVerifier
from gateway.revocations import RevocationList


class Authenticator:
    """Tokens to principals, refusing revoked ones."""

    def __init__(self, verifier: TokenVerifier, revocations: RevocationList) -> None:
        self._verifier = verifier
        self._revocations = revocations

    def is_revoked(self, principal: Principal) -> bool:
        """Whether ``principal``'s token was revoked after it was issued."""
        issued_at = principal.issued_at.timestamp() if principal.issued_at else None
        return self._revocations.is_revoked(principal.subject, issued_at)

    async def authenticate(self, token: str) -> Principal:
        """The principal of a valid, unrevoked token; raises InvalidToken or
        KeysUnavailable. Safe to cancel."""
        principal = await self._verifier.verify(token)
        if self.is_revoked(principal):
            raise InvalidToken("token revoked")
        return principal
