"""OAuth clients: the configured first-party IDE client and registered ones.

Kinds and what they may do:

- **public** (no secret): ``password`` and ``refresh_token``. The configured
  ``AUTH_SERVICE__CLIENT_ID`` is one; ``add-client --public`` adds more. Every
  client here was registered by the operator, so every public client is
  first-party — that is what makes the password grant acceptable for it.
- **confidential** (secret, argon2id hash at rest): ``client_credentials``
  only. A confidential client asking for the password grant gets
  ``unauthorized_client``: a service account has no business handling a
  user's password.

:meth:`Clients.authenticate` verifies a secret with one full argon2
verification whether or not the client exists (and against a dummy hash if it
does not), so neither the answer nor its timing tells which client ids exist.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.errors import AlreadyExists, InvalidClient, InvalidRequest, NotFound
from auth.passwords import Passwords
from auth.schema import MAX_CLIENT_ID_LENGTH, clients

PUBLIC_GRANTS = frozenset({"password", "refresh_token"})
CONFIDENTIAL_GRANTS = frozenset({"client_credentials"})
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client."""

    client_id: str
    confidential: bool
    scopes: tuple[str, ...]
    disabled: bool = False
    secret_hash: str | None = None

    @property
    def grant_types(self) -> frozenset[str]:
        return CONFIDENTIAL_GRANTS if self.confidential else PUBLIC_GRANTS


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What the request presented: ``client_id`` and, maybe, a secret."""

    client_id: str
    secret: str | None


def generate_secret() -> str:
    """A new client secret: 256 random bits, base64url."""
    return secrets.token_urlsafe(SECRET_BYTES)


class Clients:
    """The first-party client plus the ``clients`` table."""

    def __init__(
        self,
        engine: AsyncEngine,
        passwords: Passwords,
        *,
        first_party: Client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._passwords = passwords
        self._first_party = first_party
        self._clock = clock

    async def get(self, client_id: str) -> Client | None:
        """The client, or None; disabled clients are returned (callers check)."""
        if client_id == self._first_party.client_id:
            return self._first_party
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(clients).where(clients.c.client_id == client_id)))
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return Client(
            client_id=row["client_id"],
            confidential=row["secret_hash"] is not None,
            scopes=tuple(row["scopes"].split()),
            disabled=bool(row["disabled"]),
            secret_hash=row["secret_hash"],
        )

    async def authenticate(self, credentials: ClientCredentials) -> Client:
        """The authenticated client; raises :class:`InvalidClient`.

        Public clients must not present a secret; confidential ones must
        present the right one. Unknown and disabled clients cost one
        verification like a wrong secret.
        """
        client = await self.get(credentials.client_id)
        if client is None or client.secret_hash is None:
            if credentials.secret is not None:
                await self._passwords.verify_async(None, credentials.secret)
                raise InvalidClient("client authentication failed")
            if client is None or client.disabled:
                raise InvalidClient("client authentication failed")
            return client
        if credentials.secret is None:
            raise InvalidClient("this client must authenticate with its secret")
        matches = await self._passwords.verify_async(client.secret_hash, credentials.secret)
        if not matches or client.disabled:
            raise InvalidClient("client authentication failed")
        return client

    async def add(
        self, client_id: str, *, confidential: bool, scopes: tuple[str, ...]
    ) -> str | None:
        """Register a client; returns the new secret (confidential) or None.

        The secret exists only in the return value; only its hash is stored.
        Raises :class:`AlreadyExists`, :class:`InvalidRequest` for a bad id.
        """
        if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH or not client_id.isprintable():
            raise InvalidRequest(
                f"client ids have 1 to {MAX_CLIENT_ID_LENGTH} printable characters"
            )
        if client_id == self._first_party.client_id:
            raise AlreadyExists(f"client {client_id!r} is the configured first-party client")
        secret = generate_secret() if confidential else None
        secret_hash = None if secret is None else await self._passwords.hash_async(secret)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    clients.insert().values(
                        client_id=client_id,
                        secret_hash=secret_hash,
                        scopes=" ".join(scopes),
                        disabled=False,
                        created_at=self._clock(),
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"client {client_id!r} already exists") from None
        return secret

    async def list(self) -> list[Client]:
        """Registered clients (not the configured one), by id; no secrets."""
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.select(clients).order_by(clients.c.client_id))
            return [
                Client(
                    client_id=row["client_id"],
                    confidential=row["secret_hash"] is not None,
                    scopes=tuple(row["scopes"].split()),
                    disabled=bool(row["disabled"]),
                )
                for row in result.mappings()
            ]

    async def set_disabled(self, client_id: str, disabled: bool) -> None:
        """Disable or enable a registered client; raises :class:`NotFound`."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                clients.update().where(clients.c.client_id == client_id).values(disabled=disabled)
            )
        if result.rowcount == 0:
            raise NotFound(f"no registered client {client_id!r}")
