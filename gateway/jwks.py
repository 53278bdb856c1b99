"""Access-token verification against the issuer's JWKS.

:class:`JwksCache` fetches the issuer's key set and keeps it for a TTL; an
unknown ``kid`` triggers a refetch (key rotation), but never more often than
once per ``min_refetch_interval`` seconds, so a flood of tokens with made-up
kids costs the issuer at most one request per interval.

:class:`TokenVerifier` checks one token: the algorithm is pinned (RS256 and
ES256 only; the token's ``alg`` header merely selects among them and must
match the key's type), then signature, ``iss``, ``aud``, ``exp``, ``nbf``,
``iat`` (with leeway), ``sub`` and the ``typ`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import structlog

from gateway.errors import InvalidToken, KeysUnavailable

log = structlog.get_logger("gateway.jwks")

SUPPORTED_ALGORITHMS = ("RS256", "ES256")
"""The only algorithms the gateway ever accepts."""

# The JWK a key must be for each algorithm: key type and, for EC, the curve.
_KEY_SHAPE: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
}
_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_AT_JWT_TYP = frozenset({"at+jwt", "application/at+jwt"})
_MAX_TOKEN_CHARS = 16 * 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated user behind a token."""

    subject: str
    scopes: frozenset[str]
    expires_at: datetime
    client_id: str | None
    issued_at: datetime | None = None
    """``iat``; None when the token has none (revocation then voids it)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A verification key and the one algorithm it may be used with."""

    algorithm: str
    jwk: jwt.PyJWK


def _algorithm_for(data: Mapping[str, Any]) -> str | None:
    """The supported algorithm a JWK can verify, or None to skip the key."""
    if data.get("use", "sig") != "sig":
        return None
    for algorithm, (kty, crv) in _KEY_SHAPE.items():
        if data.get("kty") == kty and (crv is None or data.get("crv") == crv):
            declared = data.get("alg")
            return algorithm if declared in (None, algorithm) else None
    return None


