"""The signing keys: a directory of PEM files, the newest of which signs.

Contract of :class:`KeyRing`:

- ``KeyRing.load_or_create(path)`` reads every ``*.pem`` private key in
  ``path`` (RSA >= 2048 bits, or EC P-256). If there is none, it generates one
  RSA-2048 key first. The directory is created with mode 0700 and key files are
  written with mode 0600, atomically (temporary file, then rename), under an
  exclusive ``flock`` so replicas starting together create one key, not two.
- Files are ordered by name; the **last** one signs (:attr:`KeyRing.current`).
  Generated files are named ``key-<UTC timestamp>.pem``, so "last" means
  "newest". Rotating is: drop a newer file in, restart; keep the old file until
  every token it signed has expired, because :meth:`KeyRing.jwks` publishes all.
- A key's ``kid`` is its RFC 7638 JWK thumbprint (SHA-256, base64url).

Nothing here ever logs or returns private key material except
:attr:`SigningKey.private_key` for the signer.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
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
    private_key: PrivateKey
    path: Path

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
        return cls(kid=jwk_thumbprint(public_jwk(key)), alg=alg, private_key=key, path=path)

    def public_jwk(self) -> dict[str, str]:
        """The JWK published in the JWKS: public members plus kid, use, alg."""
        return {**public_jwk(self.private_key), "kid": self.kid, "use": "sig", "alg": self.alg}


class KeyRing:
    """The keys loaded from one directory; immutable once built."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys = tuple(keys)

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._keys[-1]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._keys

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set with every public key, current one first."""
        return {"keys": [key.public_jwk() for key in reversed(self._keys)]}

    @classmethod
    def load(cls, directory: Path) -> KeyRing:
        """Load ``directory/*.pem``; raises :class:`KeyFileError` or ``ValueError`` if none."""
        keys = [_load_key_file(path) for path in sorted(directory.glob("*.pem"))]
        return cls(keys)

    @classmethod
    def load_or_create(cls, directory: Path) -> KeyRing:
        """Load the keys, generating an RSA-2048 key first if there is none."""
        if not directory.exists():
            directory.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
            # mkdir's mode is filtered by the umask; make it exactly 0700.
            directory.chmod(KEYS_DIR_MODE)
        with _locked(directory):
            if not any(directory.glob("*.pem")):
                path = generate_key_file(directory)
                log.info("signing_key_generated", path=str(path))
            ring = cls.load(directory)
        log.info("signing_keys_loaded", count=len(ring.keys), current_kid=ring.current.kid)
        return ring


def generate_key_file(directory: Path) -> Path:
    """Write a new RSA-2048 key as ``key-<UTC timestamp>.pem`` (mode 0600); return its path."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
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
