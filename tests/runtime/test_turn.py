"""The turn core without a database or gRPC: a fake ChatModel answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from datetime import date

import pytest

from runtime import routing
from runtime.agent_files import merge
from runtime.agents import BUILT_IN
from runtime.commands import Environment
from runtime.context import CHARS_PER_TOKEN_ESTIMATE
from runtime.errors import UpstreamError
from runtime.events import Usage
from runtime.llm import (
    ChatMessage,
    Chunk,
    StreamEnd,
    TextChunk,
    ToolCallChunk,
    ToolCallRequest,
    ToolSpec,
)
from runtime.prompts import system_prompt
from runtime.turn import (
    MAX_ERROR_CHARS,
    MAX_MODEL_CALLS_PER_TURN,
    MAX_SWITCHES_PER_TURN,
    Turn,
    request_reply,
)

TODAY = date(2026, 11, 29)


class FakeModel:
    """A ChatModel that answers with ``chunks`` and records what it was asked."""

    def __init__(self, *chunks: Chunk, window: int = 0, fail: UpstreamError | None = None) -> None:
        self.chunks = chunks
        self.window = window
        self.fail = fail
        self.asked: list[tuple[str, list[ChatMessage], list[str]]] = []
        self.closed = asyncio.Event()

    async def context_window(self, model: str) -> int:
        return self.window

    async def stream_chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        self.asked.append((model, list(messages), [tool.name for tool in tools]))
        try:
            for chunk in self.chunks:
                yield chunk
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed.set()


async def test_a_reply_gathers_text_tool_calls_and_usage() -> None:
    model = FakeModel(
        TextChunk("Let me "),
        TextChunk(""),
        TextChunk("look."),
        ToolCallChunk(1, "p-2", "list_files", '{"path"'),
        ToolCallChunk(0, "p-1", "read_file", '{"path": '),
        ToolCallChunk(1, "", "", ': "."}'),
        ToolCallChunk(0, "", "", '"a.py"}'),
        StreamEnd("tool_calls", Usage(7, 3), "fake"),
    )
    seen: list[str] = []

    async def on_text(text: str) -> None:
        seen.append(text)

    history = [ChatMessage("user", "what is in a.py?")]
    reply = await request_reply(model, "m", BUILT_IN["ask"], history, on_text=on_text, today=TODAY)
    assert seen == ["Let me ", "look."], "each non-empty delta as it came"
    assert reply.text == "Let me look."
    assert [(c.name, c.arguments_json) for c in reply.calls] == [
        ("read_file", '{"path": "a.py"}'),
        ("list_files", '{"path": "."}'),
    ], "calls by index, put together from their fragments"
    assert all(c.call_id.startswith("call_") for c in reply.calls), "named by the runtime"
    assert len({c.call_id for c in reply.calls}) == 2
    assert reply.usage == Usage(7, 3)
    ((name, messages, tools),) = model.asked
    assert name == "m"
    system = system_prompt(BUILT_IN["ask"], None, None, TODAY)
    assert messages == [ChatMessage("system", system), *history]
    assert "Operating system: not reported" in system
    assert tools == sorted(BUILT_IN["ask"].tools), "the agent's tools only"


async def test_history_is_cut_to_the_models_window_never_splitting_a_call() -> None:
    call = ToolCallRequest("c1", "read_file", '{"path": "a.py"}')
    history = [
        ChatMessage("user", "x" * 400),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "y" * 40, tool_call_id="c1", name="read_file"),
        ChatMessage("user", "and now?"),
    ]
    model = FakeModel(TextChunk("ok"))

    async def ignore(text: str) -> None:
        pass

    agent = BUILT_IN["coder"]
    system = system_prompt(agent, None, None, TODAY)
    # Room (a quarter kept for the answer) for the system prompt and ~30
    # tokens, by the estimate used before the proxy has counted anything.
    model.window = round((len(system) // CHARS_PER_TOKEN_ESTIMATE + 30) * 4 / 3)
    await request_reply(model, "m", agent, history, on_text=ignore, today=TODAY)
    sent = model.asked[0][1]
    assert sent[0].role == "system"
    assert sent[-1] == history[-1]
    assert history[0] not in sent, "the oldest message did not fit"
    tool_ids = {m.tool_call_id for m in sent if m.role == "tool"}
    call_ids = {c.call_id for m in sent for c in m.tool_calls}
    assert tool_ids == call_ids == {"c1"}, "a call and its result go together"


async def test_the_system_prompt_tells_the_model_the_sessions_environment() -> None:
    model = FakeModel(TextChunk("ok"))

    async def ignore(text: str) -> None:
        pass

    environment = Environment("Darwin 23.4.0", "/bin/zsh", "/Users/ada/shop")
    view = "src/\n  cart.py\nREADME.md"
    await request_reply(
        model,
        "m",
        BUILT_IN["coder"],
        [ChatMessage("user", "hi")],
        on_text=ignore,
        environment=environment,
        workspace_view=view,
        today=TODAY,
    )
    system = model.asked[0][1][0]
    assert system.role == "system"
    assert system.content.startswith(BUILT_IN["coder"].role)
    for line in (
        "Operating system: Darwin 23.4.0",
        "Shell: /bin/zsh",
        "Workspace root: /Users/ada/shop",
        "Date: 2026-11-29 (UTC)",
        view,
    ):
        assert line in system.content


async def test_a_failing_model_fails_the_request_and_is_closed() -> None:
    failure = UpstreamError("proxy down", code="llm_unavailable", retryable=True)
    model = FakeModel(TextChunk("par"), fail=failure)
    seen: list[str] = []

    async def on_text(text: str) -> None:
        seen.append(text)

    with pytest.raises(UpstreamError) as raised:
        await request_reply(model, "m", BUILT_IN["coder"], [], on_text=on_text)
    assert raised.value is failure
    assert seen == ["par"]
    assert model.closed.is_set()


def test_a_turn_counts_its_limits_and_usage() -> None:
    turn = Turn(request_id="r-1")
    assert [turn.take_model_call() for _ in range(MAX_MODEL_CALLS_PER_TURN + 1)][-2:] == [
        True,
        False,
    ]
    assert turn.model_calls == MAX_MODEL_CALLS_PER_TURN
    assert [turn.take_switch() for _ in range(MAX_SWITCHES_PER_TURN + 1)].count(True) == (
        MAX_SWITCHES_PER_TURN
    )
    turn.add_usage(Usage(2, 1))
    turn.add_usage(Usage(3, 4))
    assert turn.usage == Usage(5, 5)


def test_a_turn_counts_failed_calls_in_a_row_and_says_what_kept_failing() -> None:
    turn = Turn()
    turn.note_outcome("read_file", {"error": "no such file"})
    turn.note_outcome("read_file", {"error": "no such file"})
    assert turn.mistakes == 2
    turn.note_outcome("list_files", {"result": {"files": []}})
    assert turn.mistakes == 0, "a success resets the count"
    turn.note_outcome("apply_diff", {"error": "search text\nnot found " + "x" * 1000})
    message = turn.stuck_message()
    assert "after 1 failed tool call in a row" in message
    assert "apply_diff" in message
    assert "search text not found" in message, "on one line"
    assert "x" * (MAX_ERROR_CHARS + 1) not in message, "shortened"
    assert message.endswith("How would you like me to proceed?")


async def test_routing_takes_the_models_answer_or_falls_back_to_keywords() -> None:
    answer = '{"agent": "debug", "confidence": 0.8, "rationale": "a failure"}'
    route = await routing.classify(FakeModel(TextChunk(answer)), "m", "it crashes")
    assert (route.agent, route.confidence, route.by_model) == ("debug", 0.8, True)
    down = FakeModel(fail=UpstreamError("down", code="llm_unavailable", retryable=True))
    route = await routing.classify(down, "m", "please refactor this function")
    assert (route.agent, route.by_model) == ("coder", False)


async def test_routing_offers_and_picks_a_sessions_own_agents() -> None:
    roster = merge(
        BUILT_IN,
        "agents:\n  - {name: sql, description: Writes SQL., prompt: p, keywords: [sql, query]}\n",
        "agents.yaml",
    )
    answer = '{"agent": "sql", "confidence": 0.9, "rationale": "SQL"}'
    model = FakeModel(TextChunk(answer))
    route = await routing.classify(model, "m", "a query", roster=roster)
    assert (route.agent, route.by_model) == ("sql", True)
    assert "- sql: Writes SQL." in model.asked[0][1][0].content
    assert routing.parse_classification(answer) is None, "unknown to the built-ins"
    unusable = FakeModel(TextChunk("no idea"))
    route = await routing.classify(unusable, "m", "tune this SQL query", roster=roster)
    assert (route.agent, route.by_model) == ("sql", False)
