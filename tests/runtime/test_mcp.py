"""MCP servers' tools against a real MCP server (tests/mcp_server.py, the
official SDK's MCPServer): over stdio and over streamable HTTP on loopback;
the operator's file, the tools' names, results, failures and bounds."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runtime import mcp
from runtime.executors import MAX_RESULT_CHARS, Execution, Executors
from runtime.mcp import McpServer, McpTools, load_servers, tool_name
from runtime.rules import MCP_TOOL
from runtime.tools import Side, validate_arguments
from tests.conftest import free_port
from tests.support import Service

ROOT = Path(__file__).resolve().parents[2]


def stdio_server(name: str = "demo", **options: object) -> McpServer:
    return McpServer(name, command=sys.executable, args=("-m", "tests.mcp_server"), **options)  # type: ignore[arg-type]


def execution(tool: str, **arguments: object) -> Execution:
    return Execution("call-1", tool, dict(arguments), "s-1", "alice", "coder")


# -- the operator's file ------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "mcp.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_file_lists_stdio_and_http_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKER_TOKEN", "s3cret-token")
    path = write(
        tmp_path,
        """
servers:
  docs:
    command: uvx
    args: [mcp-server-fetch]
    env: {API_KEY: "k-${TRACKER_TOKEN}"}
    agents: [ask, coder]
    approval: false
    timeout: 5
    connect_timeout: 90
  tracker:
    url: https://mcp.example.com/mcp
    headers: {Authorization: "Bearer ${TRACKER_TOKEN}"}
    user_rules: false
