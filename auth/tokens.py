"""Issuing access tokens: RS256/ES256 JWTs in the RFC 9068 profile.

:class:`TokenIssuer` is pure apart from reading the clock: it signs with the
key ring's current key and returns the compact JWT with what the token
response needs. The header carries ``kid`` and ``typ: at+jwt``; the claims are
``iss``, ``sub`` (the user's stable id, or the client id for
``client_credentials``), ``preferred_username`` (users only), ``aud``,
``exp``, ``iat``, ``nbf``, ``jti``, ``scope`` and ``client_id``.

Scopes are parsed here too (RFC 6749 §3.3): space-separated tokens of
printable ASCII without ``"`` or ``\\``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import jwt

from auth.errors import InvalidScope
from auth.keys import KeyRing

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type (RFC 9068), not a secret

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def parse_scope(scope: str | None, *, allowed: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes, or every allowed scope when none was requested.

    Raises :class:`InvalidScope` for a malformed scope or one not in ``allowed``.
    Order follows the request; duplicates are dropped.
    """
    allowed = tuple(allowed)
    if scope is None or scope == "":
        return allowed
    requested: list[str] = []
    for item in scope.split(" "):
        if not _SCOPE_TOKEN.fullmatch(item):
            raise InvalidScope("the scope parameter is malformed")
        if item not in allowed:
            raise InvalidScope(f"scope {item!r} is not available to this client")
        if item not in requested:
            requested.append(item)
    return tuple(requested)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a token is about."""

    user_id: str
    username: str | None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed access token and the facts the token response reports."""

    token: str
    expires_in: int
    scope: tuple[str, ...]
    jti: str
    kid: str


class TokenIssuer:
    """Signs access tokens for one issuer and audience."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the access token lifetime must be positive")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._clock = clock

    def issue(self, subject: Subject, *, client_id: str, scope: tuple[str, ...]) -> AccessToken:
        """Sign a new access token; never raises for valid inputs."""
        key = self._keys.current
        now = int(self._clock())
        jti = uuid.uuid4().hex
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": subject.user_id,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl,
            "jti": jti,
            "scope": " ".join(scope),
            "client_id": client_id,
        }
        if subject.username is not None:
            claims["preferred_username"] = subject.username
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=key.alg,
            headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
        )
        return AccessToken(token=token, expires_in=self._ttl, scope=scope, jti=jti, kid=key.kid)
