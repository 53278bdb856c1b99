"""A small OpenAI-compatible HTTP server for tests (starlette + uvicorn).

It speaks just enough of the API for LiteLLM's ``openai/`` provider:
``POST /v1/chat/completions`` (SSE streaming and plain JSON) and
``POST /v1/embeddings``. The requested model name picks the behaviour:

- ``text-model``: streams :data:`TEXT_REPLY` one word per chunk.
- ``tool-model``: streams :data:`TOOL_PREAMBLE`, then a ``read_file`` tool
  call whose id and name come in the first fragment and whose arguments
  come in several fragments.
- ``small-context-model``: always answers 400 ``context_length_exceeded``,
  as OpenAI does for a prompt larger than the model's window.
- ``agent-model``: like ``tool-model``, but once the conversation ends with
  a tool result it answers :data:`AFTER_TOOL_REPLY`, as an agent's model
  would.
- ``two-tools-model``: streams two tool calls whose fragments interleave:
  index 0 and index 1 alternate, as OpenAI does for parallel calls.
- ``slow-model``: streams up to 1000 words, 20 ms apart, and records in
  :attr:`OpenAIServer.closed_streams` whether each stream finished or was
  abandoned by the client.
- ``late-model``: sends the response headers at once, then waits
  :attr:`OpenAIServer.first_chunk_delay` seconds before the first chunk.
- ``cut-model``: streams three words, then drops the connection without
  ending the response (a provider dying mid-stream).
- ``early-cut-model``: sends the response headers, then drops the
  connection before the first chunk.
- ``bench-model``: streams :attr:`OpenAIServer.bench_chunks` one-word chunks.
- any model given a script with :meth:`OpenAIServer.script`: answers its
  turns in order (:mod:`tests.llmproxy.trajectory`), checking each request.

:meth:`OpenAIServer.fail_next` queues error answers (status, headers) for a
model: each request takes the next one until the queue is empty.
:meth:`OpenAIServer.count` says how many requests a model received.

Every request needs ``Authorization: Bearer <api_key>``; anything else gets
an OpenAI-style 401.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.llmproxy.trajectory import ScriptFailure, Trajectory, Turn, words
from tests.support import wait_until

TEXT_REPLY = "Hello from the test server, streamed word by word."
TOOL_PREAMBLE = "Let me look."
AFTER_TOOL_REPLY = "I have read the file."
TOOL_CALL_ID = "call_test_1"
TOOL_ARGUMENT_FRAGMENTS = ('{"pa', 'th": "src/', 'main.py"}')
TWO_TOOL_CALLS = (
    ("call_a", "read_file", ('{"path"', ': "a.py"', "}")),
    ("call_b", "list_files", ('{"path": ', '"src", "recursive"', ": true}")),
)
CUT_AFTER_WORDS = 3


class _CutConnection(Exception):
    """Raised inside a streamed body: uvicorn then drops the connection."""


class OpenAIServer:
    """The app plus what it observed; run it with :meth:`start`/:meth:`stop`."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.closed_streams: list[str] = []
        self.stream_closed = threading.Event()
        self.first_chunk_delay = 2.0
        self.bench_chunks = 100
        self._failures: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._scripts: dict[str, Trajectory] = {}
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int) -> None:
        """Serve on 127.0.0.1:``port`` in a thread; returns once listening."""
        self.port = port
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        server = self._server
        wait_until(lambda: server.started, timeout=10, what="the test OpenAI server started")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def fail_next(self, model: str, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next request for ``model`` with an OpenAI-style error."""
        self._failures.setdefault(model, []).append((status, headers or {}))

    def script(self, model: str, turns: Sequence[Turn]) -> Trajectory:
        """Answer requests for ``model`` with ``turns``, one per request, checked;
        replaces an earlier script for it. The trajectory records what came."""
        trajectory = Trajectory(turns)
        self._scripts[model] = trajectory
        return trajectory

    def count(self, model: str) -> int:
        """How many chat requests named ``model``."""
        return sum(1 for body in self.requests if body.get("model") == model)

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return JSONResponse(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status_code=401,
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)  # refused ones too: tests count attempts
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        model = body["model"]
        queued = self._failures.get(model)
        if queued:
            status, headers = queued.pop(0)
            return JSONResponse(
                {"error": {"message": f"injected {status}", "type": "server_error", "code": None}},
                status_code=status,
                headers=headers,
            )
        if model == "small-context-model":
            return JSONResponse(
                {
                    "error": {
                        "message": "This model's maximum context length is 16 tokens. "
                        "However, your messages resulted in 4096 tokens.",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                },
                status_code=400,
            )
        after_tool = (body.get("messages") or [{}])[-1].get("role") == "tool"
        script = self._scripts.get(model)
        if script is not None:
            try:
                deltas, finish_reason = script.answer(body)
            except ScriptFailure as failure:
                return JSONResponse(
                    {
                        "error": {
                            "message": str(failure),
                            "type": "invalid_request_error",
                            "param": "messages",
                            "code": "script_failure",
                        }
                    },
                    status_code=400,
                )
        elif model == "agent-model" and after_tool:
            deltas = [{"content": word} for word in words(AFTER_TOOL_REPLY)]
            finish_reason = "stop"
        elif model in ("tool-model", "agent-model"):
            deltas = _tool_deltas()
            finish_reason = "tool_calls"
        elif model == "two-tools-model":
            deltas = _two_tool_deltas()
            finish_reason = "tool_calls"
        elif model == "slow-model":
            deltas = [{"content": "word "} for _ in range(1000)]
            finish_reason = "stop"
        elif model == "bench-model":
            # Distinct words: LiteLLM ends a stream that repeats one chunk 100 times.
            deltas = [{"content": f"t{i} "} for i in range(self.bench_chunks)]
            finish_reason = "stop"
        else:
            deltas = [{"content": word} for word in words(TEXT_REPLY)]
            finish_reason = "stop"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if not body.get("stream"):
            return JSONResponse(_completion(model, deltas, finish_reason))
        delay = 0.02 if model == "slow-model" else 0.0
        first_delay = self.first_chunk_delay if model == "late-model" else 0.0
        cut_after = {"cut-model": CUT_AFTER_WORDS, "early-cut-model": 0}.get(model)
        return StreamingResponse(
            self._sse(model, deltas, finish_reason, include_usage, delay, first_delay, cut_after),
            media_type="text/event-stream",
        )

    async def _sse(
        self,
        model: str,
        deltas: list[dict[str, Any]],
        finish_reason: str,
        include_usage: bool,
        delay: float,
        first_delay: float = 0.0,
        cut_after: int | None = None,
    ) -> AsyncIterator[str]:
        outcome = "abandoned"
        try:
            if first_delay:
                # An empty comment line flushes the headers before the wait.
                yield ": waiting\n\n"
                await asyncio.sleep(first_delay)
            for i, delta in enumerate(deltas):
                if cut_after is not None and i == cut_after:
                    outcome = "cut"
                    raise _CutConnection
                if delay:
                    await asyncio.sleep(delay)
                if i == 0:
                    delta = {"role": "assistant", **delta}
                yield _event(_chunk(model, [{"index": 0, "delta": delta, "finish_reason": None}]))
            yield _event(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": finish_reason}]))
            if include_usage:
                yield _event({**_chunk(model, []), "usage": _usage(len(deltas))})
            yield "data: [DONE]\n\n"
            outcome = "finished"
        finally:
            self.closed_streams.append(outcome)
            self.stream_closed.set()

    async def _embeddings(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        self.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.5]}
                    for i, text in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )


def _tool_deltas() -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"content": word} for word in words(TOOL_PREAMBLE)]
    deltas.append(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": "read_file", "arguments": ""},
                }
            ]
        }
    )
    deltas.extend(
        {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
        for fragment in TOOL_ARGUMENT_FRAGMENTS
    )
    return deltas


def _two_tool_deltas() -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [
        {
            "tool_calls": [
                {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ]
        }
        for index, (call_id, name, _) in enumerate(TWO_TOOL_CALLS)
    ]
    for a, b in zip(TWO_TOOL_CALLS[0][2], TWO_TOOL_CALLS[1][2], strict=True):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})
        deltas.append({"tool_calls": [{"index": 1, "function": {"arguments": b}}]})
    return deltas


def _chunk(model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": 11,
        "completion_tokens": completion_tokens,
        "total_tokens": 11 + completion_tokens,
    }


def _completion(model: str, deltas: list[dict[str, Any]], finish_reason: str) -> dict[str, Any]:
    """The non-streamed answer the deltas add up to, tool calls included."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(delta.get("content", "") for delta in deltas),
    }
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for part in delta.get("tool_calls", ()):
            call = calls.setdefault(
                part["index"], {"type": "function", "function": {"name": "", "arguments": ""}}
            )
            if "id" in part:
                call["id"] = part["id"]
            for key in ("name", "arguments"):
                call["function"][key] += part.get("function", {}).get(key, "")
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": _usage(len(deltas)),
    }


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
