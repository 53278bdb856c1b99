"""Logout and refresh-token reuse reach the edge: the user's live socket closes."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ide.connection import IdeConnection
from tests.integration.conftest import Mesh, add_user


@pytest.fixture
def user(mesh: Mesh) -> dict[str, str]:
    """A user of its own: revoking it must not touch the dev user's token."""
    return add_user(mesh)


async def login(mesh: Mesh, user: dict[str, str]) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=mesh.auth_url) as client:
        reply = await client.post(
            "/oauth/token",
            data={"grant_type": "password", "client_id": "codelab-ide", **user},
        )
    reply.raise_for_status()
    return dict(reply.json())


async def refresh(mesh: Mesh, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=mesh.auth_url) as client:
        return await client.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": token,
                "client_id": "codelab-ide",
            },
        )


async def handshake_status(mesh: Mesh, session_id: str, token: str) -> int:
    try:
        async with IdeConnection(mesh.ws_url, session_id, token) as ide:
            assert (await ide.next_frame())["type"] == "session_info"
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def wait_closed(ide: IdeConnection) -> ConnectionClosed:
    try:
        while True:
            await ide.next_frame()
    except ConnectionClosed as closed:
        return closed


async def test_refresh_reuse_revokes_the_family_and_closes_the_live_socket(
    mesh: Mesh, user: dict[str, str]
) -> None:
    grant = await login(mesh, user)
    session_id = f"revoke-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(mesh.ws_url, session_id, grant["access_token"]) as ide:
        await ide.next_frame()
        first = await refresh(mesh, grant["refresh_token"])
        assert first.status_code == 200
        rotated = first.json()["refresh_token"]
        assert rotated != grant["refresh_token"]
        reused = await refresh(mesh, grant["refresh_token"])  # a thief replays the old one
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"
        closed = await wait_closed(ide)  # bounded by the test timeout: seconds, not minutes
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4001, "token revoked: a terminal close"
    family_member = await refresh(mesh, rotated)
    assert family_member.status_code == 400, "the whole family is revoked"
    with pytest.raises(InvalidStatus) as refused:
        async with IdeConnection(mesh.ws_url, session_id, grant["access_token"]):
            pass
    assert refused.value.response.status_code == 401
    # Logging in again works. Revocation has one-second resolution (like
    # iat), so a token from the very second of the revocation is refused too:
    # the client logs in again, as it would.
    statuses = []
    for _ in range(20):
        fresh = await login(mesh, user)
        status = await handshake_status(mesh, session_id, fresh["access_token"])
        statuses.append(status)
        if status == 101:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 101, statuses
    assert set(statuses[:-1]) <= {401}


async def test_logout_closes_the_live_socket(mesh: Mesh, user: dict[str, str]) -> None:
    grant = await login(mesh, user)
    async with IdeConnection(
        mesh.ws_url, f"logout-{uuid.uuid4().hex[:8]}", grant["access_token"]
    ) as ide:
        await ide.next_frame()
        async with httpx.AsyncClient(base_url=mesh.auth_url) as client:
            revoked = await client.post(
                "/oauth/revoke",
                data={"token": grant["refresh_token"], "client_id": "codelab-ide"},
            )
        assert revoked.status_code == 200
        closed = await wait_closed(ide)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4001
