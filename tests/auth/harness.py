"""An in-process auth service over a real database, driven through httpx."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.app import create_app
from auth.clients import Client, Clients
from auth.config import AuthConfig
from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.store import UserStore, create_engine

from .conftest import FakeClock, fast_hasher

ISSUER = "http://auth.test"
PASSWORD = "correct horse battery"
IDE = "codelab-ide"

CONFIG = AuthConfig(
    issuer=ISSUER,
    audience="codelab-api",
    access_token_ttl=300,
    client_id=IDE,
    scopes=("codelab", "profile"),
    refresh_token_ttl=3600,
    internal_api_key="internal-test-key",
    lockout_threshold=4,
    lockout_duration=600,
)


@dataclass
class Auth:
    """One running app and what tests need to poke at it."""

    client: httpx.AsyncClient
    engine: AsyncEngine
    users: UserStore
    clients: Clients
    keys: KeyRing
    clock: FakeClock
    config: AuthConfig
    app: Any

    async def password(self, *, address: str = "10.0.0.1", **form: str) -> httpx.Response:
        data = {
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "client_id": IDE,
            **form,
        }
        return await self.post("/oauth/token", data, address=address)

    async def refresh(self, token: str, *, client_id: str = IDE, **form: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
        return await self.post("/oauth/token", {**data, **form})

    async def post(
        self,
        path: str,
        data: dict[str, str],
        *,
        address: str = "10.0.0.1",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        # The ASGI transport's ``client`` is the socket peer the app sees.
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            return await client.post(path, data=data, headers=headers)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@asynccontextmanager
async def running(
    database_url: str,
    keys: KeyRing,
    clock: FakeClock,
    passwords: Passwords | None = None,
    **overrides: Any,
) -> AsyncIterator[Auth]:
    """The app over ``database_url``; a second ``running`` on the same URL is a restart."""
    config = replace(CONFIG, **overrides)
    passwords = passwords or Passwords(fast_hasher())
    engine = create_engine(database_url)
    try:
        app = create_app(config, keys=keys, engine=engine, passwords=passwords, clock=clock)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            auth = Auth(
                client,
                engine,
                UserStore(engine),
                Clients(
                    engine,
                    passwords,
                    first_party=Client(IDE, confidential=False, scopes=config.scopes),
                    clock=clock,
                ),
                keys,
                clock,
                config,
                app,
            )
            yield auth
    finally:
        await engine.dispose()


async def add_alice(auth: Auth) -> str:
    user = await auth.users.add_user("alice", Passwords(fast_hasher()).hash(PASSWORD))
    return user.id
