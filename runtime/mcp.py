"""MCP servers' tools, run by the runtime for the agents the operator chose.

The operator lists servers in a file (JSON or YAML) named by
``AGENT_RUNTIME__MCP_SERVERS``::

    servers:
      docs:                          # [A-Za-z0-9-], single underscores
        command: uvx                 # stdio: a process the runtime starts
        args: [mcp-server-fetch]
        env: {API_TOKEN: "${DOCS_TOKEN}"}
        agents: [ask, coder]         # default: every agent
        approval: true               # a human approves each call (default)
        user_rules: true             # users' allow rules may auto-approve (default)
        timeout: 30                  # seconds a call may take
        connect_timeout: 60          # seconds to start or reach it and list its tools
      tracker:
        url: https://mcp.example.com/mcp    # streamable HTTP
        headers: {Authorization: "Bearer ${TRACKER_TOKEN}"}

``${NAME}`` in ``env`` and ``headers`` is read from the runtime's
environment, so secrets stay out of the file; neither is ever logged. A
stdio server gets the SDK's safe default environment (``PATH``, ``HOME``…)
and its ``env``, not the runtime's.

A server's tool ``t`` is offered as ``mcp__<server>__<t>`` (as Claude Code
names them), cut to the 64 characters models accept, with a hash suffix
when cut. :class:`McpTools` connects to a server when an agent it serves is
first about to call the model, keeps the connection for every session, and
reconnects after a failure; a server that cannot be reached offers nothing
for :data:`RETRY_AFTER` seconds, and a call to it fails with a tool error
the model sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import structlog
import yaml

from runtime.executors import Execution, Offer
from runtime.tools import Effect, Side, Tool

if TYPE_CHECKING:  # the SDK is imported when a server is first connected (it takes ~1 s)
    from mcp import Client

log = structlog.get_logger("runtime.mcp")

PREFIX = "mcp__"
MAX_NAME = 64
"""Characters in a function name (OpenAI's limit, the strictest of the providers')."""
RETRY_AFTER = 30.0
"""Seconds a server that could not be listed is left alone before it is tried again."""
MAX_DESCRIPTION = 2000
"""Characters of a tool's description the model is shown."""
MAX_TOOLS_PER_SERVER = 100
"""Tools of one server offered; more are left out (with a warning)."""

_SERVER_NAME = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"command", "args", "env", "url", "headers", "agents", "approval", "user_rules"}
_TIMEOUTS = {"timeout": 30.0, "connect_timeout": 60.0}


