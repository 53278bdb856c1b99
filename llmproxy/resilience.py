"""Calling a model group with the proxy's deadlines and fallbacks, on plain deltas.

Resilience is split between LiteLLM and this module. The Router retries
(:class:`llmproxy.router.ProxyRouter` says which errors), falls back to other
model groups, and cools deployments down; all of that happens before the
first chunk arrives or, for a stream LiteLLM sees break before any content,
inside its stream. This module adds what LiteLLM does not have: a deadline
for the first delta, one between deltas, and one for the whole call. A
first-delta timeout counts as a failure of the deployment (its cooldown
judges it) and moves the call to the group's next fallback, transparently,
because the caller has seen nothing yet. Once a delta has been sent, any
failure ends the call with ``interrupted`` (:func:`after_deltas`): a partial
answer is never dressed up as a whole one.

Nothing here knows gRPC or protobuf. Chunks come from an :class:`Upstream`
(the LiteLLM Router in production, :class:`RouterUpstream`; a script in the
unit tests) and leave as :data:`Delta` values: ``str`` for text, a
:class:`ToolCallDelta` for a tool-call fragment.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeAlias, TypeVar

import structlog
from litellm import exceptions as litellm_errors
from litellm.router import Router

from llmproxy import errors
from llmproxy.router import deployment_of, fallback_groups, record_failure

log = structlog.get_logger("llmproxy")

T = TypeVar("T")


@dataclass(frozen=True)
class StreamTimeouts:
    """Seconds the proxy waits on a provider; None means no limit.

    ``first_token``: from the call to the first delta (text or tool call);
    ``chunk``: between deltas (these two may fire up to
    :data:`LIMIT_SLACK` of the limit late); ``total``: the whole call,
    retries and fallbacks included. A deployment's ``model_info`` may override the first
    two with ``stream_first_token_timeout`` / ``stream_chunk_timeout`` (0
    disables). Connect and read timeouts of the HTTP request itself are
    LiteLLM's ``timeout`` / ``stream_timeout``.
    """

    first_token: float | None = 60.0
    chunk: float | None = 60.0
    total: float | None = 600.0

    def for_deployment(self, model_info: Mapping[str, Any]) -> StreamTimeouts:
        """These timeouts with the deployment's own overrides applied."""
        first = model_info.get("stream_first_token_timeout")
        chunk = model_info.get("stream_chunk_timeout")
        return replace(
            self,
            first_token=self.first_token if first is None else (float(first) or None),
            chunk=self.chunk if chunk is None else (float(chunk) or None),
        )


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; ``id`` and ``name`` come with a
    call's first fragment, ``arguments_fragment`` extends its JSON text."""

    index: int
    id: str
    name: str
    arguments_fragment: str


Delta: TypeAlias = str | ToolCallDelta
"""One delta of an answer: new text (a ``str``), or a tool-call fragment."""


@dataclass
class StreamProgress:
    """What a streamed call produced so far; reads LiteLLM's chunks.

    Remembers what only arrives once (finish reason, usage, model) for the
    end of the stream; ``model`` becomes the answering deployment's model
    string once the stream is over.
    """

    chunks: int = 0
    emitted: int = 0
    finish_reason: str = ""
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    def deltas(self, chunk: Any) -> Iterator[Delta]:
        """The deltas ``chunk`` carries, in order: a LiteLLM stream chunk, or
        an OpenAI chunk as decoded JSON (a dict, from the fast path)."""
        if isinstance(chunk, dict):
            return self._payload_deltas(chunk)
        return self._chunk_deltas(chunk)

    def _payload_deltas(self, payload: Mapping[str, Any]) -> Iterator[Delta]:
        self.chunks += 1
        usage = payload.get("usage")
        if usage:
            self.usage = {
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
                "total_tokens": int(usage.get("total_tokens") or 0),
            }
        for choice in payload.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            if not delta:
                continue
            content = delta.get("content")
            if content:
                self.emitted += 1
                yield content
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                self.emitted += 1
                yield ToolCallDelta(
                    index=int(call.get("index") or 0),
                    id=call.get("id") or "",
                    name=function.get("name") or "",
                    arguments_fragment=function.get("arguments") or "",
                )

    def _chunk_deltas(self, chunk: Any) -> Iterator[Delta]:
        self.chunks += 1
        if not self.model and getattr(chunk, "model", None):
            self.model = str(chunk.model)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = {
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
                "total_tokens": int(getattr(usage, "total_tokens", 0) or 0),
            }
        for choice in getattr(chunk, "choices", None) or ():
            if choice.finish_reason:
                self.finish_reason = str(choice.finish_reason)
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self.emitted += 1
                yield delta.content
            for call in delta.tool_calls or ():
                function = call.function
                self.emitted += 1
                yield ToolCallDelta(
                    index=int(call.index or 0),
                    id=call.id or "",
                    name=(function.name if function else None) or "",
                    arguments_fragment=(function.arguments if function else None) or "",
                )


