"""The connection timer's decision, driven with times: no socket, no sleep."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.codes import IDLE_TIMEOUT, KEEPALIVE_TIMEOUT, TOKEN_EXPIRED, TOKEN_REVOKED
from gateway.watchdog import MIN_RECHECK, Limits, Verdict, Watch, decide

WALL = 1_700_000_000.0
NOW = 1000.0
LIMITS = Limits(idle_timeout=60, ping_interval=20, ping_timeout=10)
FRESH = Watch(
    revoked=False,
    expires_at=WALL + 300,
    last_activity=NOW,
    next_ping=NOW + 20,
    ping_sent=0.0,
    pong_pending=True,
)


def at(watch: Watch = FRESH, limits: Limits = LIMITS, *, later: float = 0.0) -> Verdict:
    return decide(watch, limits, wall=WALL + later, now=NOW + later)


def test_a_fresh_connection_is_looked_at_when_its_first_ping_is_due():
    assert at() == Verdict(next_check=20)


def test_revoked_beats_expired_beats_idle():
    both = dataclasses.replace(FRESH, revoked=True, expires_at=WALL - 1, last_activity=0.0)
    assert at(both).close is TOKEN_REVOKED
    assert at(dataclasses.replace(both, revoked=False)).close is TOKEN_EXPIRED
    assert at(dataclasses.replace(FRESH, last_activity=0.0)).close is IDLE_TIMEOUT


def test_the_token_expires_at_its_time_and_is_checked_then():
    soon = dataclasses.replace(FRESH, expires_at=WALL + 5)
    assert at(soon) == Verdict(next_check=5)
    assert at(soon, later=5).close is TOKEN_EXPIRED


def test_idleness_counts_from_the_last_frame():
    quiet = Limits(idle_timeout=60, ping_interval=None, ping_timeout=None)
    assert at(limits=quiet) == Verdict(next_check=60)
    assert at(limits=quiet, later=59.5) == Verdict(next_check=0.5)
    assert at(limits=quiet, later=60).close is IDLE_TIMEOUT
    unlimited = Limits(idle_timeout=0, ping_interval=None, ping_timeout=None)
    assert at(limits=unlimited, later=200) == Verdict(next_check=100)  # the token's expiry


def test_a_due_ping_is_sent_and_its_pong_awaited_until_the_timeout():
    verdict = at(later=20)
    assert verdict == Verdict(next_ping=NOW + 40, next_check=10)
    sent = dataclasses.replace(
        FRESH, next_ping=NOW + 40, ping_sent=NOW + 20, last_activity=NOW + 19
    )
    # Unanswered: nothing new until the timeout, then 1011.
    assert at(sent, later=25) == Verdict(next_check=5)
    assert at(sent, later=30).close is KEEPALIVE_TIMEOUT
    # Answered: the next ping is due at its interval.
    answered = dataclasses.replace(sent, pong_pending=False)
    assert at(answered, later=30) == Verdict(next_check=10)
    assert at(answered, later=40) == Verdict(next_ping=NOW + 60, next_check=10)


def test_without_a_ping_timeout_a_pending_pong_delays_the_next_ping():
    patient = Limits(idle_timeout=0, ping_interval=20, ping_timeout=None)
    sent = dataclasses.replace(FRESH, next_ping=NOW + 40, ping_sent=NOW + 20)
    # Never closed for the missing pong, and no second ping while it is missing.
    assert at(sent, patient, later=40) == Verdict(next_check=MIN_RECHECK)
    assert at(sent, patient, later=100).close is None
    assert at(sent, patient, later=100).next_ping is None


def test_no_keepalive_without_an_interval():
    off = Limits(idle_timeout=60, ping_interval=0, ping_timeout=10)
    assert at(limits=off, later=30) == Verdict(next_check=30)


@pytest.mark.parametrize("later", [0.0, 19.99, 29.999])
def test_the_timer_never_fires_sooner_than_the_minimum(later: float):
    sent = dataclasses.replace(FRESH, ping_sent=NOW, next_ping=NOW + 20)
    assert at(sent, later=later).next_check >= MIN_RECHECK
