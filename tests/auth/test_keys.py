from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth.keys import (
    KeyFileError,
    KeyRing,
    RotationPending,
    generate_key_file,
    jwk_thumbprint,
    rotate_keys,
)
from auth.tokens import Subject, TokenIssuer

from .conftest import FakeClock


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generates_one_rsa_key_with_private_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "keys"
    ring = KeyRing.load_or_create(directory)

    files = list(directory.glob("*.pem"))
    assert len(files) == 1
    assert _mode(files[0]) == 0o600
    assert _mode(directory) == 0o700
    assert ring.current.alg == "RS256"
    assert isinstance(ring.current.private_key, rsa.RSAPrivateKey)
    assert ring.current.private_key.key_size == 2048
    assert not list(directory.glob("*.tmp"))


def test_reload_keeps_the_same_key(tmp_path: Path) -> None:
    first = KeyRing.load_or_create(tmp_path)
    second = KeyRing.load_or_create(tmp_path)
    assert [k.kid for k in second.keys] == [first.current.kid]


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The example of RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
        "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
        "65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNL"
        "yrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJ"
        "zKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_newest_key_signs_and_all_are_published(tmp_path: Path) -> None:
    old = KeyRing.load_or_create(tmp_path).current
    generate_key_file(tmp_path)
    ring = KeyRing.load(tmp_path)

    assert len(ring.keys) == 2
    assert ring.current.kid != old.kid
    published = [key["kid"] for key in ring.jwks()["keys"]]
    assert published == [ring.current.kid, old.kid]


def test_jwks_entries_verify_signatures_of_their_key(keys: KeyRing) -> None:
    (entry,) = keys.jwks()["keys"]
    assert set(entry) == {"kty", "kid", "use", "alg", "n", "e"}
    assert entry["use"] == "sig"
    assert entry["alg"] == "RS256"
    public = jwt.PyJWK(entry).key
    token = jwt.encode({"x": 1}, keys.current.private_key, algorithm="RS256")
    assert jwt.decode(token, public, algorithms=["RS256"]) == {"x": 1}


def test_ec_p256_key_is_loaded_as_es256(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key-ec.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    ring = KeyRing.load(tmp_path)
    (entry,) = ring.jwks()["keys"]
    assert ring.current.alg == "ES256"
    assert entry["kty"] == "EC"
    assert entry["crv"] == "P-256"
    assert entry["kid"] == ring.current.kid


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    (tmp_path / "weak.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="2048"):
        KeyRing.load(tmp_path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="PEM"):
        KeyRing.load_or_create(tmp_path)


PUBLISH_AHEAD = 600.0
RETIRE_AFTER = 1200.0


def _ring(directory: Path, clock: FakeClock) -> KeyRing:
    return KeyRing.load_or_create(
        directory, publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER, clock=clock
    )


def _kids(ring: KeyRing) -> list[str]:
    return [key["kid"] for key in ring.jwks()["keys"]]


def test_rotation_publishes_next_key_before_it_signs_and_retires_the_old_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    ring = _ring(tmp_path, clock)
    old = ring.current
    clock.advance(60)
    rotation = rotate_keys(
        tmp_path, publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER, now=clock.now
    )
    staged = rotation.staged
    assert rotation.signs_at == clock.now + PUBLISH_AHEAD
    assert _mode(staged.path) == 0o600
    assert ring.reload()

    # Published, not signing.
    assert ring.current.kid == old.kid
    assert _kids(ring) == [old.kid, staged.kid]
    issuer = TokenIssuer(ring, issuer="i", audience="a", ttl=900, clock=clock)
    old_token = issuer.issue(Subject("u", "alice"), client_id="c", scope=()).token
    assert jwt.get_unverified_header(old_token)["kid"] == old.kid

    # Promoted by time alone; the old key stays published and verifies its tokens.
    clock.advance(PUBLISH_AHEAD + 1)
    assert ring.current.kid == staged.kid
    assert _kids(ring) == [staged.kid, old.kid]
    new_token = issuer.issue(Subject("u", "alice"), client_id="c", scope=()).token
    assert jwt.get_unverified_header(new_token)["kid"] == staged.kid
    jwks = jwt.PyJWKSet.from_dict(ring.jwks())
    for token in (old_token, new_token):
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(
            token,
            jwks[kid].key,
            algorithms=["RS256"],
            audience="a",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        assert claims["sub"] == "u"

    # After every old token has expired, the old key is retired and deleted on rotation.
    clock.advance(RETIRE_AFTER)  # counted from when the successor started signing
    assert _kids(ring) == [staged.kid]
    again = rotate_keys(
        tmp_path, publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER, now=clock.now
    )
    assert [key.kid for key in again.deleted] == [old.kid]
    assert not old.path.exists()
    ring.reload()
    assert _kids(ring) == [staged.kid, again.staged.kid]


def test_rotating_twice_before_promotion_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    _ring(tmp_path, clock)
    rotate_keys(tmp_path, publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER, now=clock.now)
    with pytest.raises(RotationPending, match="staged"):
        rotate_keys(
            tmp_path, publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER, now=clock.now + 1
        )


def test_a_fresh_install_signs_at_once(tmp_path: Path, clock: FakeClock) -> None:
    ring = _ring(tmp_path, clock)
    (only,) = ring.keys
    assert ring.current == only
    assert ring.schedule().next == ()


def test_reload_keeps_old_keys_when_the_directory_breaks(tmp_path: Path, clock: FakeClock) -> None:
    ring = _ring(tmp_path, clock)
    assert not ring.reload()
    (tmp_path / "broken.pem").write_text("not a key")
    with pytest.raises(KeyFileError):
        ring.reload()
    assert len(ring.keys) == 1


def test_rotating_an_empty_directory_creates_a_key_that_signs_at_once(tmp_path: Path) -> None:
    rotation = rotate_keys(
        tmp_path / "keys", publish_ahead=PUBLISH_AHEAD, retire_after=RETIRE_AFTER
    )
    ring = KeyRing.load(tmp_path / "keys", publish_ahead=PUBLISH_AHEAD)
    assert ring.current.kid == rotation.staged.kid
    assert _mode(tmp_path / "keys") == 0o700
