"""The CodeLab IDE's chat, replicated: how it decodes our frames, what it
shows, how it runs and approves tool calls, what it sends.

Every frame is decoded exactly as ``MessageModel.fromJson`` does
(``packages/codelab_ai_assistant/lib/features/agent_chat/data/models/
message_model.g.dart`` of ``pese-git/codelab_ide``): ``type`` a required
``String``, every other field nullable and cast to its Dart type, so a
field of another type fails the way the Dart ``as`` cast would. Each
decoded frame becomes one bubble (``MessageModel.toEntity`` /
``_parseContent``, appended by ``AgentChatBloc._onMessageReceived``). A
``tool_call`` runs at once (``ExecuteToolUseCase``): after asking the human
when ``requires_approval``; a rejection is sent as the error
``Операция отклонена: <tool>`` (``Failure.userRejected``). Frames sent are
``MessageModel.toJson()``: every field, ``null`` or not. Pending approvals
are restored from REST on connect (``ToolApprovalServiceImpl.
restorePendingApprovals``) and, approved, run and answered with a
``tool_result`` (``AgentChatBloc._executeRestoredTool``).

The one difference from the Dart client, as the issue allows: the token
goes in the WebSocket subprotocol (``protocols: ['bearer', token]``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 30.0

_FIELDS: tuple[tuple[str, type], ...] = (
    ("content", str),
    ("role", str),
    ("is_final", bool),
    ("call_id", str),
    ("tool_name", str),
    ("arguments", dict),
    ("requires_approval", bool),
    ("result", dict),
    ("error", str),
    ("agent_type", str),
    ("from_agent", str),
    ("to_agent", str),
    ("reason", str),
    ("metadata", dict),
)


class DartCastError(TypeError):
    """What the Dart decoder throws (a failed ``as`` cast)."""


@dataclass(frozen=True)
class MessageModel:
    """``_$MessageModelFromJson`` / ``_$MessageModelToJson``, field for field."""

    type: str
    fields: dict[str, Any]

    @classmethod
    def from_json(cls, data: object) -> MessageModel:
        if not isinstance(data, dict):  # jsonDecode(event) as Map<String, dynamic>
            raise DartCastError(f"not a Map: {data!r}")
        kind = data.get("type")
        if not isinstance(kind, str):  # json['type'] as String
            raise DartCastError(f"type is {kind!r}")
        fields: dict[str, Any] = {}
        for name, dart_type in _FIELDS:
            value = data.get(name)
            if value is not None and not (
                isinstance(value, dart_type)
                and not (dart_type is not bool and isinstance(value, bool))
            ):
                raise DartCastError(f"{name} is {type(value).__name__}, not {dart_type.__name__}")
            fields[name] = value
        return cls(kind, fields)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **{name: self.fields.get(name) for name, _ in _FIELDS}}

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def to_bubble(self) -> Bubble:
        """``toEntity()``: the role and content the chat shows."""
        f = self.fields
        role = {
            "user_message": "user",
            "assistant_message": "assistant",
            "tool_call": "tool",
            "tool_result": "tool",
            "error": "system",
        }.get(self.type, "user" if f["role"] == "user" else "assistant")
        match self.type:
            case "user_message" | "assistant_message":
                return Bubble(role, "text", f["content"] or "", is_final=f["is_final"] is not False)
            case "tool_call":
                return Bubble(role, "tool_call", f["tool_name"] or "", call_id=f["call_id"] or "")
            case "agent_switched":
                return Bubble(role, "agent_switch", f"{f['from_agent']} → {f['to_agent']}")
            case "error":
                return Bubble(role, "error", f["content"] or f["error"] or "Unknown error")
        return Bubble(role, "text", f["content"] or "", is_final=True)


@dataclass(frozen=True)
class Bubble:
    """One message of the chat (``Message`` with its ``MessageContent``)."""

    role: str
    kind: str
    text: str
    is_final: bool = True
    call_id: str = ""


Decide = Callable[[MessageModel], str | None]
"""The human at the approval dialog: "approve", "reject", or None (walks away)."""


def approve_all(call: MessageModel) -> str | None:
    return "approve"


@dataclass
class DartChat:
    """One chat panel of the IDE on one session."""

    base_url: str
    token: str
    session_id: str
    workspace: Path
    decide: Decide = approve_all
    bubbles: list[Bubble] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    socket: ClientConnection | None = None

    async def __aenter__(self) -> DartChat:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        """``AgentChatBloc._onConnect``: open the socket, then restore approvals."""
        url = self.base_url.replace("http://", "ws://") + f"/ws/{self.session_id}"
        self.socket = await connect(url, subprotocols=["bearer", self.token])  # type: ignore[list-item]
        await self._restore_pending_approvals()

    async def disconnect(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None

    async def send(self, kind: str, **fields: Any) -> None:
        assert self.socket is not None
        await self.socket.send(json.dumps(MessageModel(kind, fields).to_json()))

    async def say(self, text: str) -> list[Bubble]:
        """The user types ``text``; the bubbles until the answer's final one."""
        start = len(self.bubbles)
        self.bubbles.append(Bubble("user", "text", text))
        await self.send("user_message", content=text, role="user")
        await self.until_final()
        return self.bubbles[start + 1 :]

    async def until_final(self) -> None:
        """Read, show and act on frames until a final text bubble, or until
        a call waits for a human who walked away."""
        while True:
            model = await self._receive()
            bubble = model.to_bubble()
            self.bubbles.append(bubble)
            if bubble.kind == "tool_call":
                if not await self._execute(model):
                    return
            elif bubble.kind == "text" and bubble.is_final:
                return

    async def _receive(self) -> MessageModel:
        assert self.socket is not None
        async with asyncio.timeout(TIMEOUT):
            text = await self.socket.recv()
        data = json.loads(text)
        self.frames.append(data)
        return MessageModel.from_json(data)

    async def _execute(self, call: MessageModel) -> bool:
        """``ExecuteToolUseCase`` then the bloc's ``_sendToolResult``; False
        when the human left the dialog open."""
        if call["requires_approval"]:
            decision = self.decide(call)
            if decision is None:
                return False
            if decision == "reject":
                await self._send_result(call, error=f"Операция отклонена: {call['tool_name']}")
                return True
        await self._run(call["call_id"], call["tool_name"], call["arguments"] or {})
        return True

    async def _run(self, call_id: str, tool: str, arguments: dict[str, Any]) -> None:
        path = self.workspace / arguments.get("path", "")
        if tool == "read_file" and not path.is_file():
            await self.send(
                "tool_result",
                call_id=call_id,
                tool_name=tool,
                error=f"File not found: {arguments.get('path', '')}",
            )
            return
        if tool == "read_file":
            content = path.read_text()
            result = {"success": True, "content": content, "lines_read": len(content.split("\n"))}
        elif tool == "list_files":
            entries = (
                sorted(path.rglob("*")) if arguments.get("recursive") else sorted(path.iterdir())
            )
            items = [
                {
                    "name": entry.name,
                    "path": entry.relative_to(self.workspace).as_posix(),
                    "type": "directory" if entry.is_dir() else "file",
                }
                for entry in entries
            ]
            result = {"success": True, "path": ".", "items": items, "total_count": len(items)}
        elif tool == "write_file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(arguments["content"])
            result = {"success": True, "bytes_written": len(arguments["content"])}
        else:
            await self.send(
                "tool_result", call_id=call_id, tool_name=tool, error=f"Unsupported tool: {tool}"
            )
            return
        await self.send("tool_result", call_id=call_id, tool_name=tool, result=result)

    async def _send_result(self, call: MessageModel, *, error: str) -> None:
        await self.send(
            "tool_result", call_id=call["call_id"], tool_name=call["tool_name"], error=error
        )

    async def _restore_pending_approvals(self) -> None:
        """``restorePendingApprovals``: ask the human about each waiting call
        (``GET /api/v1/sessions/{id}/pending-approvals``) and, approved, run it."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=TIMEOUT) as http:
            reply = await http.get(
                f"/api/v1/sessions/{self.session_id}/pending-approvals",
                headers={"Authorization": f"Bearer {self.token}"},
            )
        reply.raise_for_status()
        for pending in reply.json()["pending_approvals"]:
            call = MessageModel(
                "tool_call",
                {
                    "call_id": pending["call_id"],
                    "tool_name": pending["tool_name"],
                    "arguments": pending["arguments"],
                    "requires_approval": True,
                },
            )
            decision = self.decide(call)
            if decision == "approve":
                await self._run(pending["call_id"], pending["tool_name"], pending["arguments"])
            elif decision == "reject":
                await self._send_result(call, error="User rejected: User rejected")
