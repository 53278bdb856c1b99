"""What a dozing session's history costs to doze and wake (run by scripts/bench-dozing).

One process per checkout, the runtime's own :class:`SessionHub` and
:class:`Conversation` on a SQLite file: a session with a history of
``--messages`` messages (tool turns of four: question, tool call, tool
answer, reply), its context window synced as after the last model call.
Then, ``--rounds`` times: the session dozes (``Conversation.rest(doze=True)``),
its next event wakes it (``history.hold()``), a message is added and the
next prompt is made (``ContextWindow.prompt``). Reported: the CPU of doze,
wake and prompt per message of the history (the median of the rounds).

``--baseline DIR`` measures another checkout (e.g. the commit before) the
same way, in a process of its own, alternating with this one ``--runs``
times, and prints the ratio this / baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from checkouts import measured_in  # noqa: E402


async def measure(messages: int, rounds: int) -> float:
    from mesh.database import create_engine
    from runtime.hub import SessionHub
    from runtime.llm import ChatMessage, ToolCallRequest
    from runtime.settings import ConversationSettings
    from runtime.store import Store, migrate

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/dozing.db"
        await migrate(url)
        engine = create_engine(url)
        hub = SessionHub(
            Store(engine),
            None,
            ConversationSettings(model="m"),
            default_agent="coder",
            replica="bench",
            lease_ttl=60,
        )
        try:
            conversation, _ = await hub.open("s", "bench")
            history = conversation.session.messages
            for turn in range(messages // 4):
                call = f"call_{turn:024d}"
                history += [
                    ChatMessage("user", f"please read file {turn} and say what it sets"),
                    ChatMessage(
                        "assistant", "", (ToolCallRequest(call, "read_file", '{"path": "a.py"}'),)
                    ),
                    ChatMessage("tool", '{"content": "x = 1\\ny = 2\\n"}', (), call, "read_file"),
                    ChatMessage("assistant", "The file sets x to 1 and y to 2; nothing else."),
                ]
            window = conversation.context.window
            window.prompt("system", history[:-1], "m", 0)  # the last call's prompt
            spent = []
            for number in range(rounds):
                size = len(history)
                cpu = time.process_time()
                conversation.rest(doze=True)
                async with conversation.history.hold():
                    history.append(ChatMessage("user", f"and now {number}"))
                    window.prompt("system", history, "m", 0)
                spent.append((time.process_time() - cpu) / size * 1e6)
                history.append(ChatMessage("assistant", "done"))
            return statistics.median(spent)
        finally:
            await hub.close()
            await engine.dispose()


def run_checkout(root: Path, args: argparse.Namespace) -> float:
    figures = measured_in(
        HERE, root, "--messages", str(args.messages), "--rounds", str(args.rounds)
    )
    return float(figures["us_per_message"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--runs", type=int, default=3, help="processes of each checkout, alternating"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        figure = uvloop.run(measure(args.messages, args.rounds))
        print(json.dumps({"us_per_message": round(figure, 3)}))
        return
    root = HERE.parents[2]
    runs: dict[str, list[float]] = {"this": [], "baseline": []}
    for _ in range(args.runs):
        if args.baseline:
            runs["baseline"].append(run_checkout(args.baseline.resolve(), args))
        runs["this"].append(run_checkout(root, args))
    print(
        f"doze, wake and next prompt, CPU per message ({args.messages} messages, "
        f"median of {args.rounds} rounds per process):"
    )
    for name, values in runs.items():
        if values:
            print(f"  {name}: {', '.join(f'{v:.2f}' for v in values)} µs")
    if runs["baseline"]:
        ratio = statistics.median(runs["this"]) / statistics.median(runs["baseline"])
        print(f"  this / baseline: {ratio:.2f}")


if __name__ == "__main__":
    main()
