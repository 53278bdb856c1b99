"""Token revocation at the edge.

The auth service publishes a feed of revocations; an entry
``{"id", "sub", "not_before", "reason"}`` means: every token of ``sub``
issued (``iat``) before ``not_before`` is void. :class:`RevocationList` is
the pure in-memory view (bounded); :class:`RevocationFeed` polls the feed and
tells a listener, which closes the affected connections.

The feed contract (implemented by ``auth/``)::

    GET {url}?after=<cursor>     X-Internal-Auth: <key>
    → {"revocations": [{"id": int, "sub": str, "not_before": unix_seconds,
                        "reason": str}], "next": cursor}

The first poll sends ``after=0``; later polls send the last ``next``
received (an opaque value, kept as a string).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

log = structlog.get_logger("gateway.revocations")

INTERNAL_AUTH_HEADER = "X-Internal-Auth"


@dataclass(frozen=True, slots=True)
class Revocation:
    """Tokens of ``subject`` issued before ``not_before`` (unix seconds) are void."""

    subject: str
    not_before: float
    reason: str = ""


class RevocationList:
    """``subject → not_before``, bounded by ``max_entries`` and ``retention``.

    An entry older than ``retention`` seconds is forgotten: every token it
    voided has expired by then if ``retention`` is at least the longest
    access-token lifetime. When the map is full the oldest entry goes first
    (and a warning is logged). Not thread-safe; used from one event loop.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        retention: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_entries = max_entries
        self._retention = retention
        self._clock = clock
        self._not_before: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._not_before)

    def add(self, revocation: Revocation) -> bool:
        """Record ``revocation``; True when it voids more than before."""
        current = self._not_before.get(revocation.subject)
        if current is not None and current >= revocation.not_before:
            return False
        if revocation.not_before + self._retention <= self._clock():
            return False
        self._not_before.pop(revocation.subject, None)
        self._not_before[revocation.subject] = revocation.not_before
        self._trim()
        return True

    def is_revoked(self, subject: str, issued_at: float | None) -> bool:
        """Whether a token of ``subject`` issued at ``issued_at`` is void.

        A token without ``iat`` is void as soon as its subject has an entry.
        """
        not_before = self._not_before.get(subject)
        if not_before is None:
            return False
        if not_before + self._retention <= self._clock():
            del self._not_before[subject]
            return False
        return issued_at is None or issued_at < not_before

    def _trim(self) -> None:
        if len(self._not_before) <= self._max_entries:
            return
        horizon = self._clock() - self._retention
        for subject in [s for s, nb in self._not_before.items() if nb <= horizon]:
            del self._not_before[subject]
        while len(self._not_before) > self._max_entries:
            oldest = min(self._not_before, key=self._not_before.__getitem__)
            del self._not_before[oldest]
            log.warning("revocation_forgotten", reason="revocation list full")


def parse_feed_page(document: object) -> tuple[list[Revocation], str | None]:
    """The revocations and next cursor of one feed page.

    Raises ValueError when the page is not the documented shape; malformed
    entries inside a well-formed page are skipped (and logged).
    """
    if not isinstance(document, Mapping):
        raise ValueError("the feed page is not an object")
    entries = document.get("revocations")
    if not isinstance(entries, list):
        raise ValueError("'revocations' is not a list")
    revocations = list(_entries(entries))
    cursor = document.get("next")
    if cursor is not None and not isinstance(cursor, str | int):
        raise ValueError("'next' is not a string or an integer")
    return revocations, None if cursor is None else str(cursor)


def _entries(entries: Iterable[Any]) -> Iterable[Revocation]:
    for entry in entries:
        if not isinstance(entry, Mapping):
            log.warning("revocation_skipped", reason="not an object")
            continue
        subject = entry.get("sub")
        not_before = entry.get("not_before")
        if (
            not isinstance(subject, str)
            or not subject
            or isinstance(not_before, bool)
            or not isinstance(not_before, int | float)
        ):
            log.warning("revocation_skipped", reason="missing sub or not_before")
            continue
        reason = entry.get("reason")
        yield Revocation(subject, float(not_before), reason if isinstance(reason, str) else "")


class RevocationFeed:
    """Polls the revocation feed every ``interval`` seconds.

    Each new revocation goes into ``revocations`` and then to ``listener``
    (called synchronously; it must not block). A failed poll is logged and
    retried at the next interval; the cursor only moves after a page was
    applied. :meth:`start` / :meth:`stop` own the polling task; ``stop`` is
    idempotent and safe to call without ``start``.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        internal_api_key: str,
        revocations: RevocationList,
        listener: Callable[[Revocation], None],
        interval: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._url = url
        self._key = internal_api_key
        self._revocations = revocations
        self._listener = listener
        self._interval = interval
        self._timeout = timeout
        self._cursor = "0"
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        """Completed polls, successful or not (for tests and metrics)."""
        self.polled = asyncio.Event()
        """Set after every poll; tests clear it and wait for the next one."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="revocation-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def poll_once(self) -> int:
        """Fetch and apply one page; returns how many revocations were new.

        Raises httpx.HTTPError or ValueError when the page cannot be had.
        """
        response = await self._client.get(
            self._url,
            params={"after": self._cursor},
            headers={INTERNAL_AUTH_HEADER: self._key, "Accept": "application/json"},
            timeout=self._timeout,
        )
        response.raise_for_status()
        revocations, cursor = parse_feed_page(response.json())
        fresh = 0
        for revocation in revocations:
            if self._revocations.add(revocation):
                fresh += 1
                log.info("token_revoked", user=revocation.subject, reason=revocation.reason)
                self._listener(revocation)
        if cursor is not None:
            self._cursor = cursor
        return fresh

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("revocation_poll_failed", error=type(exc).__name__)
            self.polls += 1
            self.polled.set()
            await asyncio.sleep(self._interval)
