"""Which runtime replica serves a session: a lease per session, in the database.

A session is live on one replica at a time. The replica that opens it takes
its lease (:meth:`Leases.acquire`), renews it while the session is live
there (:meth:`Leases.renew`) and releases it when the session goes idle or
the replica stops (:meth:`Leases.release`); a lease nobody renews expires
after its TTL, and the session can then move to another replica. The lease
names the replica and the gRPC address it advertises, so a replica that
refuses a session can say where it is served (:meth:`Leases.holder`). It is
three columns of the ``sessions`` table (:mod:`runtime.schema`);
:class:`runtime.hub.SessionHub` holds and renews them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from runtime.schema import sessions

_ACQUIRE = sessions.update().where(
    sessions.c.id == sa.bindparam("b_session_id"),
    sa.or_(
        sessions.c.lease_owner.is_(None),
        sessions.c.lease_owner == sa.bindparam("b_replica"),
        sessions.c.lease_expires_at < sa.bindparam("b_now"),
    ),
)
"""Take the lease when it is free, expired or ours (the new holder, address
and expiry are its parameters): built once, as every session's opening asks."""


class Leases:
    """Session leases; each method is one short transaction, safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def acquire(
        self, session_id: str, replica: str, ttl: float, address: str | None = None
    ) -> bool:
        """Take or extend the session's lease for ``replica`` (reached at
        ``address``); False if another holds it.

        One conditional UPDATE: it wins only if the lease is free, expired or
        already ours, so two replicas can never both win.
        """
        stamp = datetime.now(UTC)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                _ACQUIRE,
                {
                    "b_session_id": session_id,
                    "b_replica": replica,
                    "b_now": stamp,
                    "lease_owner": replica,
                    "lease_address": address,
                    "lease_expires_at": stamp + timedelta(seconds=ttl),
                },
            )
        return bool(result.rowcount == 1)

    async def renew(self, replica: str, session_ids: list[str], ttl: float) -> set[str]:
        """Extend ``replica``'s leases on these sessions; returns the ones still held."""
        if not session_ids:
            return set()
        stamp = datetime.now(UTC)
        async with self._engine.begin() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.id.in_(session_ids), sessions.c.lease_owner == replica)
                .values(lease_expires_at=stamp + timedelta(seconds=ttl))
            )
            rows = await conn.execute(
                sa.select(sessions.c.id).where(
                    sessions.c.id.in_(session_ids), sessions.c.lease_owner == replica
                )
            )
            return {row.id for row in rows}

    async def release(self, session_id: str, replica: str) -> None:
        """Give up ``replica``'s lease on the session (nothing if another holds it)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.lease_owner == replica)
                .values(lease_owner=None, lease_address=None, lease_expires_at=None)
            )

    async def owner(self, session_id: str) -> str | None:
        """The replica holding the session's lease (None: free or no such session)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(sessions.c.lease_owner).where(sessions.c.id == session_id)
                )
            ).first()
        return None if row is None else row.lease_owner

    async def holder(self, session_id: str) -> tuple[str, str | None] | None:
        """The replica holding an unexpired lease on the session and the
        address it advertised; None when the lease is free or expired."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(sessions.c.lease_owner, sessions.c.lease_address).where(
                        sessions.c.id == session_id,
                        sessions.c.lease_owner.is_not(None),
                        sessions.c.lease_expires_at >= datetime.now(UTC),
                    )
                )
            ).first()
        return None if row is None else (row.lease_owner, row.lease_address)
