"""One user message is one trace: gateway → runtime → llmproxy, in process.

The three real compositions (``running_gateway``, the runtime's ``serve``,
``llmproxy.__main__.running``) run in this process with an in-memory span
exporter; the spans of one message share a trace id and link up
``ws.message`` → ``turn`` → ``llm.call`` → ``stream_chat``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import websockets
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.__main__ import running_gateway
from runtime.__main__ import RuntimeConfig
from runtime.store import migrate
from tests.gateway.conftest import INTERNAL_KEY, JwksEndpoint, SigningKey, make_config, mint
from tests.runtime.test_service import running_runtime

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The process's tracer provider, installed once, exporting to memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:  # pragma: no cover - set elsewhere
        pytest.fail("another tracer provider is installed in this process: no span is observable")
    _EXPORTER.clear()
    return _EXPORTER


async def test_one_message_is_one_connected_trace(
    spans: InMemorySpanExporter, jwks_endpoint: JwksEndpoint, rsa_key: SigningKey, tmp_path: Path
) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from llmproxy.__main__ import Settings, running

    database = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
    await migrate(database)
    async with running(Settings(internal_api_key=INTERNAL_KEY, port=0)) as proxy:
        config = RuntimeConfig(
            internal_api_key=INTERNAL_KEY,
            port=0,
            llm_proxy_address=f"127.0.0.1:{proxy.port}",
            database_url=database,
        )
        async with (
            running_runtime(config) as runtime_port,
            running_gateway(make_config(jwks_endpoint, runtime_port)) as gateway,
            websockets.connect(
                f"ws://127.0.0.1:{gateway.port}/ws/traced",
                additional_headers={"Authorization": f"Bearer {mint(rsa_key)}"},
            ) as ws,
        ):
            await ws.recv()  # session_info
            await ws.send(json.dumps({"type": "user_message", "content": "read notes.md"}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("is_final") or frame["type"] == "tool_call":
                    break
    finished = spans.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert {"ws.message", "turn", "llm.call", "stream_chat"} <= set(by_name), sorted(by_name)
    message = by_name["ws.message"][0]
    trace_id = message.context.trace_id
    assert all(s.context.trace_id == trace_id for s in finished), "one trace for one message"
    ids = {s.context.span_id: s for s in finished}

    def parent_name(span: ReadableSpan) -> str:
        assert span.parent is not None, f"{span.name} has no parent"
        return ids[span.parent.span_id].name

    assert parent_name(by_name["turn"][0]) == "ws.message"
    # The routing call and the agent's call: both children of the turn.
    assert {parent_name(s) for s in by_name["llm.call"]} == {"turn"}
    assert len(by_name["llm.call"]) >= 2
    assert {parent_name(s) for s in by_name["stream_chat"]} == {"llm.call"}
