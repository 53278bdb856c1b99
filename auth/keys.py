"""The signing keys: a directory of PEM files, rotated on a schedule.

Contract of :class:`KeyRing`:

- ``KeyRing.load_or_create(path)`` reads every ``*.pem`` private key in
  ``path`` (RSA >= 2048 bits, or EC P-256). If there is none, it generates one
  RSA-2048 key first. The directory is created with mode 0700 and key files are
  written with mode 0600, atomically (temporary file, then rename), under an
  exclusive ``flock`` so replicas starting together create one key, not two.
- A key's ``kid`` is its RFC 7638 JWK thumbprint (SHA-256, base64url).

Rotation without logging anyone out is a schedule computed from the files
alone, so every replica agrees without talking to the others. A generated
file is named ``key-<UTC timestamp>.pem``; that timestamp is the key's
``created_at`` (files named otherwise count as created at the epoch). With
``publish_ahead`` (P) and ``retire_after`` (R):

- a key is **next** until ``created_at + P``: published in the JWKS, not
  signing, so every verifier's cached JWKS learns it before any token uses it;
- the newest key past its ``created_at + P`` is **current** and signs (if no
  key is, the oldest one signs: a fresh install must sign at once);
- an older key is **retiring** — published, not signing — until R seconds
  after its successor started signing (R = access-token TTL + leeway, so every
  token it signed has expired), then **retired**: no longer published, and
  deleted by the next ``codelab-auth-admin rotate-keys``.

:meth:`KeyRing.reload` re-reads the directory in place, so a running service
picks up a staged key without restart (``__main__`` calls it on a timer).

Nothing here ever logs or returns private key material except
:attr:`SigningKey.private_key` for the signer.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

RSA_KEY_SIZE = 2048
KEY_FILE_MODE = 0o600
KEYS_DIR_MODE = 0o700

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"

log = structlog.get_logger("auth.keys")


class KeyFileError(Exception):
    """A key file is unreadable or of a kind we do not sign with."""


def _b64url_uint(value: int) -> str:
    length = max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The required public members of ``key``'s JWK (no kid/use/alg)."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    point = key.public_key().public_numbers()
    # P-256 coordinates are always 32 bytes, leading zeros included (RFC 7518 §6.2.1.2).
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": base64.urlsafe_b64encode(point.x.to_bytes(32, "big")).rstrip(b"=").decode(),
        "y": base64.urlsafe_b64encode(point.y.to_bytes(32, "big")).rstrip(b"=").decode(),
    }


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, no spaces."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key with its identity; ``alg`` is RS256 or ES256."""

    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)
    path: Path
    created_at: float = 0.0

    @classmethod
    def from_private_key(cls, key: PrivateKey, path: Path) -> SigningKey:
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < RSA_KEY_SIZE:
                raise KeyFileError(f"{path}: RSA keys must have at least {RSA_KEY_SIZE} bits")
            alg = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            alg = "ES256"
        else:
            raise KeyFileError(f"{path}: only RSA and EC P-256 keys are supported")
        return cls(
            kid=jwk_thumbprint(public_jwk(key)),
            alg=alg,
            private_key=key,
            path=path,
            created_at=_created_at(path),
        )

    def public_jwk(self) -> dict[str, str]:
        """The JWK published in the JWKS: public members plus kid, use, alg."""
        return {**public_jwk(self.private_key), "kid": self.kid, "use": "sig", "alg": self.alg}


@dataclass(frozen=True, slots=True)
class Schedule:
    """Which keys do what at one moment; see the module docstring."""

    current: SigningKey
    next: tuple[SigningKey, ...]
    retiring: tuple[SigningKey, ...]
    retired: tuple[SigningKey, ...]


