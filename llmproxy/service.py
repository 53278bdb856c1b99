"""The gRPC servicer: protobuf in, LiteLLM Router calls, protobuf out.

Protobuf messages stop here. Requests become OpenAI-style dicts (what the
Router takes); streamed LiteLLM chunks become ``StreamChatResponse``
messages; exceptions become status codes (plus the ``x-error-reason``
trailer) through :mod:`llmproxy.errors`.

Resilience is split between LiteLLM and this module. The Router retries
(:class:`llmproxy.router.ProxyRouter` says which errors), falls back to other
model groups, and cools deployments down; all of that happens before the
first chunk arrives or, for a stream LiteLLM sees break before any content,
inside its stream. This module adds what LiteLLM does not have: a deadline
for the first delta, one between deltas, and one for the whole call. A
first-delta timeout counts as a failure of the deployment (its cooldown
judges it) and moves the call to the group's next fallback, transparently,
because the caller has seen nothing yet. Once a delta has been sent, any
failure ends the call with ``interrupted``: a partial answer is never
dressed up as a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
import structlog
from litellm import exceptions as litellm_errors
from litellm.router import Router
from opentelemetry import trace

from llmproxy import errors
from llmproxy.budget import ContextBudget
from llmproxy.metrics import ProxyMetrics
from llmproxy.router import (
    deployment_health,
    deployment_of,
    describe_models,
    fallback_groups,
    record_failure,
)
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh import tracing
from mesh.grpc_server import REQUEST_ID_HEADER, metadata_value
from mesh.outbox import Outbox

log = structlog.get_logger("llmproxy")
_tracer = tracing.tracer("llmproxy.service")

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
ChatRequest: TypeAlias = llmproxy_pb2.StreamChatRequest | llmproxy_pb2.ChatRequest
T = TypeVar("T")


@dataclass(frozen=True)
class StreamTimeouts:
    """Seconds the proxy waits on a provider; None means no limit.

    ``first_token``: from the call to the first delta (text or tool call);
    ``chunk``: between deltas; ``total``: the whole call, retries and
    fallbacks included. A deployment's ``model_info`` may override the first
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


def chat_arguments(request: ChatRequest) -> dict[str, Any]:
    """Router ``acompletion`` keyword arguments for ``request``.

    Raises :class:`errors.InvalidRequest` naming the offending field.
    """
    if not request.model:
        raise errors.InvalidRequest("model must be set")
    if not request.messages:
        raise errors.InvalidRequest("messages must not be empty")
    arguments: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m, i) for i, m in enumerate(request.messages)],
    }
    if request.tools:
        arguments["tools"] = [_tool(t, i) for i, t in enumerate(request.tools)]
    if request.tool_choice:
        if request.tool_choice not in _TOOL_CHOICES:
            raise errors.InvalidRequest(
                f"tool_choice={request.tool_choice!r} must be auto, none, required or empty"
            )
        arguments["tool_choice"] = request.tool_choice
    if request.HasField("temperature"):
        arguments["temperature"] = request.temperature
    if request.HasField("max_tokens"):
        arguments["max_tokens"] = request.max_tokens
    return arguments


def _message(message: llmproxy_pb2.ChatMessage, index: int) -> dict[str, Any]:
    if message.role not in _ROLES:
        raise errors.InvalidRequest(
            f"messages[{index}].role={message.role!r} must be system, user, assistant or tool"
        )
    converted: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        if message.role != "assistant":
            raise errors.InvalidRequest(f"messages[{index}]: only assistant messages call tools")
        converted["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
            }
            for call in message.tool_calls
        ]
        # OpenAI wants null, not "", beside tool calls.
        converted["content"] = message.content or None
    if message.role == "tool":
        if not message.tool_call_id:
            raise errors.InvalidRequest(f"messages[{index}]: a tool message needs tool_call_id")
        converted["tool_call_id"] = message.tool_call_id
    if message.name:
        converted["name"] = message.name
    return converted


