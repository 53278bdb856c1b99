"""The resilience loop on plain deltas: a scripted upstream, no protobuf, no gRPC.

Timeouts here are short so that a stream which never sends gives up soon;
no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from litellm import exceptions as litellm_errors

from llmproxy import errors
from llmproxy.resilience import (
    Delta,
    ResilientUpstream,
    StreamProgress,
    StreamTimeouts,
    ToolCallDelta,
    after_deltas,
)

SHORT = 0.05
"""Seconds a test waits for a stream that never sends."""

STALL = object()
"""In a script: the stream sends nothing more, ever."""


def chunk(
    text: str | None = None,
    *,
    tool: tuple[int, str | None, str | None, str] | None = None,
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Any:
    """A LiteLLM-shaped stream chunk."""
    calls = None
    if tool is not None:
        index, call_id, name, arguments = tool
        calls = [
            SimpleNamespace(
                index=index, id=call_id, function=SimpleNamespace(name=name, arguments=arguments)
            )
        ]
    return SimpleNamespace(
        model="chunk-model",
        usage=None
        if usage is None
        else SimpleNamespace(
            prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage)
        ),
        choices=[
            SimpleNamespace(
                finish_reason=finish, delta=SimpleNamespace(content=text, tool_calls=calls)
            )
        ],
    )


@dataclass
class ScriptedStream:
    """Sends its script: chunks, exceptions to raise, or :data:`STALL`."""

    script: list[Any]
    info: dict[str, Any] = field(default_factory=dict)
    answered: str | None = None
    closed: bool = False
    blamed: list[str] = field(default_factory=list)

    async def _run(self) -> AsyncIterator[Any]:
        for item in self.script:
            if item is STALL:
                await asyncio.Event().wait()
            if isinstance(item, BaseException):
                raise item
            yield item

    def chunks(self) -> AsyncIterator[Any]:
        return self._run()

    def model_info(self) -> Mapping[str, Any]:
        return self.info

    def answered_by(self) -> str | None:
        return self.answered

    def record_no_first_delta(self, message: str) -> None:
        self.blamed.append(message)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class ScriptedUpstream:
    """One scripted stream per model group; ``fallbacks`` as the Router's."""

    streams: dict[str, ScriptedStream]
    fallback_list: dict[str, list[str]] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)
    never_opens: bool = False

    async def open(self, arguments: dict[str, Any]) -> ScriptedStream:
        self.opened.append(arguments["model"])
        if self.never_opens:
            await asyncio.Event().wait()
        return self.streams[arguments["model"]]

    async def complete(self, arguments: dict[str, Any]) -> Any:
        await asyncio.Event().wait()

    def fallbacks(self, group: str) -> list[str]:
        return self.fallback_list.get(group, [])


async def run(
    upstream: ScriptedUpstream,
    timeouts: StreamTimeouts,
    sent: list[Delta],
    fallbacks_seen: list[tuple[str, str]] | None = None,
) -> StreamProgress:
    """Stream group ``main``; every delta the caller would see lands in ``sent``."""

    async def send(delta: Delta) -> None:
        sent.append(delta)

    progress = StreamProgress()
    calls = ResilientUpstream(
        upstream,
        timeouts,
        on_fallback=None if fallbacks_seen is None else lambda a, b: fallbacks_seen.append((a, b)),
    )
    await calls.stream({"model": "main", "messages": []}, progress, send)
    return progress


async def test_text_and_tool_call_fragments_arrive_in_order_with_the_end_details() -> None:
    stream = ScriptedStream(
        [
            chunk("Hel"),
            chunk("lo"),
            chunk(tool=(0, "c1", "read_file", '{"pa')),
            chunk(tool=(0, None, None, 'th": "a"}')),
            chunk(finish="tool_calls"),
            chunk(usage=(7, 3)),
        ],
        answered="openai/gpt-4o",
    )

    sent: list[Delta] = []
    progress = await run(ScriptedUpstream({"main": stream}), StreamTimeouts(), sent)

    assert sent == [
        "Hel",
        "lo",
        ToolCallDelta(index=0, id="c1", name="read_file", arguments_fragment='{"pa'),
        ToolCallDelta(index=0, id="", name="", arguments_fragment='th": "a"}'),
    ]
    assert progress.emitted == 4
    assert progress.finish_reason == "tool_calls"
    assert progress.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert progress.model == "openai/gpt-4o"
    assert stream.closed


async def test_without_a_deployment_name_the_chunks_model_is_kept() -> None:
    stream = ScriptedStream([chunk("hi")])

    progress = await run(ScriptedUpstream({"main": stream}), StreamTimeouts(), [])

    assert progress.model == "chunk-model"


async def test_no_first_delta_in_time_falls_back_and_blames_the_deployment() -> None:
    silent = ScriptedStream([STALL])
    backup = ScriptedStream([chunk("from backup")])
    upstream = ScriptedUpstream(
        {"main": silent, "backup": backup}, fallback_list={"main": ["backup"]}
    )
    seen: list[tuple[str, str]] = []

    sent: list[Delta] = []
    await run(upstream, StreamTimeouts(first_token=SHORT), sent, seen)

    assert sent == ["from backup"]
    assert upstream.opened == ["main", "backup"]
    assert seen == [("main", "backup")]
    assert silent.blamed == [f"main: no first delta within {SHORT:g} s"]
    assert silent.closed
    assert backup.closed