class UpstreamStream(Protocol):
    """One opened stream of LiteLLM chunks from one deployment."""

    def chunks(self) -> AsyncIterator[Any]:
        """The chunks; may raise LiteLLM's exceptions."""

    def model_info(self) -> Mapping[str, Any]:
        """The answering deployment's ``model_info`` (its timeout overrides)."""

    def answered_by(self) -> str | None:
        """The model string of the deployment that answered, when known."""

    def record_no_first_delta(self, message: str) -> None:
        """Count a first-delta timeout against the deployment (its cooldown)."""

    async def aclose(self) -> None:
        """Close the stream and the provider request under it."""


class Upstream(Protocol):
    """Where calls go: a LiteLLM Router, or a test's script."""

    async def open(self, arguments: dict[str, Any]) -> UpstreamStream:
        """Start a streamed completion (``arguments`` as Router ``acompletion``)."""

    async def complete(self, arguments: dict[str, Any]) -> Any:
        """One whole completion: LiteLLM's ``ModelResponse``."""

    def fallbacks(self, group: str) -> list[str]:
        """The groups to try after ``group``, in order."""


class ResilientUpstream:
    """An :class:`Upstream` behind the proxy's deadlines and first-delta fallbacks.

    Safe to cancel: a cancelled call closes the stream it has open.
    ``on_fallback(from_group, to_group)`` is told of every fallback (metrics).
    """

    def __init__(
        self,
        upstream: Upstream,
        timeouts: StreamTimeouts,
        on_fallback: Callable[[str, str], object] | None = None,
    ) -> None:
        self._upstream = upstream
        self._timeouts = timeouts
        self._on_fallback = on_fallback

    async def stream(
        self,
        arguments: dict[str, Any],
        progress: StreamProgress,
        send: Callable[[Delta], Awaitable[object]],
    ) -> None:
        """Stream from the group, then from its fallbacks while no delta was sent.

        Every delta goes to ``send`` as it arrives; ``progress`` tells what
        was sent. Raises :class:`errors.UpstreamTimeout` (no first delta and
        no fallback left, or the total timeout), :class:`errors.StreamInterrupted`
        (no next delta in time), and what the upstream raises.
        """
        total = self._timeouts.total
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        group = arguments["model"]
        tried = [group]
        while True:
            try:
                await self._stream_once({**arguments, "model": group}, progress, send, deadline)
                return
            except NoFirstDelta as exc:
                following = [g for g in self._upstream.fallbacks(tried[0]) if g not in tried]
                if not following and exc.cause is not None:
                    raise exc.cause from None
                if not following:
                    raise errors.UpstreamTimeout(str(exc)) from None
                log.warning(
                    "stream_fallback", from_group=group, to_group=following[0], cause=str(exc)
                )
                if self._on_fallback is not None:
                    self._on_fallback(group, following[0])
                group = following[0]
                tried.append(group)

    async def complete(self, arguments: dict[str, Any]) -> Any:
        """One whole completion within the total timeout.

        Raises :class:`errors.UpstreamTimeout` and what the upstream raises.
        """
        total = self._timeouts.total
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        try:
            return await _bounded(self._upstream.complete(arguments), None, deadline)
        except _LimitReached:
            raise errors.UpstreamTimeout(
                f"no answer within the total timeout of {total:g} s"
            ) from None

    async def _stream_once(
        self,
        arguments: dict[str, Any],
        progress: StreamProgress,
        send: Callable[[Delta], Awaitable[object]],
        deadline: float | None,
    ) -> None:
        group = arguments["model"]
        try:
            stream = await _bounded(self._upstream.open(arguments), None, deadline)
        except _LimitReached:
            raise errors.UpstreamTimeout(
                f"no answer within the total timeout of {self._timeouts.total:g} s"
            ) from None
        try:
            timeouts = self._timeouts.for_deployment(stream.model_info())
            iterator = stream.chunks()
            loop = asyncio.get_running_loop()
            # One timer for the whole stream, moved lazily (see _keep_due),
            # not one per chunk: a timer handle per chunk is a real share of
            # this hop's cost in a stream of one-token chunks.
            try:
                async with asyncio.timeout(None) as silence:
                    while True:
                        limit = timeouts.chunk if progress.emitted else timeouts.first_token
                        _keep_due(silence, loop.time(), limit, deadline)
                        try:
                            chunk = await anext(iterator)
                        except StopAsyncIteration:
                            break
                        except litellm_errors.Timeout as exc:
                            # The HTTP read timeout (LiteLLM's stream_timeout)
                            # fired inside the stream; LiteLLM raises it without
                            # falling back. Before any delta it is a first-delta
                            # timeout.
                            if progress.emitted:
                                raise
                            raise NoFirstDelta(f"{group}: {exc.message.splitlines()[0]}") from None
                        for delta in progress.deltas(chunk):
                            await send(delta)
            except TimeoutError:
                if not silence.expired():
                    raise  # not ours: the provider's own
                if deadline is not None and loop.time() >= deadline:
                    raise errors.UpstreamTimeout(
                        f"the call exceeded the total timeout of {self._timeouts.total:g} s"
                    ) from None
                limit = timeouts.chunk if progress.emitted else timeouts.first_token
                if progress.emitted:
                    raise errors.StreamInterrupted(
                        f"the provider sent nothing for {limit:g} s"
                    ) from None
                message = f"{group}: no first delta within {limit:g} s"
                stream.record_no_first_delta(message)
                raise NoFirstDelta(message) from None
            answered_by = stream.answered_by()
            if answered_by:
                progress.model = answered_by
        finally:
            await stream.aclose()


