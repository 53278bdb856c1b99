"""Rate and connection limits of the edge; pure, no I/O.

:class:`TokenBucket` is the classic bucket (``rate`` tokens per second up to
``burst``); :class:`AddressRateLimiter` keeps one bucket per client address
in a bounded map; :class:`ConnectionSlots` counts open connections per user
and in total. All take a clock so tests can drive time by hand.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    A ``rate`` of 0 or less disables the bucket: every take succeeds.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, *, clock: Clock = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self._burst
        self._updated = clock()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is
        available (nothing is taken then)."""
        if not self.enabled:
            return 0.0
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def full(self) -> bool:
        """Whether the bucket has refilled completely (it can be forgotten)."""
        self._refill()
        return self._tokens >= self._burst

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now


class AddressRateLimiter:
    """One :class:`TokenBucket` per key (a client address), at most
    ``max_keys`` of them.

    When the map is full, buckets that have refilled are forgotten first
    (they hold no information); if none has, the least recently used one is.
    Memory is therefore bounded whatever the number of addresses.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """0.0 when ``key`` may go ahead, else seconds to wait (see
        :meth:`TokenBucket.take`)."""
        if self._rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict()
            bucket = TokenBucket(self._rate, self._burst, clock=self._clock)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def _evict(self) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.full()]:
            del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            self._buckets.popitem(last=False)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class SlotRefusal:
    """Why a connection was refused a slot: ``scope`` is ``user`` or ``process``."""

    scope: str


class ConnectionSlots:
    """Open connections per user and in total, each bounded.

    ``holder`` objects (a connection) are reserved with :meth:`reserve` and
    released with :meth:`release` (idempotent). :meth:`prune` drops holders
    that a predicate says are gone, for connections that died between the
    reservation and their handler. A limit of 0 or less means no limit.
    """

    def __init__(self, *, per_user: int, total: int) -> None:
        self._per_user = per_user
        self._total = total
        self._by_user: dict[str, set[object]] = {}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def held_by(self, user: str) -> int:
        return len(self._by_user.get(user, ()))

    def process_full(self) -> bool:
        return 0 < self._total <= self._count

    def reserve(self, user: str, holder: object) -> SlotRefusal | None:
        """Reserve a slot for ``holder``; None on success, else why not."""
        if self.process_full():
            return SlotRefusal("process")
        held = self._by_user.setdefault(user, set())
        if 0 < self._per_user <= len(held):
            return SlotRefusal("user")
        if holder not in held:
            held.add(holder)
            self._count += 1
        return None

    def release(self, user: str, holder: object) -> None:
        held = self._by_user.get(user)
        if held is None or holder not in held:
            return
        held.remove(holder)
        self._count -= 1
        if not held:
            del self._by_user[user]

    def prune(self, gone: Callable[[object], bool], user: str | None = None) -> None:
        """Release every holder (of ``user``, or of everyone) for which
        ``gone(holder)`` is true."""
        users = [user] if user is not None else list(self._by_user)
        for name in users:
            for holder in [item for item in self._by_user.get(name, ()) if gone(item)]:
                self.release(name, holder)
