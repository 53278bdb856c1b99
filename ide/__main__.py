"""A terminal IDE stand-in: ``scripts/chat`` or ``codelab-chat``.

    scripts/chat "explain this repository"      # one message, then exit
    scripts/chat                                # interactive: one line, one turn

The token is read from ``--token``, ``$CODELAB_TOKEN`` or ``.codelab/token``
(written by ``scripts/up``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from pathlib import Path

from ide.connection import IdeConnection


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


async def turn(connection: IdeConnection, text: str) -> None:
    await connection.send_message(text)
    while True:
        frame = await connection.next_frame()
        kind = frame.get("type")
        if kind == "assistant_message":
            if frame.get("is_final"):
                print(flush=True)
                return
            print(frame.get("content", ""), end="", flush=True)
        elif kind == "error":
            print(f"\n[error {frame.get('code')}] {frame.get('content')}", file=sys.stderr)
        elif kind == "session_info":
            continue
        else:
            print(f"\n[{kind}] {frame}", flush=True)


async def run(args: argparse.Namespace) -> None:
    token = read_token(args.token)
    async with IdeConnection(args.url, args.session, token) as connection:
        print(f"session {args.session}", file=sys.stderr)
        if args.message:
            await turn(connection, " ".join(args.message))
            return
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if line.strip():
                await turn(connection, line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(prog="codelab-chat", description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="*", help="send this and exit (default: interactive)")
    parser.add_argument("--url", default=os.environ.get("CODELAB_URL", "ws://127.0.0.1:8000"))
    parser.add_argument("--session", default=f"chat-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--token", default=None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