@dataclass(frozen=True, slots=True)
class McpServer:
    """One configured server. ``env`` and ``headers`` may hold secrets: not in its repr."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    agents: frozenset[str] | None = None
    """The agents offered its tools; None: every agent."""
    approval: bool = True
    user_rules: bool = True
    timeout: float = 30.0
    connect_timeout: float = 60.0
    """Seconds to start (a stdio server may install itself first) or reach it and list its tools."""

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def serves(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents


def load_servers(path: str) -> tuple[McpServer, ...]:
    """Read the servers file at ``path`` ("" for none); raises ValueError
    saying which server and key is wrong (never quoting a secret)."""
    if not path:
        return ()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the MCP servers file {path}: {exc}") from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ValueError(f"{path}: expected a mapping `servers: {{NAME: {{…}}}}`")
    return tuple(_server(str(name), spec) for name, spec in servers.items())


def _server(name: str, spec: Any) -> McpServer:
    where = f"MCP server {name!r}"
    if not _SERVER_NAME.fullmatch(name) or len(name) > 32:
        raise ValueError(f"{where}: a name is letters, digits, - and single _, at most 32")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(spec) - _KEYS - set(_TIMEOUTS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    command, url = spec.get("command", ""), spec.get("url", "")
    if bool(command) == bool(url) or not isinstance(command or url, str):
        raise ValueError(f"{where}: set either command (stdio) or url (streamable HTTP)")
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: url must be http:// or https://")
    args = spec.get("args", [])
    agents = spec.get("agents")
    timeouts = {key: spec.get(key, default) for key, default in _TIMEOUTS.items()}
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{where}: args is a list of strings")
    if agents is not None and (
        not isinstance(agents, list) or not all(isinstance(a, str) for a in agents)
    ):
        raise ValueError(f"{where}: agents is a list of agent names")
    for key, value in timeouts.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{where}: {key} is a positive number of seconds")
    flags = {key: spec.get(key, True) for key in ("approval", "user_rules")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} is true or false")
    return McpServer(
        name=name,
        command=command,
        args=tuple(args),
        env=_secrets(where, "env", spec.get("env", {})),
        url=url,
        headers=_secrets(where, "headers", spec.get("headers", {})),
        agents=None if agents is None or "*" in agents else frozenset(agents),
        approval=flags["approval"],
        user_rules=flags["user_rules"],
        timeout=float(timeouts["timeout"]),
        connect_timeout=float(timeouts["connect_timeout"]),
    )


def _secrets(where: str, key: str, values: Any) -> dict[str, str]:
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        raise ValueError(f"{where}: {key} maps names to strings")

    def expand(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in os.environ:
            raise ValueError(f"{where}: {key} uses ${{{variable}}}, which is not set")
        return os.environ[variable]

    return {k: _VARIABLE.sub(expand, v) for k, v in values.items()}


def tool_name(server: str, tool: str) -> str:
    """The function name the model calls ``tool`` of ``server`` by."""
    name = f"{PREFIX}{server}__{_NAME_CHARS.sub('_', tool)}"
    if len(name) <= MAX_NAME and name == f"{PREFIX}{server}__{tool}":
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


@dataclass(slots=True)
class _Listed:
    tools: dict[str, tuple[str, Tool]] = field(default_factory=dict)
    """Offered name → (the server's name for it, its declaration)."""
    failed_at: float | None = None


class _Connection:
    """One server's client, held open by a task of its own (the SDK's
    transports must be closed by the task that opened them)."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Client] | None = None
        self._stop = asyncio.Event()

    async def client(self) -> Client:
        """The connected client, connecting first if need be; raises what connecting raises."""
        if self._task is None or self._task.done() or self._stop.is_set():
            self._stop = asyncio.Event()
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._hold(self._ready, self._stop))
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def _hold(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.server.command:
                    target: Any = StdioServerParameters(
                        command=self.server.command,
                        args=list(self.server.args),
                        env=dict(self.server.env) or None,
                    )
                else:
                    http = await stack.enter_async_context(
                        httpx2.AsyncClient(headers=dict(self.server.headers))
                    )
                    target = streamable_http_client(self.server.url, http_client=http)
                client = await stack.enter_async_context(Client(target))
                log.info("mcp_server_connected", server=self.server.name)
                ready.set_result(client)
                await stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(ConnectionError(_describe(exc, self.server)))
            log.warning(
                "mcp_server_lost", server=self.server.name, error=_describe(exc, self.server)
            )
        finally:
            # A failed call ends the connection too: the next one reconnects.
            stop.set()

    def reset(self) -> None:
        """Drop the connection (after a failure): the next call connects again."""
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(5):
                    await asyncio.wait([task])
            except TimeoutError:
                task.cancel()
                await asyncio.wait([task])


def _describe(exc: BaseException, server: McpServer) -> str:
    """An error as the model and the log are told it: its types, not its text
    (a transport's message may quote a header). An error the MCP protocol
    itself carries (the SDK's ``MCPError``: the server's JSON-RPC error, or
    the SDK's own, such as a request timing out) is told with its code and
    message, clipped, and with the server's secrets taken out."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e, server) for e in exc.exceptions[:3])
    if isinstance(exc, ConnectionError) and exc.args:
        return str(exc.args[0])
    exceptions = sys.modules.get("mcp.shared.exceptions")  # imported with the first server
    if exceptions is not None and isinstance(exc, exceptions.MCPError):
        message = " ".join(str(exc.message).split())
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + "…"
        return f"MCPError {exc.code}: {_without_secrets(message, server)}"
    return type(exc).__name__


MAX_ERROR_MESSAGE = 200
"""Characters of a protocol error's message the model and the log see."""


def _without_secrets(text: str, server: McpServer) -> str:
    """``text`` with every value of the server's ``env`` and ``headers`` (and
    each word of one, such as the token after ``Bearer``), and the password
    and query values of its URL (a key some servers take there), replaced."""
    secrets: set[str] = set()
    for value in (*server.env.values(), *server.headers.values()):
        secrets.add(value)
        secrets.update(word for word in value.split() if len(word) >= 8)
    if server.url:
        url = urlsplit(server.url)
        secrets.update(v for _, v in parse_qsl(url.query) if len(v) >= 8)
        if url.password:
            secrets.add(url.password)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text


class McpTools:
    """The :class:`~runtime.executors.Executor` of the configured servers' tools."""

    def __init__(self, servers: tuple[McpServer, ...]) -> None:
        self._servers = {server.name: server for server in servers}
        self._connections = {server.name: _Connection(server) for server in servers}
        self._listed: dict[str, _Listed] = {}
        self._locks = {server.name: asyncio.Lock() for server in servers}

    def runs(self, tool_name: str) -> bool:
        return self._server_of(tool_name) is not None

    def _server_of(self, name: str) -> McpServer | None:
        if not name.startswith(PREFIX):
            return None
        server, sep, _ = name[len(PREFIX) :].partition("__")
        return self._servers.get(server) if sep else None

    async def offer(self, agent: str) -> Offer:
        tools: list[Tool] = []
        approvable: set[str] = set()
        for server in self._servers.values():
            if not server.serves(agent):
                continue
            listed = await self._list(server)
            tools.extend(tool for _, tool in listed.tools.values())
            if server.user_rules:
                approvable.update(listed.tools)
        return Offer(tuple(tools), frozenset(approvable))

    async def _list(self, server: McpServer) -> _Listed:
        """The server's tools, listed once (again after a failure, at most every
        :data:`RETRY_AFTER` seconds)."""
        async with self._locks[server.name]:
            listed = self._listed.get(server.name)
            if listed is not None and (
                listed.failed_at is None or time.monotonic() - listed.failed_at < RETRY_AFTER
            ):
                return listed
            try:
                async with asyncio.timeout(server.connect_timeout):
                    listed = await self._fetch_twice(server)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connections[server.name].reset()
                log.warning("mcp_tools_unlisted", server=server.name, error=_describe(exc, server))
                listed = _Listed(failed_at=time.monotonic())
            self._listed[server.name] = listed
            return listed

    async def _fetch_twice(self, server: McpServer) -> _Listed:
        """:meth:`_fetch`, connecting once more if the first connection fails
        (a stdio server that died at its start, a dropped HTTP connection):
        one lost start would otherwise hide its tools for :data:`RETRY_AFTER`."""
        try:
            return await self._fetch(server)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connections[server.name].reset()
            log.warning("mcp_connect_retried", server=server.name, error=_describe(exc, server))
        return await self._fetch(server)

    async def _fetch(self, server: McpServer) -> _Listed:
        client = await self._connections[server.name].client()
        listed = _Listed()
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                declared = _declare(server, tool.name, tool.description or "", tool.input_schema)
                if declared is None or declared.name in listed.tools:
                    log.warning("mcp_tool_skipped", server=server.name, tool=tool.name[:100])
                elif len(listed.tools) >= MAX_TOOLS_PER_SERVER:
                    log.warning("mcp_tools_cut", server=server.name, kept=MAX_TOOLS_PER_SERVER)
                    return listed
                else:
                    listed.tools[declared.name] = (tool.name, declared)
            cursor = page.next_cursor
            if cursor is None:
                log.info("mcp_tools_listed", server=server.name, tools=len(listed.tools))
                return listed

    async def run(self, execution: Execution) -> dict[str, Any]:
        server = self._server_of(execution.tool_name)
        if server is None:
            return {"error": f"no MCP server runs {execution.tool_name}"}
        connection = self._connections[server.name]
        try:
            async with asyncio.timeout(server.connect_timeout):
                listed = self._listed.get(server.name)
                if listed is None or execution.tool_name not in listed.tools:
                    # A call approved before a restart: list the tools first.
                    listed = await self._fetch(server)
                    self._listed[server.name] = listed
                client = await connection.client()
        except TimeoutError:
            connection.reset()
            return {"error": f"the MCP server {server.name} could not be reached"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            connection.reset()
            log.warning("mcp_server_unreachable", server=server.name, error=_describe(exc, server))
            return {"error": f"the MCP server {server.name} failed: {_describe(exc, server)}"}
        entry = listed.tools.get(execution.tool_name)
        if entry is None:
            return {"error": f"the MCP server {server.name} has no such tool any more"}
        try:
            async with asyncio.timeout(server.timeout):
                result = await client.call_tool(entry[0], execution.arguments)
        except TimeoutError:
            connection.reset()
            return {"error": f"the MCP server {server.name} did not answer in {server.timeout:g}s"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            connection.reset()
            log.warning("mcp_call_failed", server=server.name, error=_describe(exc, server))
            return {"error": f"the MCP server {server.name} failed: {_describe(exc, server)}"}
        text = "\n".join(_block_text(block) for block in result.content)
        if result.is_error:
            return {"error": text or f"{execution.tool_name} failed"}
        answer: dict[str, Any] = {"content": text}
        if not text and result.structured_content is not None:
            answer["structured"] = result.structured_content
        return {"result": answer}

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.close()


def _declare(server: McpServer, name: str, description: str, schema: Any) -> Tool | None:
    """The declaration of a server's tool, or None when its input schema is unusable."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError:
        return None
    described = f"[MCP {server.name}] {description}".strip()[:MAX_DESCRIPTION]
    return Tool(
        tool_name(server.name, name),
        described,
        {"type": "object", **schema},
        Side.EXECUTOR,
        Effect.EXECUTE,
        approval=server.approval,
    )


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind == "resource":
        return str(getattr(block.resource, "text", f"[resource {block.resource.uri}]"))
    return f"[{kind or 'content'} {getattr(block, 'mime_type', '')}]".replace(" ]", "]")
