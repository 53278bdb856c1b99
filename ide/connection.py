"""The IDE's side of the WebSocket protocol, as a small library.

:class:`IdeConnection` opens ``/ws/{session_id}`` with a bearer token, sends
IDE frames and yields the gateway's frames as dicts. The terminal client and
the end-to-end tests both use it, so the tests drive the same code a person
does.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import AsyncIterator
from pathlib import Path
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

    async def report_environment(self, workspace_root: Path) -> None:
        """Tell the agents where their tools run (an ``environment`` frame)."""
        await self.send(environment_frame(workspace_root))

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


def environment_frame(workspace_root: Path) -> dict[str, Any]:
    """This machine as the agents should know it: its OS, the shell that
    ``execute_command`` runs in (:mod:`ide.workspace` runs commands through
    the system shell, ``/bin/sh`` or ``%COMSPEC%``, whatever the user's login
    shell is), and the workspace's absolute path."""
    shell = os.environ.get("COMSPEC", "cmd.exe") if os.name == "nt" else "/bin/sh"
    return {
        "type": "environment",
        "os": f"{platform.system()} {platform.release()}".strip(),
        "shell": shell,
        "workspace_root": str(workspace_root),
    }
