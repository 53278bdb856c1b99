"""The IDE's side of the WebSocket protocol, as a small library.

:class:`IdeConnection` opens ``/ws/{session_id}`` with a bearer token, sends
IDE frames and yields the gateway's frames as dicts. The terminal client and
the end-to-end tests both use it, so the tests drive the same code a person
does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class IdeConnection:
    """One WebSocket connection to the gateway. Use as ``async with``."""

    def __init__(
        self, url: str, session_id: str, token: str, *, last_seq: int | None = None
    ) -> None:
        query = "" if last_seq is None else f"?last_seq={last_seq}"
        self.uri = f"{url.rstrip('/')}/ws/{session_id}{query}"
        self.session_id = session_id
        self._token = token
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> IdeConnection:
        self._ws = await connect(
            self.uri,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            compression=None,
            max_size=None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("not connected")
        return self._ws

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_message(self, content: str) -> None:
        await self.send({"type": "user_message", "content": content, "role": "user"})

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Yield every frame from the gateway until the connection closes."""
        async for raw in self.ws:
            frame = json.loads(raw)
            if isinstance(frame, dict):
                yield frame

    async def next_frame(self) -> dict[str, Any]:
        frame = json.loads(await self.ws.recv())
        if not isinstance(frame, dict):
            raise ValueError("gateway sent a frame that is not a JSON object")
        return frame

    async def answer(self) -> tuple[str, list[dict[str, Any]]]:
        """Read frames until the final assistant frame; return text and frames."""
        frames: list[dict[str, Any]] = []
        parts: list[str] = []
        while True:
            frame = await self.next_frame()
            frames.append(frame)
            if frame.get("type") == "assistant_message":
                if frame.get("is_final"):
                    return "".join(parts), frames
                parts.append(str(frame.get("content", "")))