async def test_fallbacks_follow_the_requested_groups_list_and_skip_tried_groups() -> None:
    upstream = ScriptedUpstream(
        {
            "main": ScriptedStream([STALL]),
            "second": ScriptedStream([STALL]),
            "third": ScriptedStream([chunk("third")]),
        },
        fallback_list={"main": ["main", "second", "third"], "second": ["main"]},
    )

    sent: list[Delta] = []
    await run(upstream, StreamTimeouts(first_token=SHORT), sent)

    assert sent == ["third"]
    assert upstream.opened == ["main", "second", "third"]


async def test_no_first_delta_and_no_fallback_left_is_timed_out() -> None:
    upstream = ScriptedUpstream({"main": ScriptedStream([STALL])})

    with pytest.raises(errors.UpstreamTimeout, match="no first delta within"):
        await run(upstream, StreamTimeouts(first_token=SHORT), [])


async def test_a_deployments_own_first_token_timeout_applies() -> None:
    silent = ScriptedStream([STALL], info={"stream_first_token_timeout": SHORT})
    upstream = ScriptedUpstream(
        {"main": silent, "backup": ScriptedStream([chunk("ok")])},
        fallback_list={"main": ["backup"]},
    )

    sent: list[Delta] = []
    await run(upstream, StreamTimeouts(first_token=None, total=None), sent)

    assert sent == ["ok"]


async def test_a_stall_after_a_delta_is_interrupted_and_never_falls_back() -> None:
    stalled = ScriptedStream([chunk("partial"), STALL])
    upstream = ScriptedUpstream(
        {"main": stalled, "backup": ScriptedStream([chunk("other")])},
        fallback_list={"main": ["backup"]},
    )

    sent: list[Delta] = []

    with pytest.raises(errors.StreamInterrupted, match="sent nothing for"):
        await run(upstream, StreamTimeouts(chunk=SHORT), sent)

    assert sent == ["partial"]
    assert upstream.opened == ["main"]
    assert stalled.closed
    assert not stalled.blamed


async def test_a_read_timeout_before_any_delta_falls_back() -> None:
    timeout = litellm_errors.Timeout("read timed out\nmore", model="m", llm_provider="openai")
    upstream = ScriptedUpstream(
        {"main": ScriptedStream([timeout]), "backup": ScriptedStream([chunk("ok")])},
        fallback_list={"main": ["backup"]},
    )

    sent: list[Delta] = []
    await run(upstream, StreamTimeouts(), sent)

    assert sent == ["ok"]


async def test_a_read_timeout_after_a_delta_is_raised_as_is() -> None:
    timeout = litellm_errors.Timeout("read timed out", model="m", llm_provider="openai")
    upstream = ScriptedUpstream(
        {"main": ScriptedStream([chunk("partial"), timeout]), "backup": ScriptedStream([])},
        fallback_list={"main": ["backup"]},
    )

    with pytest.raises(litellm_errors.Timeout):
        await run(upstream, StreamTimeouts(), [])

    assert upstream.opened == ["main"]


async def test_the_total_timeout_ends_a_stream_that_keeps_silent() -> None:
    upstream = ScriptedUpstream({"main": ScriptedStream([chunk("a"), STALL])})

    with pytest.raises(errors.UpstreamTimeout, match="exceeded the total timeout"):
        await run(upstream, StreamTimeouts(first_token=None, chunk=None, total=SHORT), [])


async def test_the_total_timeout_bounds_opening_the_stream() -> None:
    upstream = ScriptedUpstream({}, never_opens=True)

    with pytest.raises(errors.UpstreamTimeout, match="no answer within the total timeout"):
        await run(upstream, StreamTimeouts(total=SHORT), [])


async def test_the_total_timeout_bounds_a_whole_completion() -> None:
    calls = ResilientUpstream(ScriptedUpstream({}), StreamTimeouts(total=SHORT))

    with pytest.raises(errors.UpstreamTimeout, match="no answer within the total timeout"):
        await calls.complete({"model": "main", "messages": []})


async def test_cancelling_the_call_closes_the_open_stream() -> None:
    stream = ScriptedStream([chunk("a"), STALL])
    upstream = ScriptedUpstream({"main": stream})
    first = asyncio.Event()
    progress = StreamProgress()

    async def send(delta: Delta) -> None:
        first.set()

    calls = ResilientUpstream(upstream, StreamTimeouts(first_token=None, chunk=None, total=None))
    task = asyncio.create_task(calls.stream({"model": "main"}, progress, send))
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert stream.closed


def test_a_failure_after_deltas_is_interrupted_with_its_cause() -> None:
    cut = litellm_errors.APIConnectionError("connection reset", "openai", "gpt-4o")

    error = after_deltas(cut, 3)

    assert error.reason == "interrupted"
    assert "after 3 deltas, the answer is partial" in str(error)
    assert "unreachable" in str(error)
    assert "internal error in llmproxy" in str(after_deltas(KeyError("x"), 1))


def test_a_deployment_may_disable_a_timeout_with_zero() -> None:
    timeouts = StreamTimeouts(first_token=5, chunk=6, total=7).for_deployment(
        {"stream_first_token_timeout": 0, "stream_chunk_timeout": "2.5"}
    )

    assert timeouts == StreamTimeouts(first_token=None, chunk=2.5, total=7)
