"""``python -m llmproxy`` as a real process: start, serve, SIGTERM, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from llmproxy.offline import expected_reply_text
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from tests.conftest import free_port
from tests.llmproxy.conftest import INTERNAL_KEY, METADATA
from tests.support import Service, grpc_healthy

REPO = Path(__file__).resolve().parents[2]


async def test_process_serves_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {
        **os.environ,
        "LLM_PROXY__PORT": str(port),
        "LLM_PROXY__INTERNAL_API_KEY": INTERNAL_KEY,
        "LLM_PROXY__SHUTDOWN_GRACE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    llmproxy = Service(
        [sys.executable, "-m", "llmproxy"],
        cwd=REPO,
        env=env,
        ready=grpc_healthy(f"127.0.0.1:{port}"),
        start_timeout=30,
    )
    await asyncio.to_thread(llmproxy.start)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = llmproxy_pb2_grpc.LlmProxyServiceStub(channel)
            request = llmproxy_pb2.StreamChatRequest(
                model="offline",
                messages=[llmproxy_pb2.ChatMessage(role="user", content="plugh xyzzy")],
            )
            responses = [r async for r in stub.StreamChat(request, metadata=METADATA)]
    finally:
        exit_code = await asyncio.to_thread(llmproxy.stop, signal.SIGTERM, 20)

    text = "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text")
    assert text == expected_reply_text("plugh xyzzy")
    assert responses[-1].WhichOneof("chunk") == "end"
    log = llmproxy.output
    assert exit_code == 0, log
    assert '"event": "llmproxy_started"' in log
    assert f'"port": {port}' in log
    assert '"event": "stream_chat_finished"' in log
    assert "xyzzy" not in log  # message contents never reach the log


def test_missing_internal_key_exits_2_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PROXY__")}
    result = subprocess.run(
        [sys.executable, "-m", "llmproxy"], cwd=REPO, env=env, capture_output=True, timeout=60
    )

    assert result.returncode == 2
    assert b"LLM_PROXY__INTERNAL_API_KEY" in result.stderr


def test_missing_environment_reference_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o\n"
        "      api_key: os.environ/LLMPROXY_TEST_SURELY_UNSET\n"
    )
    env = {
        **os.environ,
        "LLM_PROXY__INTERNAL_API_KEY": INTERNAL_KEY,
        "LLM_PROXY__CONFIG": str(config),
        "LLM_PROXY__PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "llmproxy"], cwd=REPO, env=env, capture_output=True, timeout=60
    )

    assert result.returncode == 2
    assert b"LLMPROXY_TEST_SURELY_UNSET" in result.stderr


def test_the_warm_up_loads_what_a_first_call_with_tools_would() -> None:
    """A first model call would otherwise import LiteLLM's lazy modules (the
    MCP handler alone is 0.4 s when the call has tools, as the runtime's
    always do) while an IDE waits. After warm_up(), in a fresh interpreter,
    they are loaded."""
    lazy = [
        "litellm.responses.mcp.chat_completions_handler",
        "litellm.litellm_core_utils.streaming_handler",
        "tiktoken",
    ]
    script = (
        "import asyncio, sys\n"
        "from llmproxy.router import register_offline_provider, warm_up\n"
        f"lazy = {lazy!r}\n"
        "before = [m for m in lazy if m in sys.modules]\n"
        "register_offline_provider()\n"
        "asyncio.run(warm_up())\n"
        "print(before, [m for m in lazy if m not in sys.modules])\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    not_loaded_before, still_missing = done.stdout.strip().splitlines()[-1].split("] [")
    assert "chat_completions_handler" not in not_loaded_before  # the check means something
    assert still_missing == "]"
