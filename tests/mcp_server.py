"""A tiny MCP server for the tests, on the official SDK's ``MCPServer`` (FastMCP).

``python -m tests.mcp_server`` serves it over stdio; ``python -m
tests.mcp_server http PORT`` over streamable HTTP on 127.0.0.1:PORT/mcp.
Each call of ``add`` appends a line to the file named by ``MCP_TEST_CALLS``
(when set), so a test can count the calls that really ran; ``token`` tells
what the HTTP client sent in ``Authorization`` (a header reaches the server).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("codelab-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    calls = os.environ.get("MCP_TEST_CALLS")
    if calls:
        with open(calls, "a", encoding="utf-8") as file:
            file.write(f"{a}+{b}\n")
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Repeat text in capitals, as many times as asked by the length of the text."""
    return text.upper()


@server.tool()
def big(characters: int) -> str:
    """Return that many characters."""
    return "x" * characters


@server.tool()
def broken() -> str:
    """Always fails."""
    raise ValueError("this tool always fails")


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after some seconds."""
    await asyncio.sleep(seconds)
    return "slept"


@server.tool(name="dotted.name/tool")
def dotted() -> str:
    """A tool whose name no model accepts as it is."""
    return "dotted"


@server.tool()
def token(ctx: Context) -> str:
    """The Authorization header of the HTTP request that called this."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return str(headers.get("authorization", "")) if headers is not None else ""


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