def after_deltas(exc: Exception, emitted: int) -> errors.StreamInterrupted:
    """The error for a failure after ``emitted`` deltas were sent: always
    ``interrupted``, with the cause in the message; logs what is unexpected."""
    if isinstance(exc, errors.StreamInterrupted):
        cause = str(exc)
    else:
        mapped = errors.from_litellm(exc)
        if mapped is None:
            log.error("llmproxy_internal_error", error_type=type(exc).__name__, exc_info=exc)
            cause = errors.INTERNAL_MESSAGE
        else:
            cause = str(mapped)
    return errors.StreamInterrupted(
        f"the stream broke after {emitted} deltas, the answer is partial: {cause}"
    )


class RouterUpstream:
    """The LiteLLM Router as an :class:`Upstream`."""

    def __init__(self, router: Router) -> None:
        self._router = router

    async def open(self, arguments: dict[str, Any]) -> _RouterStream:
        stream = await self._router.acompletion(
            **arguments, stream=True, stream_options={"include_usage": True}
        )
        return _RouterStream(self._router, arguments["model"], stream)

    async def complete(self, arguments: dict[str, Any]) -> Any:
        return await self._router.acompletion(**arguments, stream=False)

    def fallbacks(self, group: str) -> list[str]:
        return fallback_groups(self._router, group)


class _RouterStream:
    """A Router stream (LiteLLM's stream wrapper) and the deployment behind it."""

    def __init__(self, router: Router, group: str, stream: Any) -> None:
        self._router = router
        self._group = group
        self._stream = stream
        self._hidden: Mapping[str, Any] = getattr(stream, "_hidden_params", None) or {}

    def chunks(self) -> AsyncIterator[Any]:
        return aiter(self._stream)

    def model_info(self) -> Mapping[str, Any]:
        deployment = deployment_of(self._router, self._hidden.get("model_id")) or {}
        info: Mapping[str, Any] = deployment.get("model_info") or {}
        return info

    def answered_by(self) -> str | None:
        # A fallback inside the Router's stream updates the wrapper's hidden
        # params to the deployment that really answered.
        hidden = getattr(self._stream, "_hidden_params", None) or self._hidden
        answered = hidden.get("litellm_model_name")
        return None if answered is None else str(answered)

    def record_no_first_delta(self, message: str) -> None:
        record_failure(
            self._router,
            self._hidden.get("model_id"),
            self._group,
            litellm_errors.Timeout(
                message, model=str(self._hidden.get("litellm_model_name")), llm_provider=""
            ),
        )

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class NoFirstDelta(Exception):
    """A deployment produced no first delta: none in time, or (``cause``)
    its stream broke first. The caller has seen nothing, so the call moves
    on to the group's next fallback; with none left it ends with ``cause``,
    or as timed out.

    An :class:`UpstreamStream` raises it from ``chunks()`` for a break
    that LiteLLM did not already fall back from (the fast path's streams).
    """

    def __init__(self, message: str, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class _LimitReached(Exception):
    def __init__(self, *, total: bool) -> None:
        super().__init__("total" if total else "limit")
        self.total = total


LIMIT_SLACK = 0.1
"""Share of a first-token or chunk limit the stream's timer may fire late."""


def _keep_due(
    timer: asyncio.Timeout, now: float, limit: float | None, deadline: float | None
) -> None:
    """Keep ``timer`` firing ``limit`` seconds after ``now`` (at most
    :data:`LIMIT_SLACK` of it later), and at the ``deadline`` at the latest.

    The timer moves only when it would fire too early or too late, to the
    latest time allowed: a steady stream moves it once every tenth of the
    limit instead of at every chunk.
    """
    due = latest = math.inf
    if limit is not None:
        due, latest = now + limit, now + limit * (1 + LIMIT_SLACK)
    if deadline is not None:
        due, latest = min(due, deadline), min(latest, deadline)
    when = timer.when()
    if latest == math.inf:
        if when is not None:
            timer.reschedule(None)
    elif when is None or when < due or when > latest:
        timer.reschedule(latest)


async def _bounded(awaitable: Awaitable[T], limit: float | None, deadline: float | None) -> T:
    """Await with the tighter of ``limit`` seconds and the ``deadline``.

    Raises :class:`_LimitReached` (``total`` says whether the deadline was
    the binding one); the awaited coroutine is cancelled.
    """
    remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
    waits = [w for w in (limit, remaining) if w is not None]
    if not waits:
        return await awaitable
    wait = min(waits)
    total = remaining is not None and remaining <= wait
    if wait <= 0:
        close = getattr(awaitable, "close", None)  # a coroutine never awaited warns
        if close is not None:
            close()
        raise _LimitReached(total=total)
    try:
        async with asyncio.timeout(wait):
            return await awaitable
    except TimeoutError:
        raise _LimitReached(total=total) from None
