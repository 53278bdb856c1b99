"""The mesh with a real-provider configuration and a slow model.

A second mesh, started like ``./scripts/up`` but with an llmproxy config in
LiteLLM's format that adds: ``openai-agent``, LiteLLM's ``openai/`` provider
talking real HTTP to the OpenAI-compatible test server (streamed tool-call
deltas), serving the debug agent; ``openai-coder``, the same provider path
playing a scripted multi-step trajectory, serving the coder; and
``offline-slow``, a slow offline model serving the ask agent, so a turn can
be cancelled mid-stream.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.conftest import free_port
from tests.integration.conftest import Mesh, launch
from tests.llmproxy.openai_server import AFTER_TOOL_REPLY, TOOL_PREAMBLE, OpenAIServer
from tests.llmproxy.trajectory import Call, Turn

API_KEY = "sk-test-provider-key"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIServer]:
    server = OpenAIServer(API_KEY)
    server.start(free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def provider_mesh(
    tmp_path_factory: pytest.TempPathFactory, upstream: OpenAIServer
) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("codelab-providers")
    config = home / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {"model_name": "offline", "litellm_params": {"model": "offline/echo"}},
                    {
                        "model_name": "offline-slow",
                        "litellm_params": {
                            "model": "offline/echo",
                            "reply_tokens": 2000,
                            "token_delay": 0.01,
                        },
                    },
                    {
                        "model_name": "openai-agent",
                        "litellm_params": {
                            "model": "openai/agent-model",
                            "api_base": upstream.base_url,
                            "api_key": "os.environ/TEST_PROVIDER_KEY",
                        },
                    },
                    {
                        "model_name": "openai-coder",
                        "litellm_params": {
                            "model": "openai/coder-model",
                            "api_base": upstream.base_url,
                            "api_key": "os.environ/TEST_PROVIDER_KEY",
                        },
                    },
                ]
            }
        )
    )
    with launch(
        home,
        TEST_PROVIDER_KEY=API_KEY,
        LLM_PROXY__CONFIG=str(config),
        AGENT_RUNTIME__AGENT_MODELS="debug=openai-agent,ask=offline-slow,coder=openai-coder",
    ) as mesh:
        yield mesh


async def test_a_real_provider_config_produces_a_tool_call_end_to_end(
    provider_mesh: Mesh, upstream: OpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('hi')\n")
    session_id = f"provider-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(provider_mesh.ws_url, session_id, provider_mesh.token) as conn:
        await conn.next_frame()
        turn = await IdeSession(conn, Workspace(tmp_path)).switch("debug", "why does main fail?")
    (executed,) = turn.executed
    assert executed["tool_name"] == "read_file"
    assert executed["arguments"] == {"path": "src/main.py"}
    assert turn.text == TOOL_PREAMBLE + AFTER_TOOL_REPLY
    first, second = [r for r in upstream.requests if r["model"] == "agent-model"][-2:]
    assert first["stream"] is True
    assert "read_file" in {tool["function"]["name"] for tool in first["tools"]}
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool"
    assert "print('hi')" in tool_message["content"]


async def test_cancel_mid_stream(provider_mesh: Mesh) -> None:
    session_id = f"cancel-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(provider_mesh.ws_url, session_id, provider_mesh.token) as conn:
        await conn.next_frame()
        await conn.send({"type": "switch_agent", "agent_type": "ask", "content": "tell me more"})
        tokens = 0
        while tokens < 3:
            frame = await conn.next_frame()
            if frame["type"] == "assistant_message" and not frame["is_final"]:
                assert len(frame["content"].split()) == 1, "a paced model streams word by word"
                tokens += 1
        await conn.send({"type": "cancel"})
        while not (frame := await conn.next_frame()).get("is_final"):
            assert frame["type"] == "assistant_message"
            tokens += 1
        assert frame["metadata"]["status"] == "cancelled"
        assert tokens < 1000, "the stream stopped long before the model's 2000 tokens"
        # The session is usable again at once.
        await conn.send({"type": "switch_agent", "agent_type": "architect", "content": "read x"})
        while not (frame := await conn.next_frame()).get("is_final"):
            if frame["type"] == "tool_call":
                await conn.send({"type": "tool_result", "call_id": frame["call_id"], "result": {}})
        assert frame["metadata"]["status"] == "completed"


BUGGY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


async def test_a_realistic_agent_trajectory_through_litellm(
    provider_mesh: Mesh, upstream: OpenAIServer, tmp_path: Path
) -> None:
    """read, an apply_diff whose block does not match, the fixed one, the
    tests, completion: a real model's loop, streamed through LiteLLM's
    OpenAI provider, with the human approving a diff and a command."""
    (tmp_path / "calc.py").write_text(BUGGY)
    (tmp_path / "test_calc.py").write_text(TESTS)
    command = f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"
    fixed = {
        "search": "def add(a, b):\n    return a - b\n",
        "replace": "def add(a, b):\n    return a + b\n",
    }
    trajectory = upstream.script(
        "coder-model",
        [
            Turn(text="Let me look at calc.py.", calls=(Call("read_file", {"path": "calc.py"}),)),
            Turn(
                calls=(
                    Call(
                        "apply_diff",
                        {
                            "path": "calc.py",
                            # Indented by two: no such text in the file.
                            "blocks": [
                                {"search": "def add(a, b):\n  return a - b", "replace": "x"}
                            ],
                        },
                    ),
                ),
                tool_result_contains="def add(a, b)",
            ),
            Turn(
                text="The indentation was off; retrying.",
                calls=(Call("apply_diff", {"path": "calc.py", "blocks": [fixed]}),),
                tool_result_contains="block 1",
            ),
            Turn(
                calls=(Call("execute_command", {"command": command}),),
                tool_result_contains="+1 -1",
            ),
            Turn(
                calls=(Call("attempt_completion", {"result": "add is fixed; 1 test passes."}),),
                tool_result_contains="1 passed",
            ),
        ],
    )
    asked: list[dict[str, object]] = []

    async def approve(frame: dict[str, object]) -> Decision:
        asked.append(frame)
        return Decision("approve")

    session_id = f"trajectory-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(provider_mesh.ws_url, session_id, provider_mesh.token) as conn:
        await conn.next_frame()
        ide = IdeSession(conn, Workspace(tmp_path), approve=approve)
        turn = await ide.switch("coder", "add() is wrong in calc.py; fix it and run the tests")
    trajectory.assert_complete()
    assert turn.status == "completed"
    assert "add is fixed; 1 test passes." in turn.text
    assert (tmp_path / "calc.py").read_text() == BUGGY.replace("a - b", "a + b", 1)
    diff_call, command_call = asked
    assert diff_call["tool_name"] == "write_file"
    metadata = diff_call["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["parent_tool"] == "apply_diff"
    assert "-    return a - b\n+    return a + b\n" in metadata["diff"]
    assert command_call["tool_name"] == "execute_command"
    # The failed block reached the model with the closest text, not a write.
    failed = trajectory.requests[2]["messages"][-1]
    assert failed["role"] == "tool"
    assert "block 1" in failed["content"]
    assert "calc.py was not changed" in failed["content"]
