"""The mesh with a real-provider configuration and a slow model.

A second mesh, started like ``./scripts/up`` but with an llmproxy config in
LiteLLM's format that adds: ``openai-agent``, LiteLLM's ``openai/`` provider
talking real HTTP to the OpenAI-compatible test server (streamed tool-call
deltas), serving the debug agent; and ``offline-slow``, a slow offline model
serving the ask agent, so a turn can be cancelled mid-stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.conftest import free_port
from tests.integration.conftest import Mesh, launch
from tests.llmproxy.openai_server import AFTER_TOOL_REPLY, TOOL_PREAMBLE, OpenAIServer

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
                ]
            }
        )
    )
    with launch(
        home,
        TEST_PROVIDER_KEY=API_KEY,
        LLM_PROXY__CONFIG=str(config),
        AGENT_RUNTIME__AGENT_MODELS="debug=openai-agent,ask=offline-slow",
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
        await conn.send({"type": "switch_agent", "agent_type": "coder", "content": "read x"})
        while not (frame := await conn.next_frame()).get("is_final"):
            if frame["type"] == "tool_call":
                await conn.send({"type": "tool_result", "call_id": frame["call_id"], "result": {}})
        assert frame["metadata"]["status"] == "completed"
