"""The token endpoint's logic, free of HTTP (RFC 6749 §4.3, §5).

:class:`TokenEndpoint` takes the decoded form parameters of a token request
and returns a :class:`TokenResponse`, or raises an
:class:`~auth.errors.OAuthError` subclass whose code and description go to the
client verbatim. ``auth.app`` turns both into HTTP.

Order of checks: repeated parameters and a missing ``grant_type`` are
``invalid_request``; an unknown grant type is ``unsupported_grant_type``; then
the client is authenticated (``invalid_client``); then the grant's own
parameters (``invalid_request``), scope (``invalid_scope``) and credentials
(``invalid_grant``).

The password grant answers ``invalid_grant`` alike for an unknown user, a wrong
password and a disabled account, after one full argon2 verification in every
case, so neither the answer nor its timing tells whether a username exists.
New grants (refresh_token, client_credentials) are new ``_grant_*`` methods
registered in ``_GRANTS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from auth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from auth.passwords import Passwords
from auth.store import UserStore
from auth.tokens import AccessToken, Subject, TokenIssuer, parse_scope

log = structlog.get_logger("auth.grants")


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """The successful token response (RFC 6749 §5.1)."""

    access_token: AccessToken

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token.token,
            "token_type": "Bearer",
            "expires_in": self.access_token.expires_in,
            "scope": " ".join(self.access_token.scope),
        }


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client; only public first-party clients so far."""

    client_id: str
    grant_types: frozenset[str]
    scopes: tuple[str, ...]


class TokenEndpoint:
    """Handles token requests for the configured clients."""

    def __init__(
        self,
        *,
        users: UserStore,
        passwords: Passwords,
        issuer: TokenIssuer,
        clients: Sequence[Client],
    ) -> None:
        self._users = users
        self._passwords = passwords
        self._issuer = issuer
        self._clients = {client.client_id: client for client in clients}
        self._grants: dict[str, Callable[[Client, Mapping[str, str]], Awaitable[TokenResponse]]]
        self._grants = {"password": self._grant_password}

    @property
    def grant_types(self) -> tuple[str, ...]:
        return tuple(self._grants)

    async def handle(self, params: Sequence[tuple[str, str]]) -> TokenResponse:
        """Answer one token request given its form fields in order.

        Raises an ``OAuthError``; safe to cancel (nothing is written before the
        token is issued, except a rehashed password, which is idempotent).
        """
        form = _single_valued(params)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("the grant_type parameter is required")
        grant = self._grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
        client = self._authenticate_client(form)
        if grant_type not in client.grant_types:
            raise UnauthorizedClient("this client may not use this grant type")
        return await grant(client, form)

    def _authenticate_client(self, form: Mapping[str, str]) -> Client:
        client_id = form.get("client_id")
        if not client_id:
            raise InvalidClient("client authentication is required (client_id)")
        client = self._clients.get(client_id)
        if client is None:
            log.info("token_refused", error="invalid_client", reason="unknown_client")
            raise InvalidClient("unknown client")
        return client

    async def _grant_password(self, client: Client, form: Mapping[str, str]) -> TokenResponse:
        username = form.get("username")
        password = form.get("password")
        if not username:
            raise InvalidRequest("the username parameter is required")
        if password is None or password == "":
            raise InvalidRequest("the password parameter is required")
        scope = parse_scope(form.get("scope"), allowed=client.scopes)

        user = await self._users.get_by_username(username)
        matches = await self._passwords.verify_async(
            None if user is None else user.password_hash, password
        )
        if user is None or not matches or user.disabled:
            reason = (
                "unknown_user" if user is None else "bad_password" if not matches else "disabled"
            )
            log.info(
                "token_refused", error="invalid_grant", reason=reason, client_id=client.client_id
            )
            raise InvalidGrant("the username or password is incorrect")

        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash_async(password)
            if await self._users.replace_password_hash(user.id, user.password_hash, new_hash):
                log.info("password_rehashed", user_id=user.id)

        token = self._issuer.issue(
            Subject(user_id=user.id, username=user.username),
            client_id=client.client_id,
            scope=scope,
        )
        log.info(
            "token_issued",
            grant_type="password",
            user_id=user.id,
            client_id=client.client_id,
            jti=token.jti,
            kid=token.kid,
        )
        return TokenResponse(access_token=token)


def _single_valued(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The parameters as a dict; RFC 6749 §3.2 forbids sending one twice."""
    form: dict[str, str] = {}
    for name, value in params:
        if name in form:
            raise InvalidRequest(f"the {name} parameter is repeated")
        form[name] = value
    return form