class JwksCache:
    """The issuer's signing keys by ``kid``, fetched with ``client``.

    Keys are kept for ``ttl`` seconds. :meth:`get` is safe to call from many
    tasks at once: concurrent misses share one fetch. When a refresh fails,
    keys from the previous fetch keep working until a later refresh succeeds.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._url = url
        self._ttl = ttl
        self._min_refetch_interval = min_refetch_interval
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0
        """How many fetches were attempted (for tests and metrics)."""

    async def get(self, kid: str) -> SigningKey:
        """The key named ``kid``.

        Raises :class:`InvalidToken` when the issuer does not have it and
        :class:`KeysUnavailable` when the key set cannot be fetched and no
        cached copy has the key.
        """
        if not self._stale() and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if (self._stale() or kid not in self._keys) and self._may_fetch():
                await self._fetch()
            if kid in self._keys:
                return self._keys[kid]
            if self._fetched_at is None:
                raise KeysUnavailable("the issuer's key set could not be fetched")
        raise InvalidToken("unknown signing key")

    async def loaded(self) -> bool:
        """Whether a key set is at hand: fetched once already, or fetched
        now (at most once per ``min_refetch_interval``). For readiness."""
        if self._fetched_at is None:
            async with self._lock:
                if self._fetched_at is None and self._may_fetch():
                    with contextlib.suppress(KeysUnavailable):
                        await self._fetch()
        return self._fetched_at is not None

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _may_fetch(self) -> bool:
        return (
            self._attempted_at is None
            or self._clock() - self._attempted_at >= self._min_refetch_interval
        )

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetch_count += 1
        try:
            response = await self._client.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            entries = document["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("jwks_fetch_failed", url=self._url, error=type(exc).__name__)
            if self._fetched_at is None:
                raise KeysUnavailable("the issuer's key set could not be fetched") from exc
            return
        keys: dict[str, SigningKey] = {}
        for data in entries:
            if not isinstance(data, dict) or not isinstance(data.get("kid"), str):
                continue
            algorithm = _algorithm_for(data)
            if algorithm is None:
                continue
            try:
                keys[data["kid"]] = SigningKey(algorithm, jwt.PyJWK(data, algorithm))
            except jwt.PyJWTError:
                log.warning("jwks_key_skipped", kid=data["kid"])
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("jwks_fetched", url=self._url, keys=len(keys))


class TokenVerifier:
    """Verifies access tokens issued by ``issuer`` for ``audience``.

    ``algorithms`` may only narrow :data:`SUPPORTED_ALGORITHMS`. With
    ``require_at_jwt`` (the default) the ``typ`` header must be ``at+jwt``
    or ``application/at+jwt`` (RFC 9068; RFC 8725 §3.11: explicit typing
    keeps an ID token or any other JWT the issuer signs from passing as an
    access token). Without it ``typ`` may also be absent or ``JWT``, for
    issuers that do not type their access tokens. Any other ``typ`` (a
    refresh or ID token, say) is refused either way.
    """

    def __init__(
        self,
        keys: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway: float = 30.0,
        algorithms: tuple[str, ...] = SUPPORTED_ALGORITHMS,
        require_at_jwt: bool = True,
    ) -> None:
        unsupported = set(algorithms) - set(SUPPORTED_ALGORITHMS)
        if unsupported or not algorithms:
            raise ValueError(f"unsupported algorithms: {sorted(unsupported) or 'none given'}")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._algorithms = frozenset(algorithms)
        self._require_at_jwt = require_at_jwt

    async def verify(self, token: str) -> Principal:
        """The principal of a valid ``token``.

        Raises :class:`InvalidToken` (reason safe to log) or
        :class:`KeysUnavailable`. Safe to cancel.
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise InvalidToken("algorithm not allowed")
        self._check_typ(header.get("typ"))
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("missing key id")
        key = await self._keys.get(kid)
        if key.algorithm != algorithm:
            raise InvalidToken("key does not match algorithm")
        claims = self._decode(token, key, algorithm)
        return _principal(claims)

    def _check_typ(self, typ: object) -> None:
        if typ is None and not self._require_at_jwt:
            return
        if not isinstance(typ, str):
            raise InvalidToken("not an access token")
        accepted = _AT_JWT_TYP if self._require_at_jwt else _ACCEPTED_TYP
        if typ.lower() not in accepted:
            raise InvalidToken("not an access token")

    def _decode(self, token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.jwk,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.DecodeError:
            raise InvalidToken("malformed token") from None
        except jwt.PyJWTError:
            raise InvalidToken("invalid claims") from None


_SCOPE_SETS: dict[frozenset[str], frozenset[str]] = {}
_MAX_SCOPE_SETS = 1024


def _shared_scopes(scopes: frozenset[str]) -> frozenset[str]:
    """One object per distinct scope set: every open connection keeps its
    principal, and most tokens carry the same few scopes."""
    shared = _SCOPE_SETS.get(scopes)
    if shared is None:
        if len(_SCOPE_SETS) >= _MAX_SCOPE_SETS:
            return scopes
        shared = _SCOPE_SETS[scopes] = scopes
    return shared


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("invalid claims")
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        scopes = _shared_scopes(frozenset(scope.split()))
    elif isinstance(scope, list):
        scopes = _shared_scopes(frozenset(item for item in scope if isinstance(item, str)))
    else:
        scopes = frozenset()
    client_id = claims.get("client_id", claims.get("azp"))
    issued_at = claims.get("iat")
    return Principal(
        subject=subject,
        scopes=scopes,
        expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
        client_id=client_id if isinstance(client_id, str) else None,
        # PyJWT has checked that iat, when present, is a number.
        issued_at=(
            datetime.fromtimestamp(float(issued_at), UTC)
            if isinstance(issued_at, int | float) and not isinstance(issued_at, bool)
            else None
        ),
    )
