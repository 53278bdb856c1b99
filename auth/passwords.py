"""Password hashing (argon2id) and the password policy.

:class:`Passwords` wraps ``argon2.PasswordHasher``. Hashing and verifying are
CPU-bound (tens of milliseconds by design); the ``async`` methods run them in a
worker thread so the event loop keeps serving. They are safe to cancel: the
thread finishes on its own and its result is dropped.

Verifying against an unknown user still costs one full verification (against a
dummy hash made at construction), so response timing does not reveal whether a
username exists.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth.errors import WeakPassword

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
"""Bounds the work one login can cost; argon2 would hash anything."""

log = structlog.get_logger("auth.passwords")


def check_password_policy(password: str, *, username: str | None = None) -> None:
    """Raise :class:`WeakPassword` unless ``password`` is acceptable for a new hash.

    Rules: 8 to 1024 characters, not only whitespace, and not the username
    (ignoring case), which is the first guess of every attacker.
    """
    if not password or not password.strip():
        raise WeakPassword("the password must not be empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if username is not None and password.strip().casefold() == username.casefold():
        raise WeakPassword("the password must not be the username")


class Passwords:
    """Hash and verify passwords with one argon2id parameter set."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        """An encoded argon2id hash of ``password`` (policy is the caller's job)."""
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """True if ``password`` matches; a malformed stored hash counts as no match."""
        try:
            return self._hasher.verify(password_hash, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            log.warning("password_hash_unusable")
            return False

    def verify_dummy(self, password: str) -> bool:
        """Spend the time of a real verification; always False."""
        self.verify(self._dummy_hash, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True if the hash was made with other parameters than ours."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return False

    async def hash_async(self, password: str) -> str:
        return await asyncio.to_thread(self.hash, password)

    async def verify_async(self, password_hash: str | None, password: str) -> bool:
        """:meth:`verify`, or :meth:`verify_dummy` when there is no hash, off the loop."""
        if password_hash is None:
            return await asyncio.to_thread(self.verify_dummy, password)
        return await asyncio.to_thread(self.verify, password_hash, password)
