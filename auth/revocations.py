"""The revocation feed the gateway polls (``GET /internal/revocations``).

A row says: access tokens of ``sub`` issued before ``not_before`` (unix
seconds, compared with the token's ``iat``) must no longer be honoured, and
that user's open connections must be closed. Rows are written on logout
(``/oauth/revoke``), on refresh-token reuse, and by the admin CLI
(``revoke-user``, ``disable-user``). ``id`` is a strictly increasing cursor.

Only rows younger than the longest access-token lifetime (plus leeway) are
served, because an older row can no longer match an unexpired token; the
feed therefore stays bounded without a cleanup job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth.schema import revocations

REASONS = frozenset({"logout", "refresh_reuse", "admin", "disabled"})
PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class Revocation:
    """One row of the feed."""

    id: int
    sub: str
    not_before: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sub": self.sub,
            "not_before": self.not_before,
            "reason": self.reason,
        }


async def record_revocation(conn: AsyncConnection, sub: str, reason: str, *, now: float) -> None:
    """Add a row inside the caller's transaction; ``not_before`` is ``now`` rounded up.

    ``iat`` has one-second resolution, so a token issued earlier in the same
    second as the revocation must fall before ``not_before``: rounding up
    revokes it. The price: a new login within that same second is refused at
    the edge until the second ends, and the client simply retries.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}")
    await conn.execute(
        revocations.insert().values(
            sub=sub, not_before=math.ceil(now), reason=reason, created_at=now
        )
    )


class RevocationFeed:
    """Reads the feed; takes an engine it does not own."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        horizon: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._horizon = horizon
        self._clock = clock

    async def page(self, after: int, limit: int = PAGE_SIZE) -> tuple[list[Revocation], int]:
        """Rows with ``id > after`` newer than the horizon, oldest first, and the next cursor.

        The next cursor is the last row's id, or ``after`` when there is none.
        """
        since = self._clock() - self._horizon
        async with self._engine.connect() as conn:
            result = await conn.execute(
                sa.select(
                    revocations.c.id,
                    revocations.c.sub,
                    revocations.c.not_before,
                    revocations.c.reason,
                )
                .where(revocations.c.id > after, revocations.c.created_at >= since)
                .order_by(revocations.c.id)
                .limit(limit)
            )
            rows = [Revocation(**row) for row in result.mappings()]
        return rows, rows[-1].id if rows else after
