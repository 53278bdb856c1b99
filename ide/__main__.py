"""A terminal IDE stand-in: ``scripts/chat`` or ``codelab-chat``.

    scripts/chat "read README.md"                # one message, then exit
    scripts/chat --workspace ~/project           # interactive: one line, one turn
    scripts/chat --session chat-1234 "go on"     # continue an existing session

Tool calls run inside ``--workspace`` (default: the current directory) and
never outside it; calls that need approval are shown (tool, reason, the diff
of what they change) and asked about unless ``--yes``. Lines starting with
``/`` are commands (``/help``); Ctrl-C cancels the running turn.

The token is read from ``--token``, ``$CODELAB_TOKEN`` or ``.codelab/token``
(written by ``scripts/up``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ide.connection import IdeConnection
from ide.console import Console, read_line
from ide.diffs import wants_color
from ide.rest import (
    RestClient,
    RestError,
    format_branches,
    format_checkpoints,
    format_rules,
    rest_base,
)
from ide.turns import IdeSession, Turn, approve_all
from ide.workspace import Workspace

HELP = """\
/switch AGENT [message]  switch agents (and send the message as the new agent)
/undo [TURN_ID]          restore the files of the last turn that changed any (or of TURN_ID)
/condense                summarize the older turns now (the context meter follows each answer)
/checkpoints             the turns of this session that changed files, with their ids
/retry [keep]            run your last message again (keep: even over changes not undone)
/edit N TEXT             replace your message N (its position, from 0) and run from it
/fork [N]                copy this session (through message N) into a new session
/branches                the messages retries and edits replaced
/rules                   your approval rules ([a]lways at a prompt adds one)
/help                    this list
/quit                    leave (Ctrl-C cancels a running turn; Ctrl-D leaves too)
At an approval: [y]es, [a]lways (approve and add a rule for this kind of call),
[n]o, [e]dit the arguments, [d]iff in full when it was cut to the terminal."""

_COMMAND = re.compile(r"/[a-z]+")


def read_token(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("CODELAB_TOKEN"):
        return os.environ["CODELAB_TOKEN"]
    home = Path(os.environ.get("CODELAB_HOME", ".codelab"))
    try:
        return (home / "token").read_text().strip()
    except FileNotFoundError:
        raise SystemExit(
            f"no token: pass --token, set CODELAB_TOKEN or run scripts/up ({home})"
        ) from None


@dataclass(slots=True)
class Chat:
    """One session at the terminal: runs input lines as turns or commands."""

    session: IdeSession
    rest: RestClient

    async def run_line(self, line: str) -> bool:
        """Run one input line; False to quit."""
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if command in ("/quit", "/exit"):
            return False
        if command == "/help":
            print(HELP)
        elif command == "/switch":
            agent, _, message = rest.partition(" ")
            if not agent:
                print("/switch AGENT [message]: which agent?", file=sys.stderr)
                return True
            await self._turn(self.session.switch(agent, message, "switched from the terminal"))
        elif command == "/undo":
            await self._turn(self.session.undo(rest or None))
        elif command == "/retry":
            await self._turn(self.session.retry(keep_changes=rest == "keep"))
        elif command == "/edit":
            index, _, text = rest.partition(" ")
            if not index.isdigit() or not text.strip():
                print(
                    "/edit N TEXT: which message (a position), and its new text?", file=sys.stderr
                )
                return True
            await self._turn(self.session.edit(int(index), text.strip()))
        elif command == "/fork":
            if rest and not rest.isdigit():
                print("/fork [N]: N is a message's position", file=sys.stderr)
                return True
            await self.session.fork(int(rest) if rest else None)
        elif command == "/branches":
            session_id = self.session.connection.session_id
            await self._view(self.rest.branches(session_id), format_branches)
        elif command == "/condense":
            await self.session.condense()
        elif command == "/checkpoints":
            session_id = self.session.connection.session_id
            await self._view(self.rest.checkpoints(session_id), format_checkpoints)
        elif command == "/rules":
            await self._view(self.rest.approval_rules(), format_rules)
        elif _COMMAND.fullmatch(command):
            print(f"unknown command {command}; /help lists them", file=sys.stderr)
        else:
            await self._turn(self.session.say(line))
        return True

    async def _turn(self, running: Awaitable[Turn]) -> None:
        """Wait for a turn; Ctrl-C sends ``cancel`` and waits for its end."""
        turn = asyncio.ensure_future(running)
        try:
            await asyncio.shield(turn)
        except asyncio.CancelledError:
            await self.session.connection.send({"type": "cancel"})
            await turn
            raise

    async def _view(self, getting: Awaitable[Any], render: Callable[[Any], str]) -> None:
        """Print a REST view; its failure is a line on stderr, the chat goes on."""
        try:
            body = await getting
        except RestError as exc:
            print(f"[rest] {exc}", file=sys.stderr, flush=True)
            return
        print(render(body), flush=True)


async def run(args: argparse.Namespace) -> None:
    token = read_token(args.token)
    workspace = Workspace(Path(args.workspace))
    console = Console(
        color=wants_color(sys.stdout, os.environ),
        max_lines=max(20, shutil.get_terminal_size().lines - 10),
    )
    async with IdeConnection(args.url, args.session, token) as connection:
        await connection.report_environment(workspace.root)
        info = await connection.next_frame()
        agent = (info.get("metadata") or {}).get("agent", "?")
        print(f"session {args.session} (agent {agent}) in {workspace.root}", file=sys.stderr)
        session = IdeSession(
            connection,
            workspace,
            approve=approve_all if args.yes else console.approve_call,
            approve_plan=approve_all if args.yes else console.approve_plan,
            observe=console.show,
        )
        chat = Chat(session, RestClient(rest_base(args.url), token))
        if args.message:
            await chat.run_line(" ".join(args.message))
            return
        print("/help lists the commands", file=sys.stderr)
        while True:
            try:
                line = await read_line("> ")
            except EOFError:
                return
            if line and not await chat.run_line(line):
                return


def main() -> None:
    parser = argparse.ArgumentParser(prog="codelab-chat", description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="*", help="send this and exit (default: interactive)")
    parser.add_argument(
        "--url",
        default=os.environ.get("CODELAB_URL", "ws://127.0.0.1:8000"),
        help="the gateway's WebSocket base; its REST views are read at the same address",
    )
    parser.add_argument("--session", default=f"chat-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--workspace", default=".", help="folder the agent's tools work in")
    parser.add_argument("--token", default=None)
    parser.add_argument("--yes", action="store_true", help="approve every tool call and plan")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
