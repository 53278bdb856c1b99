"""A terminal IDE stand-in: ``scripts/chat`` or ``codelab-chat``.

    scripts/chat "read README.md"                # one message, then exit
    scripts/chat --workspace ~/project           # interactive: one line, one turn
    scripts/chat --session chat-1234 "go on"     # continue an existing session

Tool calls run inside ``--workspace`` (default: the current directory) and
never outside it; calls that need approval are asked about (y/n/e) unless
``--yes``. Lines starting with ``/`` are commands: ``/switch AGENT [message]``,
``/cancel`` is Ctrl-C during a turn, ``/quit``.

The token is read from ``--token``, ``$CODELAB_TOKEN`` or ``.codelab/token``
(written by ``scripts/up``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession, approve_all
from ide.workspace import Workspace


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


def show(frame: dict[str, Any]) -> None:
    """Print one frame for a human."""
    kind = frame.get("type")
    if kind == "assistant_message":
        if frame.get("is_final"):
            status = (frame.get("metadata") or {}).get("status", "")
            print("" if status == "completed" else f"\n[turn {status}]", flush=True)
        else:
            print(frame.get("content", ""), end="", flush=True)
    elif kind == "agent_switched":
        print(
            f"\n[agent] {frame['from_agent']} -> {frame['to_agent']}: {frame.get('reason', '')}"
            f" (confidence {frame.get('confidence', 1):.2f})",
            flush=True,
        )
    elif kind == "tool_call":
        arguments = json.dumps(frame.get("arguments"), ensure_ascii=False)
        if len(arguments) > 200:
            arguments = arguments[:200] + "…"
        state = "needs approval" if frame.get("requires_approval") else "running"
        print(f"\n[tool {state}] {frame['tool_name']} {arguments}", flush=True)
    elif kind == "plan_update":
        print(f"\n[plan {frame['plan_id']}]", flush=True)
        for step in frame.get("steps", []):
            print(f"  {step['id']}. [{step['status']}] {step['desc']}", flush=True)
    elif kind == "plan_progress":
        print(f"\n[plan {frame['plan_id']}] step {frame['step_id']} {frame['status']}", flush=True)
    elif kind == "error":
        print(f"\n[error {frame.get('code')}] {frame.get('content')}", file=sys.stderr, flush=True)


async def ask(prompt: str) -> str:
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, input, prompt)
    return answer.strip()


async def ask_human(frame: dict[str, Any]) -> Decision:
    while True:
        prompt = f"Allow {frame['tool_name']}? [y]es / [a]lways / [n]o / [e]dit: "
        answer = (await ask(prompt)).lower()
        if answer in ("y", "yes"):
            return Decision("approve")
        if answer in ("a", "always"):
            return Decision("approve", always_allow=True)
        if answer in ("n", "no"):
            return Decision("reject", feedback=await ask("Why (optional)? "))
        if answer in ("e", "edit"):
            current = json.dumps(frame.get("arguments"), ensure_ascii=False)
            print(f"current arguments: {current}")
            try:
                edited = json.loads(await ask("New arguments as JSON: "))
            except json.JSONDecodeError as exc:
                print(f"not JSON: {exc}")
                continue
            return Decision("edit", modified_arguments=edited)


async def ask_plan(frame: dict[str, Any]) -> Decision:
    answer = (await ask("Approve this plan? [y]es / [n]o: ")).lower()
    if answer in ("y", "yes"):
        return Decision("approve")
    return Decision("reject", feedback=await ask("Why (optional)? "))


async def run_line(session: IdeSession, line: str) -> bool:
    """Run one input line; False to quit."""
    if line in ("/quit", "/exit"):
        return False
    if line.startswith("/switch "):
        _, agent, *rest = line.split(" ", 2)
        await session.switch(agent, rest[0] if rest else "", "switched from the terminal")
        return True
    turn = asyncio.ensure_future(session.say(line))
    try:
        await asyncio.shield(turn)
    except asyncio.CancelledError:
        await session.connection.send({"type": "cancel"})
        await turn
        raise
    return True


async def run(args: argparse.Namespace) -> None:
    token = read_token(args.token)
    workspace = Workspace(Path(args.workspace))
    async with IdeConnection(args.url, args.session, token) as connection:
        info = await connection.next_frame()
        agent = (info.get("metadata") or {}).get("agent", "?")
        print(f"session {args.session} (agent {agent}) in {workspace.root}", file=sys.stderr)
        session = IdeSession(
            connection,
            workspace,
            approve=approve_all if args.yes else ask_human,
            approve_plan=approve_all if args.yes else ask_plan,
            observe=show,
        )
        if args.message:
            await run_line(session, " ".join(args.message))
            return
        while True:
            try:
                line = await ask("> ")
            except EOFError:
                return
            if line and not await run_line(session, line):
                return


def main() -> None:
    parser = argparse.ArgumentParser(prog="codelab-chat", description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="*", help="send this and exit (default: interactive)")
    parser.add_argument("--url", default=os.environ.get("CODELAB_URL", "ws://127.0.0.1:8000"))
    parser.add_argument("--session", default=f"chat-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--workspace", default=".", help="folder the agent's tools work in")
    parser.add_argument("--token", default=None)
    parser.add_argument("--yes", action="store_true", help="approve every tool call and plan")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
