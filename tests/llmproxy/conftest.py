"""Fixtures: the proxy in-process on port 0, and the test OpenAI server."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmproxy.__main__ import Settings, running
from llmproxy.v1 import llmproxy_pb2_grpc
from mesh.grpc_server import internal_metadata
from tests.conftest import free_port
from tests.llmproxy.openai_server import OpenAIServer

INTERNAL_KEY = "test-internal-key"
UPSTREAM_KEY = "sk-test-upstream"
METADATA = internal_metadata(INTERNAL_KEY)


@dataclass(frozen=True)
class Proxy:
    """A running proxy and a channel to it."""

    port: int
    channel: grpc.aio.Channel
    stub: llmproxy_pb2_grpc.LlmProxyServiceStub


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def fast_path() -> bool:
    """The proxies :func:`start_proxy` starts take the fast path (the default).
    A module overrides this fixture with ``params=[True, False]`` to run its
    tests on both paths."""
    return True


@pytest.fixture
async def start_proxy(tmp_path: Path, fast_path: bool) -> AsyncIterator[StartProxy]:
    """Start the proxy with a YAML config text (None: the packaged default);
    keyword arguments override :class:`Settings` fields (e.g. timeouts,
    ``fast_path``, which defaults to the :func:`fast_path` fixture)."""
    numbers = itertools.count()
    async with contextlib.AsyncExitStack() as stack:

        async def start(config_yaml: str | None = None, **settings: float | bool) -> Proxy:
            config_path = None
            if config_yaml is not None:
                config_path = tmp_path / f"config-{next(numbers)}.yaml"
                config_path.write_text(config_yaml)
            settings.setdefault("fast_path", fast_path)
            settings = Settings(
                internal_api_key=INTERNAL_KEY,
                port=0,
                config_path=config_path,
                shutdown_grace=0.5,
                **settings,  # type: ignore[arg-type]
            )
            server = await stack.enter_async_context(running(settings))
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            )
            return Proxy(server.port, channel, llmproxy_pb2_grpc.LlmProxyServiceStub(channel))

        yield start


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """The test OpenAI server; TEST_OPENAI_KEY holds its key."""
    monkeypatch.setenv("TEST_OPENAI_KEY", UPSTREAM_KEY)
    server = OpenAIServer(api_key=UPSTREAM_KEY)
    server.start(free_port())
    try:
        yield server
    finally:
        server.stop()


# LiteLLM 1.106.2's _is_delta_non_empty (litellm_core_utils/model_response_utils.py)
# calls getattr(delta, name) for every name in dir(delta) before skipping the
# "model_" ones, so pydantic >= 2.11 warns about instance access to
# model_fields / model_computed_fields whenever a delta carries no text (e.g. a
# tool-call fragment). Under warnings-as-errors the warning becomes an
# exception inside LiteLLM's stream and the call fails; filtered for that
# module only (pyproject.toml's filterwarnings, for every test building a Router).

# LiteLLM declares `ReadOnly` items on TypedDicts that its pydantic models
# embed (litellm.types.llms.openai, e.g. ChatCompletionReasoningItem.summary);
# pydantic warns the first time it builds those schemas, which happens lazily
# inside the Router. Nothing in our code can avoid it, so it is filtered by
# its exact text (pyproject.toml's filterwarnings).
