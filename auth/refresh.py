"""Refresh tokens: opaque, stored hashed, rotated on every use (RFC 9700 §4.14).

A refresh token is 32 random bytes, base64url (43 characters): not a JWT, so
it can never pass for an access token. Only its SHA-256 is stored, with its
family (every token descended from one login), user, client, scope and expiry.

:meth:`RefreshTokens.rotate` is the heart: one transaction runs

    UPDATE refresh_tokens SET used = true
    WHERE token_hash = :h AND client_id = :c AND used = false AND revoked = false
      AND expires_at > :now

and only the caller that changed exactly one row wins and gets a successor
in the same family. Concurrent rotations of one token therefore cannot both
win, on SQLite (writers are serialised) and on PostgreSQL (the second UPDATE
waits for the first's row lock, then re-checks ``used``). A token that was
already used is *reuse*: the whole family is revoked, a ``refresh_reuse``
revocation row tells the edge to drop the user's access tokens, and an audit
row is written, all in that same transaction.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth import audit
from auth.revocations import record_revocation
from auth.schema import refresh_tokens

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """The stored form of a refresh token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """What a refresh token stands for."""

    family_id: str
    user_id: str
    client_id: str
    scope: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IssuedRefreshToken:
    token: str
    grant: RefreshGrant
    expires_at: float


class RotateFailure(enum.Enum):
    """Why a rotation failed; every case is ``invalid_grant`` to the client."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REUSED = "reused"
    WRONG_CLIENT = "wrong_client"


class RotateRefused(Exception):
    """Raised by :meth:`RefreshTokens.rotate`; ``failure`` says why."""

    def __init__(self, failure: RotateFailure, grant: RefreshGrant | None = None) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.grant = grant


def _grant(row: sa.RowMapping) -> RefreshGrant:
    return RefreshGrant(
        family_id=row["family_id"],
        user_id=row["user_id"],
        client_id=row["client_id"],
        scope=tuple(row["scope"].split()),
    )


async def _select(conn: AsyncConnection, token_hash: str) -> sa.RowMapping | None:
    result = await conn.execute(
        sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
    )
    return result.mappings().one_or_none()


class RefreshTokens:
    """The ``refresh_tokens`` table; takes an engine it does not own."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the refresh token lifetime must be positive")
        self._engine = engine
        self._ttl = ttl
        self._clock = clock

    async def issue(
        self, user_id: str, client_id: str, scope: tuple[str, ...]
    ) -> IssuedRefreshToken:
        """A token starting a new family (after a password login)."""
        grant = RefreshGrant(str(uuid.uuid4()), user_id, client_id, scope)
        async with self._engine.begin() as conn:
            return await self._insert(conn, grant, self._clock())

    async def _insert(
        self, conn: AsyncConnection, grant: RefreshGrant, now: float
    ) -> IssuedRefreshToken:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = now + self._ttl
        await conn.execute(
            refresh_tokens.insert().values(
                token_hash=hash_token(token),
                family_id=grant.family_id,
                user_id=grant.user_id,
                client_id=grant.client_id,
                scope=" ".join(grant.scope),
                issued_at=now,
                expires_at=expires_at,
                used=False,
                revoked=False,
            )
        )
        return IssuedRefreshToken(token, grant, expires_at)

    async def rotate(
        self,
        token: str,
        *,
        client_id: str,
        scope: tuple[str, ...] | None = None,
        address: str | None = None,
    ) -> IssuedRefreshToken:
        """Spend ``token`` and return its successor (same family, ``scope`` or the old one).

        Raises :class:`RotateRefused`. On reuse, the family is revoked and a
        revocation row written before raising. Safe to cancel: the
        transaction rolls back and the token stays unused.
        """
        token_hash = hash_token(token)
        now = self._clock()
        async with self._engine.begin() as conn:
            # The conditional UPDATE comes first: it takes the write lock before
            # anything is read, so concurrent rotations queue instead of deadlocking.
            won = await conn.execute(
                refresh_tokens.update()
                .where(
                    refresh_tokens.c.token_hash == token_hash,
                    refresh_tokens.c.client_id == client_id,
                    refresh_tokens.c.used == sa.false(),
                    refresh_tokens.c.revoked == sa.false(),
                    refresh_tokens.c.expires_at > now,
                )
                .values(used=True)
            )
            if won.rowcount == 1:
                row = await _select(conn, token_hash)
                assert row is not None
                grant = _grant(row)
                if scope is not None:
                    grant = RefreshGrant(grant.family_id, grant.user_id, grant.client_id, scope)
                return await self._insert(conn, grant, now)
        # Lost: find out why, with fresh data (another transaction may have won).
        # Raising inside ``begin()`` would roll back the family revocation, so
        # the verdict leaves the transaction first.
        async with self._engine.begin() as conn:
            failure, known = await self._diagnose(conn, token_hash, client_id, now, address)
        raise RotateRefused(failure, known)

    async def _diagnose(
        self,
        conn: AsyncConnection,
        token_hash: str,
        client_id: str,
        now: float,
        address: str | None,
    ) -> tuple[RotateFailure, RefreshGrant | None]:
        row = await _select(conn, token_hash)
        if row is None:
            return RotateFailure.UNKNOWN, None
        grant = _grant(row)
        if grant.client_id != client_id:
            # RFC 6749 §6: bound to its client. Not reuse: another client
            # cannot spend it, so nothing is burned.
            return RotateFailure.WRONG_CLIENT, grant
        if row["revoked"]:
            return RotateFailure.REVOKED, grant
        if not row["used"]:
            return RotateFailure.EXPIRED, grant
        await self._revoke_family(conn, grant.family_id)
        await record_revocation(conn, grant.user_id, "refresh_reuse", now=now)
        await audit.record(
            conn,
            "refresh_reuse_detected",
            at=now,
            user_id=grant.user_id,
            client_id=grant.client_id,
            address=address,
            detail=f"family {grant.family_id} revoked",
        )
        return RotateFailure.REUSED, grant

    async def revoke(self, token: str, *, client_id: str, address: str | None = None) -> bool:
        """Revoke ``token``'s family (RFC 7009 logout) if it belongs to ``client_id``.

        Returns False, doing nothing, for an unknown token or another client's
        token. On success a ``logout`` revocation row is written too.
        Idempotent in effect: revoking twice writes a second feed row only.
        """
        now = self._clock()
        async with self._engine.begin() as conn:
            row = await _select(conn, hash_token(token))
            if row is None or row["client_id"] != client_id:
                return False
            grant = _grant(row)
            await self._revoke_family(conn, grant.family_id)
            await record_revocation(conn, grant.user_id, "logout", now=now)
            await audit.record(
                conn,
                "token_revoked",
                at=now,
                user_id=grant.user_id,
                client_id=client_id,
                address=address,
                detail=f"family {grant.family_id}",
            )
        return True

    @staticmethod
    async def revoke_user(conn: AsyncConnection, user_id: str) -> None:
        """Revoke every refresh token of a user inside the caller's transaction."""
        await conn.execute(
            refresh_tokens.update()
            .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked == sa.false())
            .values(revoked=True)
        )

    async def _revoke_family(self, conn: AsyncConnection, family_id: str) -> None:
        await conn.execute(
            refresh_tokens.update()
            .where(refresh_tokens.c.family_id == family_id)
            .values(revoked=True)
        )
