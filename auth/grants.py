"""The token and revocation endpoints' logic, free of HTTP (RFC 6749, RFC 7009).

:class:`TokenEndpoint` takes a decoded request (form fields, the client
credentials of an ``Authorization: Basic`` header if any, the client's
address) and returns a :class:`TokenResponse`, or raises an
:class:`~auth.errors.OAuthError` subclass whose code and description go to the
client verbatim. ``auth.app`` turns both into HTTP.

Order of checks: repeated parameters and a missing ``grant_type`` are
``invalid_request``; an unknown grant type is ``unsupported_grant_type``; then
the client is authenticated (``invalid_client``) and must be allowed the grant
(``unauthorized_client``); then the grant's own parameters
(``invalid_request``), scope (``invalid_scope``) and credentials
(``invalid_grant``).

Grants:

- ``password`` — public first-party clients only; throttled per account and
  address (:mod:`auth.throttle`) before the password is checked; answers
  ``invalid_grant`` alike for an unknown user, a wrong password and a disabled
  account, after one full argon2 verification in every case. Returns a
  refresh token starting a new family.
- ``refresh_token`` — rotates the token (:mod:`auth.refresh`); reuse of a
  spent token revokes its family. A narrower ``scope`` may be requested.
- ``client_credentials`` — confidential clients; ``sub`` is the client id;
  no refresh token (RFC 6749 §4.4.3).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import structlog

from auth.audit import AuditLog
from auth.clients import Client, ClientCredentials, Clients
from auth.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedTokenType,
)
from auth.passwords import Passwords
from auth.refresh import IssuedRefreshToken, RefreshTokens, RotateFailure, RotateRefused
from auth.store import UserStore
from auth.throttle import LoginThrottle
from auth.tokens import AccessToken, Subject, TokenIssuer, parse_scope

log = structlog.get_logger("auth.grants")


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """The successful token response (RFC 6749 §5.1)."""

    access_token: AccessToken
    refresh_token: IssuedRefreshToken | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token.token,
            "token_type": "Bearer",
            "expires_in": self.access_token.expires_in,
            "scope": " ".join(self.access_token.scope),
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token.token
        return body


@dataclass(frozen=True, slots=True)
class Request:
    """One token or revocation request, as the HTTP layer decoded it."""

    params: Sequence[tuple[str, str]]
    address: str
    basic: ClientCredentials | None = None


def parse_basic(header: str | None) -> ClientCredentials | None:
    """RFC 6749 §2.3.1 ``client_secret_basic``; raises :class:`InvalidClient` if malformed."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient("only HTTP Basic client authentication is supported")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise InvalidClient("malformed Basic credentials")
    # Both parts are form-urlencoded before base64 (RFC 6749 §2.3.1).
    return ClientCredentials(unquote_plus(client_id), unquote_plus(secret))