def _tool(tool: llmproxy_pb2.Tool, index: int) -> dict[str, Any]:
    if not tool.name:
        raise errors.InvalidRequest(f"tools[{index}].name must be set")
    try:
        parameters = json.loads(tool.parameters_json) if tool.parameters_json else {}
    except json.JSONDecodeError as exc:
        raise errors.InvalidRequest(
            f"tools[{index}] ({tool.name}): parameters_json is not valid JSON: {exc.msg}"
        ) from None
    if not isinstance(parameters, dict):
        raise errors.InvalidRequest(
            f"tools[{index}] ({tool.name}): parameters_json must be a JSON object"
        )
    function: dict[str, Any] = {"name": tool.name, "parameters": parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


@dataclass
class StreamTranslation:
    """Turns LiteLLM stream chunks into ``StreamChatResponse`` messages.

    Remembers what only arrives once (finish reason, usage, model) for
    :meth:`end`.
    """

    chunks: int = 0
    emitted: int = 0
    finish_reason: str = ""
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    def responses(self, chunk: Any) -> Iterator[str | llmproxy_pb2.StreamChatResponse]:
        """What ``chunk`` carries: text deltas as ``str`` (the outbox merges
        them into ``TextDelta`` messages), every other delta as a message."""
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
                yield llmproxy_pb2.StreamChatResponse(
                    tool_call=llmproxy_pb2.ToolCallDelta(
                        index=int(call.index or 0),
                        id=call.id or "",
                        name=(function.name if function else None) or "",
                        arguments_fragment=(function.arguments if function else None) or "",
                    )
                )

    def end(self, answered_by: str | None) -> llmproxy_pb2.StreamChatResponse:
        """The closing message; ``answered_by`` is the deployment's model string
        (``openai/gpt-4o``) when LiteLLM reports it, else the chunks' model."""
        if answered_by:
            self.model = answered_by
        return llmproxy_pb2.StreamChatResponse(
            end=llmproxy_pb2.StreamEnd(
                finish_reason=self.finish_reason or "stop",
                usage=llmproxy_pb2.Usage(**self.usage),
                model=self.model,
            )
        )


Outgoing: TypeAlias = str | llmproxy_pb2.StreamChatResponse
"""One item of a call's outbox: a text delta, or a message written as is."""


def merged(batch: list[Outgoing]) -> Iterator[llmproxy_pb2.StreamChatResponse]:
    """The messages for ``batch``: each run of text deltas as one ``TextDelta``."""
    texts: list[str] = []
    for item in batch:
        if isinstance(item, str):
            texts.append(item)
            continue
        if texts:
            yield _text_message(texts)
            texts = []
        yield item
    if texts:
        yield _text_message(texts)


def _text_message(texts: list[str]) -> llmproxy_pb2.StreamChatResponse:
    return llmproxy_pb2.StreamChatResponse(text=llmproxy_pb2.TextDelta(text="".join(texts)))


_Outbox: TypeAlias = Outbox[Outgoing, llmproxy_pb2.StreamChatResponse]


class _NoFirstDelta(Exception):
    """A deployment produced no delta in time; the caller has seen nothing."""


class _LimitReached(Exception):
    def __init__(self, *, total: bool) -> None:
        super().__init__("total" if total else "limit")
        self.total = total


class LlmProxyServicer(llmproxy_pb2_grpc.LlmProxyServiceServicer):
    """``llmproxy.v1.LlmProxyService`` on a LiteLLM Router.

    Every method is safe to cancel: cancelling a ``StreamChat`` call closes
    the provider stream (and with it the upstream HTTP request).
    """

    def __init__(
        self,
        router: Router,
        timeouts: StreamTimeouts | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self._router = router
        self._timeouts = timeouts or StreamTimeouts()
        self._metrics = metrics if metrics is not None else ProxyMetrics()
        self._budget = ContextBudget(router)

    async def StreamChat(  # type: ignore[override]  # writes with context.write
        self, request: llmproxy_pb2.StreamChatRequest, context: Context
    ) -> None:
        # A coroutine writing with context.write, not an async generator: a
        # cancellation then lands in this frame, so `finally` closes the
        # provider stream at once instead of whenever the generator is
        # garbage-collected.
        started = time.monotonic()
        translation = StreamTranslation()
        outcome = "error"
        status = "cancelled"
        bound = structlog.contextvars.bind_contextvars(
            request_id=metadata_value(context, REQUEST_ID_HEADER) or "", model=request.model
        )
        span = _tracer.start_span("stream_chat", attributes={"llm.model": request.model})
        # Deltas go out through the outbox: at once while the stream keeps
        # up, merged while a write is still in flight (see mesh.outbox).
        outbox: _Outbox = Outbox(context.write, merged)
        try:
            arguments = self._budget.fitted(chat_arguments(request))
            await self._stream(arguments, translation, outbox)
            await outbox.close()
            outcome = status = "ok"
        except Exception as exc:
            error = _after_deltas(exc, translation) if translation.emitted else exc
            outcome = "interrupted" if translation.emitted else "failed"
            status = "interrupted" if translation.emitted else _reason(exc)
            span.set_status(trace.StatusCode.ERROR, status)
            # The deltas produced before the failure still go first.
            with contextlib.suppress(Exception):
                await outbox.close()
            await _abort(context, error)
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            outbox.cancel()
            elapsed = time.monotonic() - started
            self._metrics.calls.labels(request.model, status).inc()
            self._metrics.duration.labels(request.model).observe(elapsed)
            span.set_attribute("llm.deltas", translation.emitted)
            span.set_attribute("llm.answered_by", translation.model)
            span.end()
            log.info(
                "stream_chat_finished",
                outcome=outcome,
                chunks=translation.chunks,
                deltas=translation.emitted,
                writes=outbox.writes,
                finish_reason=translation.finish_reason,
                answered_by=translation.model,
                duration_ms=round(elapsed * 1000, 1),
            )
            structlog.contextvars.reset_contextvars(**bound)

    async def _stream(
        self, arguments: dict[str, Any], translation: StreamTranslation, outbox: _Outbox
    ) -> None:
        """Stream from the group, then from its fallbacks while no delta was sent."""
        total = self._timeouts.total
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        group = arguments["model"]
        tried = [group]
        while True:
            try:
                await self._stream_once(
                    {**arguments, "model": group}, translation, outbox, deadline
                )
                return
            except _NoFirstDelta as exc:
                following = [g for g in fallback_groups(self._router, tried[0]) if g not in tried]
                if not following:
                    raise errors.UpstreamTimeout(str(exc)) from None
                log.warning(
                    "stream_fallback", from_group=group, to_group=following[0], cause=str(exc)
                )
                self._metrics.fallbacks.labels(group, following[0]).inc()
                group = following[0]
                tried.append(group)

    async def _stream_once(
        self,
        arguments: dict[str, Any],
        translation: StreamTranslation,
        outbox: _Outbox,
        deadline: float | None,
    ) -> None:
        group = arguments["model"]
        try:
            stream = await _bounded(
                self._router.acompletion(
                    **arguments, stream=True, stream_options={"include_usage": True}
                ),
                None,
                deadline,
            )
        except _LimitReached:
            raise errors.UpstreamTimeout(
                f"no answer within the total timeout of {self._timeouts.total:g} s"
            ) from None
        try:
            hidden = getattr(stream, "_hidden_params", None) or {}
            model_id = hidden.get("model_id")
            deployment = deployment_of(self._router, model_id) or {}
            timeouts = self._timeouts.for_deployment(deployment.get("model_info") or {})
            iterator = aiter(stream)
            while True:
                limit = timeouts.chunk if translation.emitted else timeouts.first_token
                try:
                    chunk = await _bounded(anext(iterator), limit, deadline)
                except StopAsyncIteration:
                    break
                except _LimitReached as reached:
                    if reached.total:
                        raise errors.UpstreamTimeout(
                            f"the call exceeded the total timeout of {self._timeouts.total:g} s"
                        ) from None
                    if translation.emitted:
                        raise errors.StreamInterrupted(
                            f"the provider sent nothing for {limit:g} s"
                        ) from None
                    message = f"{group}: no first delta within {limit:g} s"
                    record_failure(
                        self._router,
                        model_id,
                        group,
                        litellm_errors.Timeout(
                            message, model=str(hidden.get("litellm_model_name")), llm_provider=""
                        ),
                    )
                    raise _NoFirstDelta(message) from None
                except litellm_errors.Timeout as exc:
                    # The HTTP read timeout (LiteLLM's stream_timeout) fired
                    # inside the stream; LiteLLM raises it without falling
                    # back. Before any delta it is a first-delta timeout.
                    if translation.emitted:
                        raise
                    raise _NoFirstDelta(f"{group}: {exc.message.splitlines()[0]}") from None
                for response in translation.responses(chunk):
                    await outbox.send(response)
            # A fallback inside the Router's stream updates the wrapper's
            # hidden params to the deployment that really answered.
            hidden = getattr(stream, "_hidden_params", None) or hidden
            outbox.put(translation.end(hidden.get("litellm_model_name")))
        finally:
            await _close(stream)

    async def Chat(
        self, request: llmproxy_pb2.ChatRequest, context: Context
    ) -> llmproxy_pb2.ChatResponse:
        bound = structlog.contextvars.bind_contextvars(
            request_id=metadata_value(context, REQUEST_ID_HEADER) or "", model=request.model
        )
        try:
            arguments = self._budget.fitted(chat_arguments(request))
            total = self._timeouts.total
            deadline = None if total is None else asyncio.get_running_loop().time() + total
            try:
                result = await _bounded(
                    self._router.acompletion(**arguments, stream=False), None, deadline
                )
            except _LimitReached:
                raise errors.UpstreamTimeout(
                    f"no answer within the total timeout of {total:g} s"
                ) from None
        except Exception as exc:
            self._metrics.calls.labels(request.model, _reason(exc)).inc()
            await _abort(context, exc)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        self._metrics.calls.labels(request.model, "ok").inc()
        return _chat_response(result, request.model)

    async def ListModels(
        self, request: llmproxy_pb2.ListModelsRequest, context: Context
    ) -> llmproxy_pb2.ListModelsResponse:
        return llmproxy_pb2.ListModelsResponse(
            models=[
                llmproxy_pb2.Model(
                    name=model.name,
                    provider=model.provider,
                    context_window=model.context_window,
                    supports_tools=model.supports_tools,
                )
                for model in describe_models(self._router)
            ]
        )

    async def GetDeploymentHealth(
        self, request: llmproxy_pb2.GetDeploymentHealthRequest, context: Context
    ) -> llmproxy_pb2.GetDeploymentHealthResponse:
        return llmproxy_pb2.GetDeploymentHealthResponse(
            deployments=[
                llmproxy_pb2.DeploymentHealth(
                    id=health.id,
                    model_name=health.model_name,
                    model=health.model,
                    state=(
                        llmproxy_pb2.DEPLOYMENT_STATE_COOLING_DOWN
                        if health.cooling_down
                        else llmproxy_pb2.DEPLOYMENT_STATE_HEALTHY
                    ),
                    cooldown_remaining_seconds=health.cooldown_remaining,
                    last_error_status=health.last_error_status,
                    last_error=health.last_error,
                    failures_this_minute=health.failures_this_minute,
                    successes_this_minute=health.successes_this_minute,
                )
                for health in deployment_health(self._router)
            ]
        )

    async def Embed(
        self, request: llmproxy_pb2.EmbedRequest, context: Context
    ) -> llmproxy_pb2.EmbedResponse:
        try:
            if not request.inputs:
                raise errors.InvalidRequest("inputs must not be empty")
            self._budget.require_model(request.model)
            result = await self._router.aembedding(model=request.model, input=list(request.inputs))
        except Exception as exc:
            await _abort(context, exc)
        usage = getattr(result, "usage", None)
        hidden = getattr(result, "_hidden_params", None) or {}
        return llmproxy_pb2.EmbedResponse(
            embeddings=[llmproxy_pb2.Embedding(values=_vector(item)) for item in result.data or ()],
            model=str(hidden.get("litellm_model_name") or result.model or request.model),
            usage=llmproxy_pb2.Usage(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                total_tokens=int(getattr(usage, "total_tokens", 0) or 0),
            ),
        )


async def _bounded(
    awaitable: Coroutine[Any, Any, T], limit: float | None, deadline: float | None
) -> T:
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
        awaitable.close()
        raise _LimitReached(total=total)
    try:
        async with asyncio.timeout(wait):
            return await awaitable
    except TimeoutError:
        raise _LimitReached(total=total) from None


def _reason(exc: Exception) -> str:
    """The metrics status of a failed call: its error reason, or ``internal``."""
    mapped = errors.from_litellm(exc)
    return "internal" if mapped is None else mapped.reason


def _after_deltas(exc: Exception, translation: StreamTranslation) -> errors.ProxyError:
    """The error for a failure after ``translation`` sent deltas: always
    ``interrupted``, with the cause in the message."""
    if isinstance(exc, errors.StreamInterrupted):
        cause = str(exc)
    else:
        mapped = errors.from_litellm(exc)
        if mapped is None:
            log.error("llmproxy_internal_error", error_type=type(exc).__name__, exc_info=exc)
            cause = "internal error in llmproxy"
        else:
            cause = str(mapped)
    return errors.StreamInterrupted(
        f"the stream broke after {translation.emitted} deltas, the answer is partial: {cause}"
    )


def _chat_response(result: Any, requested: str) -> llmproxy_pb2.ChatResponse:
    choice = (result.choices or [None])[0]
    message = getattr(choice, "message", None)
    calls = [
        llmproxy_pb2.ToolCall(
            id=call.id or "",
            name=(call.function.name if call.function else None) or "",
            arguments_json=(call.function.arguments if call.function else None) or "",
        )
        for call in (getattr(message, "tool_calls", None) or ())
    ]
    usage = getattr(result, "usage", None)
    hidden = getattr(result, "_hidden_params", None) or {}
    return llmproxy_pb2.ChatResponse(
        message=llmproxy_pb2.ChatMessage(
            role="assistant", content=getattr(message, "content", None) or "", tool_calls=calls
        ),
        finish_reason=str(getattr(choice, "finish_reason", None) or "stop"),
        usage=llmproxy_pb2.Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            total_tokens=int(getattr(usage, "total_tokens", 0) or 0),
        ),
        model=str(hidden.get("litellm_model_name") or result.model or requested),
    )


async def _abort(context: Context, exc: Exception) -> NoReturn:
    """End the call with the status and ``x-error-reason`` for ``exc``; logs
    what is unexpected."""
    error = errors.from_litellm(exc)
    if error is None:
        log.error("llmproxy_internal_error", error_type=type(exc).__name__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in llmproxy")
    else:
        code = errors.grpc_status(error)
        log.info(
            "llmproxy_call_failed",
            code=code.name,
            reason=error.reason,
            error_type=type(exc).__name__,
        )
        await context.abort(code, str(error), trailing_metadata=errors.trailing_metadata(error))
    raise AssertionError("context.abort returned")  # pragma: no cover


async def _close(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _vector(item: Any) -> list[float]:
    values = item.get("embedding") if isinstance(item, Mapping) else item.embedding
    return [float(v) for v in values or ()]
