"""The REST views the terminal client reads: a session's checkpoints and
branches, and the user's approval rules.

The gateway serves its read-only views (GETs) on the WebSocket's own port,
and the front door serves them at the same base URL as the WebSocket, so the
REST base is the WebSocket URL with ``ws`` turned into ``http``
(:func:`rest_base`). :class:`RestClient` sends the same bearer token;
:func:`format_checkpoints`, :func:`format_branches` and :func:`format_rules` turn the answers into
lines for a person.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ide.diffs import printable

TIMEOUT = 10.0  # seconds for one view; a terminal user waits for the answer


class RestError(Exception):
    """The server answered with an error (the message says which and why),
    or could not be reached."""


def rest_base(ws_url: str) -> str:
    """``ws://host:8000`` → ``http://host:8000``, ``wss://…/api/v1`` → ``https://…``."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/").removesuffix("/api/v1")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class RestClient:
    """GETs one REST view at a time with the user's token."""

    def __init__(
        self, base: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.base = base.rstrip("/")
        self._token = token
        self._transport = transport

    async def get(self, path: str) -> Any:
        """The JSON body of ``GET {base}{path}``; RestError if it is not 2xx JSON."""
        async with httpx.AsyncClient(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=TIMEOUT,
            transport=self._transport,
        ) as client:
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                raise RestError(f"cannot reach {self.base}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            raise RestError(f"{path}: {response.status_code} {_problem(body, response.text)}")
        if body is None:
            raise RestError(f"{path}: the answer is not JSON")
        return body

    async def checkpoints(self, session_id: str) -> Any:
        return await self.get(f"/api/v1/sessions/{quote(session_id, safe='')}/checkpoints")

    async def branches(self, session_id: str) -> Any:
        return await self.get(f"/api/v1/sessions/{quote(session_id, safe='')}/branches")

    async def approval_rules(self) -> Any:
        return await self.get("/api/v1/approval-rules")


def _problem(body: Any, text: str) -> str:
    if isinstance(body, dict):
        for key in ("error_description", "detail", "message", "error"):
            if body.get(key):
                return str(body[key])
    return text[:200]


def format_checkpoints(body: Any) -> str:
    """The turns that changed files, as the server lists them, each with its files."""
    turns = body.get("turns") if isinstance(body, dict) else None
    if not turns:
        return "no turn has changed files yet"
    lines = []
    for turn in turns:
        undone = " (undone)" if turn.get("undone") else ""
        message = " ".join(str(turn.get("message", "")).split())
        if len(message) > 60:
            message = message[:60] + "…"
        lines.append(f"{turn.get('turn_id')}  {turn.get('created_at', '')}{undone}  {message}")
        lines.extend(
            f"    {file.get('change', '?'):<8} {file.get('path')}" for file in turn.get("files", [])
        )
    return printable("\n".join(lines))


def format_branches(body: Any) -> str:
    """The parts of the history retries and edits replaced, newest first, a line a message."""
    branches = body.get("branches") if isinstance(body, dict) else None
    if not branches:
        return "no retry or edit has replaced messages yet"
    lines = []
    for branch in branches:
        lines.append(
            f"branch {branch.get('branch')} ({branch.get('reason')}, "
            f"from message {branch.get('from_message')}, {branch.get('created_at', '')})"
        )
        for offset, message in enumerate(branch.get("messages", [])):
            text = " ".join(str(message.get("content", "")).split())
            text = text[:60] + "…" if len(text) > 60 else text
            position = int(branch.get("from_message") or 0) + offset
            lines.append(f"    {position:>3} {message.get('role', '?'):<9} {text}")
    return printable("\n".join(lines))


def format_rules(body: Any) -> str:
    """The user's approval rules: what is allowed, what denied, then the settings."""
    if not isinstance(body, dict):
        return json.dumps(body, ensure_ascii=False)
    lines = []
    for kind in ("allow", "deny"):
        rules = body.get(kind) or []
        lines.append(f"{kind}:" + ("" if rules else " (none)"))
        lines.extend(f"  {_rule(rule)}" for rule in rules)
    lines.extend(
        f"{key}: {json.dumps(value, ensure_ascii=False)}"
        for key, value in body.items()
        if key not in ("allow", "deny")
    )
    return printable("\n".join(lines))


def _rule(rule: Any) -> str:
    return rule if isinstance(rule, str) else json.dumps(rule, ensure_ascii=False)
