"""The audit trail: one ``audit_events`` row per security-relevant event.

Events (stable names): ``login_succeeded``, ``login_failed``,
``login_throttled``, ``lockout``, ``refresh_succeeded``, ``refresh_failed``,
``refresh_reuse_detected``, ``token_revoked``, ``client_credentials_granted``,
``client_auth_failed``, ``user_revoked``, ``user_disabled``.

A row holds when, what, who (user id and/or username), which client and from
which address, plus a short non-secret ``detail``. Callers must never pass a
password, secret or token; :func:`record` takes only these named fields so
there is no free-form place to put one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth.schema import audit_events


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of ``audit_events``."""

    id: int
    at: float
    event: str
    user_id: str | None
    username: str | None
    client_id: str | None
    address: str | None
    detail: str | None


async def record(
    conn: AsyncConnection,
    event: str,
    *,
    at: float,
    user_id: str | None = None,
    username: str | None = None,
    client_id: str | None = None,
    address: str | None = None,
    detail: str | None = None,
) -> None:
    """Insert one event inside the caller's transaction."""
    await conn.execute(
        audit_events.insert().values(
            at=at,
            event=event,
            user_id=user_id,
            username=None if username is None else username[:150],
            client_id=None if client_id is None else client_id[:100],
            address=None if address is None else address[:64],
            detail=None if detail is None else detail[:255],
        )
    )


class AuditLog:
    """Writes and reads audit events; takes an engine it does not own."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    async def record(
        self,
        event: str,
        *,
        user_id: str | None = None,
        username: str | None = None,
        client_id: str | None = None,
        address: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Insert one event in its own transaction."""
        async with self._engine.begin() as conn:
            await record(
                conn,
                event,
                at=self._clock(),
                user_id=user_id,
                username=username,
                client_id=client_id,
                address=address,
                detail=detail,
            )

    async def recent(self, limit: int = 50) -> list[AuditEvent]:
        """The newest ``limit`` events, newest first."""
        async with self._engine.connect() as conn:
            result = await conn.execute(
                sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
            )
            return [AuditEvent(**row) for row in result.mappings()]