class TokenEndpoint:
    """Handles token and revocation requests."""

    def __init__(
        self,
        *,
        users: UserStore,
        passwords: Passwords,
        issuer: TokenIssuer,
        clients: Clients,
        refresh_tokens: RefreshTokens,
        throttle: LoginThrottle,
        audit: AuditLog,
    ) -> None:
        self._users = users
        self._passwords = passwords
        self._issuer = issuer
        self._clients = clients
        self._refresh = refresh_tokens
        self._throttle = throttle
        self._audit = audit
        self._grants: dict[
            str, Callable[[Client, Mapping[str, str], str], Awaitable[TokenResponse]]
        ]
        self._grants = {
            "password": self._grant_password,
            "refresh_token": self._grant_refresh_token,
            "client_credentials": self._grant_client_credentials,
        }

    @property
    def grant_types(self) -> tuple[str, ...]:
        return tuple(self._grants)

    async def handle(self, request: Request) -> TokenResponse:
        """Answer one token request.

        Raises an ``OAuthError``. Safe to cancel: each database step is one
        transaction, and a rotation is committed together with its successor.
        """
        form = _single_valued(request.params)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("the grant_type parameter is required")
        grant = self._grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
        client = await self._authenticate_client(form, request)
        if grant_type not in client.grant_types:
            raise UnauthorizedClient("this client may not use this grant type")
        return await grant(client, form, request.address)

    async def revoke(self, request: Request) -> None:
        """RFC 7009: revoke a refresh token and its family.

        Succeeds (returns) for unknown tokens and for tokens of other clients,
        which are left alone. Raises :class:`InvalidClient`,
        :class:`InvalidRequest`, or :class:`UnsupportedTokenType` for an
        access token (they are short-lived JWTs; log out through their refresh
        token, which also puts the user on the revocation feed).
        """
        form = _single_valued(request.params)
        client = await self._authenticate_client(form, request)
        token = form.get("token")
        if not token:
            raise InvalidRequest("the token parameter is required")
        revoked = await self._refresh.revoke(
            token, client_id=client.client_id, address=request.address
        )
        if revoked:
            log.info("refresh_token_revoked", client_id=client.client_id)
        elif form.get("token_type_hint") == "access_token":
            raise UnsupportedTokenType("access tokens cannot be revoked; revoke the refresh token")

    async def _authenticate_client(self, form: Mapping[str, str], request: Request) -> Client:
        posted_id = form.get("client_id")
        posted_secret = form.get("client_secret")
        if request.basic is not None:
            if posted_secret is not None:
                raise InvalidRequest("use one client authentication method, not two")
            if posted_id is not None and posted_id != request.basic.client_id:
                raise InvalidRequest("client_id does not match the Basic credentials")
            credentials = request.basic
        elif posted_id:
            credentials = ClientCredentials(posted_id, posted_secret)
        else:
            raise InvalidClient("client authentication is required (client_id)")
        try:
            return await self._clients.authenticate(credentials)
        except InvalidClient:
            log.info("token_refused", error="invalid_client", client_id=credentials.client_id)
            await self._audit.record(
                "client_auth_failed", client_id=credentials.client_id, address=request.address
            )
            raise

    async def _grant_password(
        self, client: Client, form: Mapping[str, str], address: str
    ) -> TokenResponse:
        username = form.get("username")
        password = form.get("password")
        if not username:
            raise InvalidRequest("the username parameter is required")
        if password is None or password == "":
            raise InvalidRequest("the password parameter is required")
        scope = parse_scope(form.get("scope"), allowed=client.scopes)

        await self._throttle.admit(username, address, client_id=client.client_id)
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
            await self._audit.record(
                "login_failed",
                user_id=None if user is None else user.id,
                username=username,
                client_id=client.client_id,
                address=address,
                detail=reason,
            )
            raise InvalidGrant("the username or password is incorrect")
        await self._throttle.succeeded(username, address)

        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash_async(password)
            if await self._users.replace_password_hash(user.id, user.password_hash, new_hash):
                log.info("password_rehashed", user_id=user.id)

        token = await self._signed(
            Subject(user_id=user.id, username=user.username),
            client,
            scope,
            grant_type="password",
            audit_event="login_succeeded",
            address=address,
        )
        refresh = await self._refresh.issue(user.id, client.client_id, scope)
        return TokenResponse(access_token=token, refresh_token=refresh)

    async def _grant_refresh_token(
        self, client: Client, form: Mapping[str, str], address: str
    ) -> TokenResponse:
        presented = form.get("refresh_token")
        if not presented:
            raise InvalidRequest("the refresh_token parameter is required")
        requested = form.get("scope")
        if requested:
            # Checked before the token is spent, so a bad request does not burn it.
            parse_scope(requested, allowed=client.scopes)
        try:
            successor = await self._refresh.rotate(
                presented,
                client_id=client.client_id,
                scope=None,
                address=address,
            )
        except RotateRefused as refused:
            log.info(
                "token_refused",
                error="invalid_grant",
                reason=refused.failure.value,
                client_id=client.client_id,
            )
            if refused.failure is not RotateFailure.REUSED:
                await self._audit.record(
                    "refresh_failed",
                    user_id=None if refused.grant is None else refused.grant.user_id,
                    client_id=client.client_id,
                    address=address,
                    detail=refused.failure.value,
                )
            raise InvalidGrant("the refresh token is invalid, expired or revoked") from None
        grant = successor.grant
        # A narrower scope applies to this access token; the family keeps its grant.
        scope = grant.scope if not requested else parse_scope(requested, allowed=grant.scope)
        user = await self._users.get_by_id(grant.user_id)
        if user is None or user.disabled:
            raise InvalidGrant("the refresh token is invalid, expired or revoked")
        token = await self._signed(
            Subject(user_id=user.id, username=user.username),
            client,
            scope,
            grant_type="refresh_token",
            audit_event="refresh_succeeded",
            address=address,
        )
        return TokenResponse(access_token=token, refresh_token=successor)

    async def _grant_client_credentials(
        self, client: Client, form: Mapping[str, str], address: str
    ) -> TokenResponse:
        scope = parse_scope(form.get("scope"), allowed=client.scopes)
        token = await self._signed(
            Subject(user_id=client.client_id, username=None),
            client,
            scope,
            grant_type="client_credentials",
            audit_event="client_credentials_granted",
            address=address,
        )
        return TokenResponse(access_token=token)

    async def _signed(
        self,
        subject: Subject,
        client: Client,
        scope: tuple[str, ...],
        *,
        grant_type: str,
        audit_event: str,
        address: str,
    ) -> AccessToken:
        """Sign an access token for a granted request, and audit and log the grant."""
        token = self._issuer.issue(subject, client_id=client.client_id, scope=scope)
        user_id = None if subject.username is None else subject.user_id
        await self._audit.record(
            audit_event,
            user_id=user_id,
            username=subject.username,
            client_id=client.client_id,
            address=address,
        )
        log.info(
            "token_issued",
            grant_type=grant_type,
            user_id=user_id,
            client_id=client.client_id,
            jti=token.jti,
            kid=token.kid,
        )
        return token


def _single_valued(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The parameters as a dict; RFC 6749 §3.2 forbids sending one twice."""
    form: dict[str, str] = {}
    for name, value in params:
        if name in form:
            raise InvalidRequest(f"the {name} parameter is repeated")
        form[name] = value
    return form