class KeyRing:
    """The keys of one directory and the rotation schedule over them.

    ``publish_ahead`` and ``retire_after`` default to 0 and forever: the
    newest key signs at once and nothing retires (what a plain directory of
    keys means). The service passes its configured values.
    """

    def __init__(
        self,
        keys: list[SigningKey],
        *,
        directory: Path | None = None,
        publish_ahead: float = 0.0,
        retire_after: float = math.inf,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys = _ordered(keys)
        self._directory = directory
        self._publish_ahead = publish_ahead
        self._retire_after = retire_after
        self._clock = clock

    def schedule(self, now: float | None = None) -> Schedule:
        """The schedule at ``now`` (default: the ring's clock)."""
        if now is None:
            now = self._clock()
        keys = self._keys
        active = [i for i, key in enumerate(keys) if key.created_at + self._publish_ahead <= now]
        index = active[-1] if active else 0
        retiring: list[SigningKey] = []
        retired: list[SigningKey] = []
        for i in range(index):
            successor_signs = max(keys[i + 1].created_at + self._publish_ahead, 0.0)
            if now < successor_signs + self._retire_after:
                retiring.append(keys[i])
            else:
                retired.append(keys[i])
        return Schedule(
            current=keys[index],
            next=keys[index + 1 :],
            retiring=tuple(retiring),
            retired=tuple(retired),
        )

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens now."""
        return self.schedule().current

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every loaded key, oldest first (retired ones included)."""
        return self._keys

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set: current key first, then next keys, then retiring ones."""
        schedule = self.schedule()
        published = [schedule.current, *reversed(schedule.next), *reversed(schedule.retiring)]
        return {"keys": [key.public_jwk() for key in published]}

    def reload(self) -> bool:
        """Re-read the directory; True if the set of keys changed.

        Blocking file I/O (run it in a thread from async code). Raises
        :class:`KeyFileError` or ``ValueError`` and keeps the old keys if the
        directory has become unusable.
        """
        if self._directory is None:
            return False
        fresh = _load_dir(self._directory)
        changed = [k.kid for k in fresh] != [k.kid for k in self._keys]
        self._keys = fresh  # one assignment: readers see the old or the new tuple
        return changed

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        publish_ahead: float = 0.0,
        retire_after: float = math.inf,
        clock: Callable[[], float] = time.time,
    ) -> KeyRing:
        """Load ``directory/*.pem``; raises :class:`KeyFileError` or ``ValueError`` if none."""
        return cls(
            list(_load_dir(directory)),
            directory=directory,
            publish_ahead=publish_ahead,
            retire_after=retire_after,
            clock=clock,
        )

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        publish_ahead: float = 0.0,
        retire_after: float = math.inf,
        clock: Callable[[], float] = time.time,
    ) -> KeyRing:
        """Load the keys, generating an RSA-2048 key first if there is none."""
        ensure_directory(directory)
        with _locked(directory):
            if not any(directory.glob("*.pem")):
                path = generate_key_file(directory)
                log.info("signing_key_generated", path=str(path))
            ring = cls.load(
                directory, publish_ahead=publish_ahead, retire_after=retire_after, clock=clock
            )
        log.info("signing_keys_loaded", count=len(ring.keys), current_kid=ring.current.kid)
        return ring


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate_keys` did."""

    staged: SigningKey
    signs_at: float
    deleted: tuple[SigningKey, ...]


class RotationPending(Exception):
    """A next key is already staged and not yet signing."""


def rotate_keys(
    directory: Path,
    *,
    publish_ahead: float,
    retire_after: float,
    now: float | None = None,
) -> Rotation:
    """Stage a new next key and delete retired key files, under the directory lock.

    Raises :class:`RotationPending` if a staged key has not started signing
    yet (rotating again would only push it back).
    """
    now = time.time() if now is None else now
    ensure_directory(directory)
    with _locked(directory):
        if not any(directory.glob("*.pem")):
            # Nothing to hand over from: the first key signs at once.
            staged = _load_key_file(generate_key_file(directory, now=now))
            return Rotation(staged=staged, signs_at=now, deleted=())
        ring = KeyRing.load(directory, publish_ahead=publish_ahead, retire_after=retire_after)
        schedule = ring.schedule(now)
        if schedule.next:
            signs_at = schedule.next[-1].created_at + publish_ahead
            raise RotationPending(
                f"key {schedule.next[-1].kid} is staged and signs at "
                f"{datetime.fromtimestamp(signs_at, UTC).isoformat(timespec='seconds')}"
            )
        for key in schedule.retired:
            key.path.unlink(missing_ok=True)
        path = generate_key_file(directory, now=now)
        staged = _load_key_file(path)
    return Rotation(staged=staged, signs_at=now + publish_ahead, deleted=schedule.retired)


def ensure_directory(directory: Path) -> None:
    """Create the keys directory with mode 0700 if it does not exist."""
    if not directory.exists():
        directory.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; make it exactly 0700.
        directory.chmod(KEYS_DIR_MODE)


def _ordered(keys: list[SigningKey] | tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
    return tuple(sorted(keys, key=lambda key: (key.created_at, key.path.name)))


def _load_dir(directory: Path) -> tuple[SigningKey, ...]:
    keys = [_load_key_file(path) for path in sorted(directory.glob("*.pem"))]
    if not keys:
        raise ValueError(f"no *.pem keys in {directory}")
    return _ordered(keys)


def _created_at(path: Path) -> float:
    name = path.name
    if name.startswith("key-") and name.endswith(".pem"):
        try:
            return datetime.strptime(name[4:-4], STAMP_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    return 0.0


def generate_key_file(directory: Path, *, now: float | None = None) -> Path:
    """Write a new RSA-2048 key as ``key-<UTC timestamp>.pem`` (mode 0600); return its path."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    stamp = moment.strftime(STAMP_FORMAT)
    path = directory / f"key-{stamp}.pem"
    temporary = directory / f".{path.name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _load_key_file(path: Path) -> SigningKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("signing_key_file_too_open", path=str(path), mode=oct(mode))
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: only RSA and EC P-256 keys are supported")
    return SigningKey.from_private_key(key, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, KEY_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
