"""When to close an idle, expired or unresponsive connection, or ping it; pure.

Each IDE connection has one timer (a ``call_later`` handle, not a task, so
an idle connection costs almost nothing). When it fires,
:meth:`gateway.connection.Connections._watch` reads the connection's state
into a :class:`Watch`, asks :func:`decide` what to do at this moment, does
it (close, or send a ping) and sets the timer for :attr:`Verdict.next_check`.
The decision is a plain function of the state and the two clocks, so its
tests pass times in and need no socket and no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codes import (
    IDLE_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    Closing,
)

MIN_RECHECK = 0.05
"""Seconds: the timer never fires sooner than this after a check."""
MAX_RECHECK = 3600.0
"""Seconds: the longest a timer waits when nothing else is due (a revocation
is checked at once by :meth:`gateway.connection.Connections.revoke`)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection lifetime settings (``GatewayConfig``); 0 disables one."""

    idle_timeout: float
    """Close (1001) after this many seconds without a frame either way."""
    ping_interval: float | None
    """Seconds between keepalive pings; None or 0 sends none."""
    ping_timeout: float | None
    """Close (1011) when a ping's pong has not come within this many seconds;
    None or 0 waits for it forever (the next ping then waits ``ping_interval``)."""


@dataclass(frozen=True, slots=True)
class Watch:
    """One connection's state, as its timer reads it."""

    revoked: bool
    """The token has been revoked since it was issued."""
    expires_at: float | None
    """Wall-clock time (``time.time()``) the token expires, leeway included;
    None when the token does not bound the connection (the client's profile,
    :meth:`gateway.profiles.ClientProfile.lifetime`)."""
    last_activity: float
    """Monotonic time of the last frame in or out (pings do not count; pongs
    do when the client's profile says so)."""
    next_ping: float
    """Monotonic time the next keepalive ping is due."""
    ping_sent: float
    """Monotonic time the last ping was started; 0 before the first."""
    pong_pending: bool
    """The last ping's pong has not arrived (or the ping is not on the wire yet)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the timer does now: close, or send a ping, and when to look again."""

    close: Closing | None = None
    next_ping: float | None = None
    """Set when a keepalive ping is to be sent now: when the one after is due."""
    next_check: float = MIN_RECHECK
    """Seconds from now to the next check (ignored when closing)."""


def decide(watch: Watch, limits: Limits, *, wall: float, now: float) -> Verdict:
    """What to do for ``watch`` at wall-clock time ``wall`` and monotonic ``now``.

    In order: a revoked token closes with 4001, an expired one (unless
    ``expires_at`` is None) with 1008,
    ``idle_timeout`` without a frame with 1001, a ping unanswered for
    ``ping_timeout`` with 1011. Otherwise a ping is sent when due and none
    is unanswered (as in websockets' own keepalive), and the next check is
    the earliest moment any of these could happen: the token's expiry, the
    idle deadline, the next ping or the pending pong's deadline.
    """
    if watch.revoked:
        return Verdict(TOKEN_REVOKED)
    next_check = MAX_RECHECK
    if watch.expires_at is not None:
        if watch.expires_at <= wall:
            return Verdict(TOKEN_EXPIRED)
        next_check = min(next_check, watch.expires_at - wall)
    if limits.idle_timeout > 0:
        idle_left = watch.last_activity + limits.idle_timeout - now
        if idle_left <= 0:
            return Verdict(IDLE_TIMEOUT)
        next_check = min(next_check, idle_left)
    interval, timeout = limits.ping_interval, limits.ping_timeout
    ping_now = None
    if interval:
        next_ping, ping_sent = watch.next_ping, watch.ping_sent
        awaited = ping_sent > 0 and watch.pong_pending
        if awaited and timeout and now - ping_sent >= timeout:
            return Verdict(KEEPALIVE_TIMEOUT)
        if not awaited and now >= next_ping:
            next_ping, ping_sent, awaited = now + interval, now, True
            ping_now = next_ping
        if awaited:
            # No ping while one is unanswered: look again when the next is
            # due, then at the pending one's timeout.
            due = ping_sent + (timeout or interval)
            if next_ping > now:
                due = min(due, next_ping)
            next_check = min(next_check, due - now)
        else:
            next_check = min(next_check, next_ping - now)
    return Verdict(next_ping=ping_now, next_check=max(next_check, MIN_RECHECK))
