"""A scripted trajectory served by the OpenAI test server, through llmproxy's
real LiteLLM path: turns come in order as streamed tool-call fragments, and
a request that does not carry what the script expects is refused and told."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2
from tests.llmproxy.conftest import METADATA, Proxy, StartProxy
from tests.llmproxy.openai_server import OpenAIServer
from tests.llmproxy.trajectory import Call, Turn

SCRIPTED_YAML = """
model_list:
  - model_name: scripted
    litellm_params:
      model: openai/scripted-model
      api_base: {base}
      api_key: os.environ/TEST_OPENAI_KEY
router_settings:
  num_retries: 0
"""


def message(role: str, content: str = "", **fields: object) -> llmproxy_pb2.ChatMessage:
    return llmproxy_pb2.ChatMessage(role=role, content=content, **fields)  # type: ignore[arg-type]


@dataclass
class StreamedCall:
    id: str = ""
    name: str = ""
    arguments: str = ""
    fragments: int = 0


@dataclass
class Streamed:
    text: str
    calls: dict[str, StreamedCall]
    finish_reason: str


async def stream(proxy: Proxy, history: list[llmproxy_pb2.ChatMessage]) -> Streamed:
    """What one StreamChat call of the scripted model sent, tool calls by id."""
    request = llmproxy_pb2.StreamChatRequest(model="scripted", messages=history)
    responses = [r async for r in proxy.stub.StreamChat(request, metadata=METADATA)]
    by_index: dict[int, StreamedCall] = {}
    for response in responses:
        if response.WhichOneof("chunk") == "tool_call":
            fragment = response.tool_call
            call = by_index.setdefault(fragment.index, StreamedCall())
            if fragment.id:
                call.id, call.name = fragment.id, fragment.name
            call.arguments += fragment.arguments_fragment
            call.fragments += 1
    return Streamed(
        text="".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text"),
        calls={call.id: call for call in by_index.values()},
        finish_reason=responses[-1].end.finish_reason,
    )


def asks_to_fix_calc(body: dict[str, object]) -> None:
    messages = body["messages"]
    assert isinstance(messages, list)
    assert messages[0]["content"] == "fix calc"


async def test_a_two_step_trajectory_streams_through_litellm(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    trajectory = openai_server.script(
        "scripted-model",
        [
            Turn(
                text="Let me read both.",
                calls=(
                    Call("read_file", {"path": "calc.py"}),
                    Call("read_file", {"path": "test_calc.py"}, id="call_tests"),
                ),
            ),
            Turn(
                text="The add function is there.",
                tool_result_contains="def add",
                check=asks_to_fix_calc,
            ),
        ],
    )
    proxy = await start_proxy(SCRIPTED_YAML.format(base=openai_server.base_url))
    history = [message("user", "fix calc")]

    first = await stream(proxy, history)

    assert first.text == "Let me read both."
    assert first.finish_reason == "tool_calls"
    assert set(first.calls) == {"call_1_0", "call_tests"}
    assert json.loads(first.calls["call_1_0"].arguments) == {"path": "calc.py"}
    assert json.loads(first.calls["call_tests"].arguments) == {"path": "test_calc.py"}
    assert all(call.fragments > 2 for call in first.calls.values())  # id+name, then pieces
    assert not trajectory.done

    history += [
        message(
            "assistant",
            tool_calls=[
                llmproxy_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments)
                for call in first.calls.values()
            ],
        ),
        message(
            "tool",
            '{"result": {"content": "import os"}}',
            tool_call_id="call_tests",
            name="read_file",
        ),
        message(
            "tool",
            '{"result": {"content": "def add(a, b):"}}',
            tool_call_id="call_1_0",
            name="read_file",
        ),
    ]
    second = await stream(proxy, history)

    assert (second.text, second.calls, second.finish_reason) == (
        "The add function is there.",
        {},
        "stop",
    )
    trajectory.assert_complete()
    assert [len(body["messages"]) for body in trajectory.requests] == [1, 4]
    assert trajectory.requests[1]["messages"][1]["tool_calls"][0]["id"] == "call_1_0"


async def test_a_request_the_script_does_not_expect_is_refused_with_the_reason(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    trajectory = openai_server.script(
        "scripted-model",
        [
            Turn(calls=(Call("apply_diff", {"path": "a.py", "blocks": []}),)),
            Turn(text="Fixed.", tool_result_contains="block 1"),
        ],
    )
    proxy = await start_proxy(SCRIPTED_YAML.format(base=openai_server.base_url))
    history = [message("user", "fix a.py")]
    await stream(proxy, history)
    call = llmproxy_pb2.ToolCall(id="call_1_0", name="apply_diff", arguments_json="{}")
    history.append(message("assistant", tool_calls=[call]))

    # No tool result for the call at all.
    with pytest.raises(grpc.aio.AioRpcError):
        await stream(proxy, [*history, message("user", "well?")])
    # A tool result without the text the script expects.
    wrong = message("tool", '{"result": "ok"}', tool_call_id="call_1_0", name="apply_diff")
    with pytest.raises(grpc.aio.AioRpcError):
        await stream(proxy, [*history, wrong])

    assert trajectory.answered == 1
    assert trajectory.failures[0] == "turn 2: no tool result for apply_diff (call_1_0) of turn 1"
    assert trajectory.failures[1].startswith(
        "turn 2: the last message should be a tool result containing 'block 1'"
    )
    with pytest.raises(AssertionError, match="trajectory checks failed"):
        trajectory.assert_complete()

    # The turn was not used up: the right request still gets it.
    right = message(
        "tool", '{"error": "block 1: not found"}', tool_call_id="call_1_0", name="apply_diff"
    )
    assert (await stream(proxy, [*history, right])).text == "Fixed."
    assert trajectory.done
    # Past the last turn, every request is refused.
    with pytest.raises(grpc.aio.AioRpcError):
        await stream(proxy, [*history, right])
    assert trajectory.failures[-1] == "turn 3: none left, the script has 2 turns"