""",
    )
    docs, tracker = load_servers(path)
    assert (docs.transport, docs.command, docs.args, docs.timeout, docs.connect_timeout) == (
        "stdio",
        "uvx",
        ("mcp-server-fetch",),
        5.0,
        90.0,
    )
    assert (tracker.timeout, tracker.connect_timeout) == (30.0, 60.0)
    assert docs.env == {"API_KEY": "k-s3cret-token"}
    assert (docs.serves("ask"), docs.serves("debug"), docs.approval) == (True, False, False)
    assert (tracker.transport, tracker.url, tracker.approval, tracker.user_rules) == (
        "http",
        "https://mcp.example.com/mcp",
        True,
        False,
    )
    assert tracker.headers == {"Authorization": "Bearer s3cret-token"}
    assert tracker.serves("debug"), "no agents: every agent"
    assert "s3cret" not in repr((docs, tracker)), "secrets stay out of logs and tracebacks"
    same = load_servers(write(tmp_path, json.dumps({"servers": {"a": {"url": "http://x/"}}}), "j"))
    assert [s.name for s in same] == ["a"], "JSON is YAML too"
    assert load_servers("") == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("servers: []", "expected a mapping `servers:"),
        ("servers: {a__b: {url: 'http://x'}}", "'a__b': a name is letters"),
        ("servers: {a: {url: 'http://x', command: x}}", "set either command"),
        ("servers: {a: {}}", "set either command"),
        ("servers: {a: {url: 'ftp://x'}}", "url must be http"),
        ("servers: {a: {command: x, agent: [ask]}}", "unknown keys ['agent']"),
        ("servers: {a: {command: x, timeout: 0}}", "timeout is a positive number"),
        ("servers: {a: {command: x, connect_timeout: true}}", "connect_timeout is a positive"),
        ("servers: {a: {command: x, approval: 'no'}}", "approval is true or false"),
        ("servers: {a: {command: x, env: {K: '${NOT_SET_ANYWHERE}'}}}", "${NOT_SET_ANYWHERE}"),
        ("servers: {a: {command: x, args: 'a b'}}", "args is a list of strings"),
        ("servers: [", "cannot read"),
    ],
)
def test_a_bad_file_is_refused_saying_where(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_servers(write(tmp_path, text))


def test_the_runtime_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    from mesh.config import ConfigError, load
    from runtime.__main__ import RuntimeConfig

    path = write(tmp_path, "servers: {a: {}}")
    with pytest.raises(ConfigError, match="AGENT_RUNTIME__MCP_SERVERS"):
        load(
            RuntimeConfig,
            {"AGENT_RUNTIME__MCP_SERVERS": path, "AGENT_RUNTIME__INTERNAL_API_KEY": "k"},
        )


# -- names --------------------------------------------------------------------


def test_names_are_namespaced_and_fit_every_model() -> None:
    assert tool_name("demo", "add") == "mcp__demo__add"
    dotted = tool_name("demo", "dotted.name/tool")
    assert dotted.startswith("mcp__demo__dotted_name_tool_")
    long = tool_name("a-server", "t" * 100)
    assert len(long) == mcp.MAX_NAME
    assert long != tool_name("a-server", "t" * 99), "a cut name keeps a hash of the whole"
    for name in ("mcp__demo__add", dotted, long):
        assert MCP_TOOL.fullmatch(name), "a user's rule can name it"


# -- a real server --------------------------------------------------------------


@pytest.fixture
async def stdio_tools() -> AsyncIterator[Executors]:
    executors = Executors([McpTools((stdio_server(timeout=30, connect_timeout=120),))])
    yield executors
    await executors.close()


@pytest.mark.timeout(120)
async def test_a_stdio_servers_tools_are_offered_and_run(
    stdio_tools: Executors, tmp_path: Path
) -> None:
    await stdio_tools.prepare("coder")
    offered = stdio_tools.offered("coder")
    assert {"mcp__demo__add", "mcp__demo__broken", "mcp__demo__big"} <= offered
    add = stdio_tools.tools["mcp__demo__add"]
    assert (add.side, add.approval) == (Side.EXECUTOR, True)
    assert add.description == "[MCP demo] Add two integers."
    assert validate_arguments(add, {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="a: '1' is not of type 'integer'"):
        validate_arguments(add, {"a": "1", "b": 2})
    assert stdio_tools.rule_approvable >= offered

    assert await stdio_tools.run(execution("mcp__demo__add", a=2, b=3)) == (
        {"result": {"content": "5"}},
        "completed",
    )
    dotted = next(name for name in offered if "dotted" in name)
    assert await stdio_tools.run(execution(dotted)) == (
        {"result": {"content": "dotted"}},
        "completed",
    )
    payload, status = await stdio_tools.run(execution("mcp__demo__broken"))
    assert status == "failed"
    assert "broken" in payload["error"]

    payload, status = await stdio_tools.run(execution("mcp__demo__big", characters=300_000))
    assert status == "completed"
    assert len(json.dumps(payload)) < MAX_RESULT_CHARS + 500
    assert "was cut to" in payload["truncated"]

    # The connection is kept: the same server process answers again.
    assert (await stdio_tools.run(execution("mcp__demo__add", a=1, b=1)))[1] == "completed"


@pytest.mark.timeout(120)
async def test_a_call_that_takes_too_long_is_a_tool_error_and_the_server_is_used_again() -> None:
    executors = Executors([McpTools((stdio_server(timeout=8, connect_timeout=120),))])
    try:
        await executors.prepare("coder")
        payload, status = await executors.run(execution("mcp__demo__slow", seconds=60))
        assert (payload, status) == (
            {"error": "the MCP server demo did not answer in 8s"},
            "failed",
        )
        again = await executors.run(execution("mcp__demo__add", a=2, b=2))
        assert again == ({"result": {"content": "4"}}, "completed"), "it reconnected"
    finally:
        await executors.close()


@pytest.mark.timeout(120)
async def test_a_server_whose_first_start_dies_is_started_again_at_once(tmp_path: Path) -> None:
    """A stdio server that exits at its first start (the marker file says it
    happened) is connected on a second start within the same listing."""
    marker = tmp_path / "first-start"
    script = (
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; exit 1; fi; '
        f'exec "{sys.executable}" -m tests.mcp_server'
    )
    flaky = McpServer("flaky", command="/bin/sh", args=("-c", script), connect_timeout=120)
    executors = Executors([McpTools((flaky,))])
    try:
        await executors.prepare("coder")
        assert marker.exists(), "the first start ran and exited"
        assert "mcp__flaky__add" in executors.offered("coder")
        assert await executors.run(execution("mcp__flaky__add", a=2, b=5)) == (
            {"result": {"content": "7"}},
            "completed",
        )
    finally:
        await executors.close()


async def test_a_server_that_cannot_start_offers_nothing_and_its_calls_fail() -> None:
    down = McpServer("down", command=str(ROOT / "no-such-mcp-server"), connect_timeout=30)
    executors = Executors([McpTools((down,))])
    try:
        await executors.prepare("coder")
        assert executors.offered("coder") == frozenset()
        assert executors.executor_for("mcp__down__anything") is not None
        payload, status = await executors.run(execution("mcp__down__anything"))
        assert status == "failed"
        assert payload["error"].startswith("the MCP server down failed: ")
        assert (await executors.run(execution("mcp__other__x")))[1] == "failed"
    finally:
        await executors.close()


def test_a_server_serves_only_its_agents() -> None:
    only_ask = stdio_server(agents=frozenset({"ask"}))
    tools = McpTools((only_ask,))
    assert asyncio.run(tools.offer("coder")).tools == ()


@pytest.fixture
def http_server() -> Iterator[str]:
    """The test server over streamable HTTP, on a loopback port."""
    port = free_port()
    server = Service(
        [sys.executable, "-m", "tests.mcp_server", "http", str(port)],
        cwd=ROOT,
        ready="Uvicorn running on",
        start_timeout=60,
    )
    server.start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_a_streamable_http_server_gets_its_headers(http_server: str) -> None:
    server = McpServer(
        "web", url=http_server, headers={"Authorization": "Bearer t0k"}, connect_timeout=120
    )
    executors = Executors([McpTools((server,))])
    try:
        await executors.prepare("ask")
        assert "mcp__web__token" in executors.offered("ask")
        assert await executors.run(execution("mcp__web__token")) == (
            {"result": {"content": "Bearer t0k"}},
            "completed",
        )
        assert await executors.run(execution("mcp__web__add", a=20, b=22)) == (
            {"result": {"content": "42"}},
            "completed",
        )
    finally:
        await executors.close()


def test_a_protocol_error_is_told_with_its_code_and_message_without_secrets() -> None:
    """The SDK's MCPError (the server's JSON-RPC error, or the SDK's own) says
    what went wrong; the server's secrets never reach the model or the log."""
    from mcp.shared.exceptions import MCPError

    server = McpServer(
        "tracker",
        url="http://user:pw-98765432@127.0.0.1:1/mcp?api_key=qk-55556666&v=2",
        env={"TRACKER_TOKEN": "tok-0123456789"},
        headers={"Authorization": "Bearer sk-abcdefgh1234"},
    )
    error = MCPError(-32603, "key sk-abcdefgh1234 refused;\n  token tok-0123456789 expired")
    assert mcp._describe(error, server) == (
        "MCPError -32603: key [secret] refused; token [secret] expired"
    )
    # The SDK puts a transport error's text in an MCPError: it may quote the URL.
    quoted = MCPError(-32603, "401 for url 'http://user:pw-98765432@h/mcp?api_key=qk-55556666&v=2'")
    assert mcp._describe(quoted, server) == (
        "MCPError -32603: 401 for url 'http://user:[secret]@h/mcp?api_key=[secret]&v=2'"
    )
    long = mcp._describe(MCPError(-32000, "x" * 1000), server)
    assert long == f"MCPError -32000: {'x' * mcp.MAX_ERROR_MESSAGE}…"
    # Anything else is told by its type alone, as before.
    assert mcp._describe(ValueError("Authorization: Bearer sk-abcdefgh1234"), server) == (
        "ValueError"
    )
    group = BaseExceptionGroup("two", [MCPError(-1, "closed"), OSError("x")])
    assert mcp._describe(group, server) == "MCPError -1: closed; OSError"
