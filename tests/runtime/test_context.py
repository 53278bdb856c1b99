"""A session's context window, kept incrementally: no database, no gRPC."""

from __future__ import annotations

from llmproxy.v1 import llmproxy_pb2
from runtime.context import ContextWindow
from runtime.llm import ChatMessage, ToolCallRequest

CALL = ToolCallRequest("c1", "read_file", '{"path": "a.py"}')


def turns(count: int, start: int = 0) -> list[ChatMessage]:
    history = []
    for index in range(start, start + count):
        history += [ChatMessage("user", f"question {index}"), ChatMessage("assistant", "answer")]
    return history


def test_what_is_sent_decodes_as_the_messages_with_their_counts() -> None:
    context = ContextWindow()
    history = [
        ChatMessage("user", "read a.py"),
        ChatMessage("assistant", "", (CALL,)),
        ChatMessage("tool", "print(1)", tool_call_id="c1", name="read_file"),
    ]
    prompt = context.prompt("be brief", history, "m", 0)
    request = llmproxy_pb2.StreamChatRequest.FromString(prompt.encoded)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "be brief"),
        ("user", "read a.py"),
        ("assistant", ""),
        ("tool", "print(1)"),
    ]
    assert request.messages[2].tool_calls[0].arguments_json == CALL.arguments_json
    assert list(request.token_counts) == [0, 0, 0, 0], "nothing counted yet"

    context.learn(prompt, [5, 6, 7, 8])
    history.append(ChatMessage("assistant", "done"))
    again = context.prompt("be brief", history, "m", 0)
    request = llmproxy_pb2.StreamChatRequest.FromString(again.encoded)
    assert list(request.token_counts) == [5, 6, 7, 8, 0], "only the new message is counted"
    assert context.usage.tokens > 5 + 6 + 7 + 8

    # Counts are sent as four-byte varints, replaced in place: any size reads back.
    context.learn(again, [2**21 + 3])
    history.append(ChatMessage("user", "and b.py?"))
    third = context.prompt("be brief", history, "m", 0)
    request = llmproxy_pb2.StreamChatRequest.FromString(third.encoded)
    assert list(request.token_counts) == [5, 6, 7, 8, 2**21 + 3, 0]
    assert len(request.messages) == 6


def test_the_oldest_turns_go_first_by_the_counts_the_proxy_made() -> None:
    context = ContextWindow()
    history = turns(10)
    first = context.prompt("s", history, "m", 0)
    context.learn(first, [10] * len(first))
    # 200-token window: 50 kept for the answer, 3 priming, 10 the system.
    prompt = context.prompt("s", history, "m", 200)
    assert prompt.messages[1:] == history[-13:]
    assert prompt.usage.tokens == 3 + 10 + 13 * 10 <= 150
    history += turns(2, start=10)
    prompt = context.prompt("s", history, "m", 200)
    # The new messages are estimated low until counted: all is sent, and
    # the proxy makes the exact cut.
    assert prompt.messages[1:] == history[-17:]
    assert prompt.token_counts == [10] * 14 + [0] * 4
    context.learn(prompt, [10] * 4)
    prompt = context.prompt("s", history, "m", 200)
    assert prompt.messages[1:] == history[-13:], "counted: the runtime cuts exactly"


def test_a_tool_call_and_its_result_leave_together_and_the_newest_stays() -> None:
    context = ContextWindow()
    history = [
        ChatMessage("user", "x" * 800),
        ChatMessage("assistant", "", (CALL,)),
        ChatMessage("tool", "y" * 800, tool_call_id="c1", name="read_file"),
        ChatMessage("user", "z" * 8000),
    ]
    prompt = context.prompt("s", history, "m", 100)
    assert prompt.messages[1:] == [history[-1]], "the newest message stays, alone too large"
    history.insert(3, ChatMessage("assistant", "ok"))
    context = ContextWindow()
    prompt = context.prompt("s", history[:4], "m", 200)
    roles = [m.role for m in prompt.messages]
    assert roles == ["system", "assistant", "tool", "assistant"]


def test_a_history_that_changed_or_another_model_starts_over() -> None:
    context = ContextWindow()
    history = turns(3)
    prompt = context.prompt("s", history, "m", 0)
    context.learn(prompt, [4] * len(prompt))
    edited = [*history[:2], ChatMessage("user", "edited")]
    prompt = context.prompt("s", edited, "m", 0)
    assert prompt.messages[1:] == edited
    assert prompt.token_counts == [4, 0, 0, 0], "the system prompt's count holds"
    prompt = context.prompt("s", edited, "other", 0)
    assert prompt.token_counts == [0, 0, 0, 0], "counts are the model's"


def copies(history: list[ChatMessage]) -> list[ChatMessage]:
    """The same messages as new objects, as a history read back from the database."""
    return [ChatMessage(m.role, m.content, m.tool_calls, m.tool_call_id, m.name) for m in history]


def test_a_rested_window_sends_the_counts_it_had_for_the_history_read_back() -> None:
    context = ContextWindow()
    history = turns(20)
    prompt = context.prompt("s", history, "m", 200)
    context.learn(prompt, [10] * len(prompt))
    before = context.prompt("s", history, "m", 200)

    context.rest()
    read_back = copies(history)
    after = context.prompt("s", read_back, "m", 200)
    assert after.encoded == before.encoded, "the same cut, the same counts, no recount"
    assert after.messages[1:] == read_back[-13:]
    assert after.usage == before.usage

    # It goes on growing as before.
    context.learn(after, [])
    read_back.append(ChatMessage("user", "one more"))
    grown = context.prompt("s", read_back, "m", 200)
    assert grown.token_counts == [*after.token_counts, 0], "only the new message is counted"


def test_a_rested_window_counts_again_a_history_that_is_not_what_it_let_go() -> None:
    context = ContextWindow()
    history = turns(3)
    prompt = context.prompt("s", history, "m", 0)
    context.learn(prompt, [4] * len(prompt))
    for changed in (
        [*copies(history[:5]), ChatMessage("assistant", "another answer")],  # edited
        [*copies(history[:5]), ChatMessage("assistant", "ANOTHER ANSWER")],  # same length
        copies(history[:4]),  # shorter
    ):
        context.rest()
        again = context.prompt("s", changed, "m", 0)
        assert again.token_counts == [4] + [0] * len(changed), "only the system prompt's holds"
        context.learn(again, [4] * len(changed))
    context.rest()
    assert context.prompt("s", changed, "other", 0).token_counts == [0] * 5, "another model"
