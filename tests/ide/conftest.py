"""Tests of the terminal client (``ide/``) against a scripted gateway: a real
WebSocket server on loopback whose side of the protocol each test plays frame
by frame, so the frames the client sends are checked exactly, without a
server that implements them. (The real mesh drives the same client in
tests/integration/.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ide.connection import IdeConnection

Frame = dict[str, Any]


class Peer:
    """The gateway's end of one client connection, played by the test."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def send(self, frame: Frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def receive(self) -> Frame:
        frame = json.loads(await self.ws.recv())
        assert isinstance(frame, dict)
        return frame

    async def end_turn(self, text: str = "", seq: int = 90) -> None:
        if text:
            await self.send({"type": "assistant_message", "seq": seq, "content": text})
        await self.send(
            {
                "type": "assistant_message",
                "seq": seq + 1,
                "content": "",
                "is_final": True,
                "metadata": {"status": "completed"},
            }
        )


class ScriptedGateway:
    """A WebSocket server on loopback; :meth:`accept` hands the test each client."""

    def __init__(self) -> None:
        self.url = ""
        self._peers: asyncio.Queue[Peer] = asyncio.Queue(maxsize=1)

    async def _handler(self, ws: ServerConnection) -> None:
        await self._peers.put(Peer(ws))
        await ws.wait_closed()

    async def accept(self) -> Peer:
        return await self._peers.get()


@pytest.fixture
async def gateway() -> AsyncIterator[ScriptedGateway]:
    scripted = ScriptedGateway()
    async with serve(scripted._handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        scripted.url = f"ws://127.0.0.1:{port}"
        yield scripted


@pytest.fixture
async def connection(gateway: ScriptedGateway) -> AsyncIterator[IdeConnection]:
    async with IdeConnection(gateway.url, "s1", "token-1") as conn:
        yield conn
