"""Brute-force protection for the password grant, stored in the database.

Two kinds of bucket count failed logins:

- ``address:<ip>`` — every failure from one client address, whatever the
  account. Stops one address from guessing across many accounts.
- ``account:<username>|<ip>`` — failures against one account *from one
  address*. Its lockout stops guessing one account from there, while the
  owner, logging in from anywhere else, is not locked out: a stranger cannot
  lock someone out for free (see ``docs/AUTH.md`` for the trade-off).

Each bucket allows ``free`` failures, then each further attempt must wait
1, 2, 4 ... seconds (capped at ``max_delay``) after the last failure, and
after ``lockout_after`` failures the bucket is locked for ``lockout``
seconds. A bucket whose last failure is older than ``lockout`` starts over.
A refused attempt is answered immediately with the time left; nothing
sleeps.

Concurrency: :meth:`LoginThrottle.admit` *counts the attempt as a failure
before the password is checked*, with a compare-and-swap on ``failures``,
so a burst of parallel guesses is counted exactly and cannot slip through
together. A success then calls :meth:`LoginThrottle.succeeded`, which clears
the account bucket and gives the address bucket its attempt back.

Fail closed: any database error while admitting raises
:class:`~auth.errors.TemporarilyUnavailable`; the login is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth import audit
from auth.errors import TemporarilyUnavailable, Throttled
from auth.schema import login_failures

log = structlog.get_logger("auth.throttle")

_CAS_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Limit:
    """The shape of one bucket's throttle."""

    free: int
    lockout_after: int
    lockout: float
    max_delay: float = 60.0

    def wait_after(self, failures: int) -> float:
        """Seconds an attempt must wait after the last of ``failures`` failures."""
        if failures >= self.lockout_after:
            return self.lockout
        if failures <= self.free:
            return 0.0
        return min(2.0 ** (failures - self.free - 1), self.max_delay)


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    account: Limit
    address: Limit

    @classmethod
    def from_threshold(cls, threshold: int, lockout: float) -> ThrottlePolicy:
        """Account: free half of ``threshold``, locked at it; address: three times that."""
        return cls(
            account=Limit(free=threshold // 2, lockout_after=threshold, lockout=lockout),
            address=Limit(free=threshold * 3 // 2, lockout_after=threshold * 3, lockout=lockout),
        )


def account_bucket(username: str, address: str) -> str:
    return f"account:{username[:150]}|{address[:64]}"


def address_bucket(address: str) -> str:
    return f"address:{address[:64]}"


class LoginThrottle:
    """Admits or refuses password attempts; takes an engine it does not own."""

    def __init__(
        self,
        engine: AsyncEngine,
        policy: ThrottlePolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._clock = clock

    async def admit(self, username: str, address: str, *, client_id: str) -> None:
        """Count this attempt as a failure, or refuse it.

        Raises :class:`Throttled` (with ``retry_after`` seconds) when a bucket
        is still waiting, :class:`TemporarilyUnavailable` when the database
        cannot be read or written. Safe to cancel (one transaction).
        """
        now = self._clock()
        buckets = (
            (account_bucket(username, address), self._policy.account),
            (address_bucket(address), self._policy.address),
        )
        try:
            async with self._engine.begin() as conn:
                waits = [await self._wait(conn, bucket, limit, now) for bucket, limit in buckets]
                wait = max(waits)
                if wait > 0:
                    await audit.record(
                        conn,
                        "login_throttled",
                        at=now,
                        username=username,
                        client_id=client_id,
                        address=address,
                        detail=f"retry after {math.ceil(wait)} s",
                    )
                else:
                    for bucket, limit in buckets:
                        if await self._count(conn, bucket, limit, now):
                            await audit.record(
                                conn,
                                "lockout",
                                at=now,
                                username=username,
                                client_id=client_id,
                                address=address,
                                detail=f"{bucket.split(':')[0]} locked for {int(limit.lockout)} s",
                            )
        except SQLAlchemyError:
            log.exception("login_throttle_unavailable")
            raise TemporarilyUnavailable("logins are unavailable; try again later") from None
        if wait > 0:
            raise Throttled("too many failed logins; try again later", retry_after=wait)

    async def succeeded(self, username: str, address: str) -> None:
        """Clear the account bucket and return the attempt to the address bucket."""
        async with self._engine.begin() as conn:
            await conn.execute(
                login_failures.delete().where(
                    login_failures.c.bucket == account_bucket(username, address)
                )
            )
            await conn.execute(
                login_failures.update()
                .where(
                    login_failures.c.bucket == address_bucket(address),
                    login_failures.c.failures > 0,
                )
                .values(failures=login_failures.c.failures - 1)
            )

    async def _row(self, conn: AsyncConnection, bucket: str) -> sa.RowMapping | None:
        result = await conn.execute(
            sa.select(login_failures).where(login_failures.c.bucket == bucket)
        )
        return result.mappings().one_or_none()

    async def _wait(self, conn: AsyncConnection, bucket: str, limit: Limit, now: float) -> float:
        row = await self._row(conn, bucket)
        if row is None or now - row["last_failure_at"] > limit.lockout:
            return 0.0
        return max(0.0, float(row["blocked_until"]) - now)

    async def _count(self, conn: AsyncConnection, bucket: str, limit: Limit, now: float) -> bool:
        """Add one failure (compare-and-swap); True if this one reached the lockout."""
        for _ in range(_CAS_ATTEMPTS):
            row = await self._row(conn, bucket)
            if row is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            login_failures.insert().values(
                                bucket=bucket,
                                failures=1,
                                last_failure_at=now,
                                blocked_until=now + limit.wait_after(1),
                            )
                        )
                except IntegrityError:
                    continue
                return limit.lockout_after == 1
            old = row["failures"]
            fresh = now - row["last_failure_at"] > limit.lockout
            failures = 1 if fresh else old + 1
            result = await conn.execute(
                login_failures.update()
                .where(login_failures.c.bucket == bucket, login_failures.c.failures == old)
                .values(
                    failures=failures,
                    last_failure_at=now,
                    blocked_until=now + limit.wait_after(failures),
                )
            )
            if result.rowcount == 1:
                return failures == limit.lockout_after
        raise TemporarilyUnavailable("logins are unavailable; try again later")

    async def clear(self, buckets: Sequence[str]) -> None:
        """Forget the named buckets (admin unlock)."""
        async with self._engine.begin() as conn:
            await conn.execute(login_failures.delete().where(login_failures.c.bucket.in_(buckets)))
