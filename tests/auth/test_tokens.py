from __future__ import annotations

import jwt
import pytest

from auth.errors import InvalidScope
from auth.keys import KeyRing
from auth.tokens import Subject, TokenIssuer, parse_scope

NOW = 1_700_000_000


def test_issued_token_carries_every_claim(keys: KeyRing) -> None:
    issuer = TokenIssuer(
        keys, issuer="https://auth.example", audience="api", ttl=600, clock=lambda: NOW + 0.7
    )
    issued = issuer.issue(Subject("u-1", "alice"), client_id="ide", scope=("a", "b"))

    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "RS256", "kid": keys.current.kid, "typ": "at+jwt"}
    public = jwt.PyJWK(keys.jwks()["keys"][0]).key
    claims = jwt.decode(
        issued.token,
        public,
        algorithms=["RS256"],
        audience="api",
        issuer="https://auth.example",
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "https://auth.example",
        "sub": "u-1",
        "preferred_username": "alice",
        "aud": "api",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
        "jti": issued.jti,
        "scope": "a b",
        "client_id": "ide",
    }
    assert issued.expires_in == 600
    assert issued.kid == keys.current.kid


def test_every_token_has_its_own_jti(keys: KeyRing) -> None:
    issuer = TokenIssuer(keys, issuer="i", audience="a", ttl=60)
    jtis = {issuer.issue(Subject("u", "n"), client_id="c", scope=()).jti for _ in range(5)}
    assert len(jtis) == 5


def test_non_positive_ttl_is_refused(keys: KeyRing) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        TokenIssuer(keys, issuer="i", audience="a", ttl=0)


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (None, ("read", "write")),
        ("", ("read", "write")),
        ("write", ("write",)),
        ("write read write", ("write", "read")),
    ],
)
def test_parse_scope(requested: str | None, granted: tuple[str, ...]) -> None:
    assert parse_scope(requested, allowed=("read", "write")) == granted


@pytest.mark.parametrize("requested", ["admin", "read  write", 'read "x"', "read\\"])
def test_parse_scope_refuses(requested: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(requested, allowed=("read", "write"))
