"""The gRPC servicer: protobuf in, LiteLLM Router calls, protobuf out.

Protobuf messages stop here. Requests become OpenAI-style dicts (what the
Router takes); streamed LiteLLM chunks become ``StreamChatResponse``
messages; exceptions become status codes (plus the ``x-error-reason``
trailer) through :mod:`llmproxy.errors`.

Deadlines and fallbacks are :mod:`llmproxy.resilience` (on plain deltas,
which :func:`merged` turns into messages); the context window is
:mod:`llmproxy.budget`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn, TypeAlias

import grpc
import structlog
from litellm.router import Router
from opentelemetry import trace

from llmproxy import errors
from llmproxy.budget import ContextBudget
from llmproxy.metrics import ProxyMetrics
from llmproxy.resilience import (
    Delta,
    ResilientUpstream,
    RouterUpstream,
    StreamProgress,
    StreamTimeouts,
    ToolCallDelta,
    after_deltas,
)
from llmproxy.router import deployment_health, describe_models
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


Outgoing: TypeAlias = Delta | llmproxy_pb2.StreamChatResponse
"""One item of a call's outbox: a delta, or a message written as is."""


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
        if isinstance(item, ToolCallDelta):
            yield _tool_call_message(item)
        else:
            yield item
    if texts:
        yield _text_message(texts)


def _tool_call_message(delta: ToolCallDelta) -> llmproxy_pb2.StreamChatResponse:
    return llmproxy_pb2.StreamChatResponse(
        tool_call=llmproxy_pb2.ToolCallDelta(
            index=delta.index,
            id=delta.id,
            name=delta.name,
            arguments_fragment=delta.arguments_fragment,
        )
    )


def _end_message(progress: StreamProgress) -> llmproxy_pb2.StreamChatResponse:
    return llmproxy_pb2.StreamChatResponse(
        end=llmproxy_pb2.StreamEnd(
            finish_reason=progress.finish_reason or "stop",
            usage=llmproxy_pb2.Usage(**progress.usage),
            model=progress.model,
        )
    )


def _text_message(texts: list[str]) -> llmproxy_pb2.StreamChatResponse:
    return llmproxy_pb2.StreamChatResponse(text=llmproxy_pb2.TextDelta(text="".join(texts)))


_Outbox: TypeAlias = Outbox[Outgoing, llmproxy_pb2.StreamChatResponse]


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
        self._metrics = metrics if metrics is not None else ProxyMetrics()
        self._upstream = ResilientUpstream(
            RouterUpstream(router),
            timeouts or StreamTimeouts(),
            on_fallback=lambda group, to: self._metrics.fallbacks.labels(group, to).inc(),
        )
        self._budget = ContextBudget(router)

    async def StreamChat(  # type: ignore[override]  # writes with context.write
        self, request: llmproxy_pb2.StreamChatRequest, context: Context
    ) -> None:
        # A coroutine writing with context.write, not an async generator: a
        # cancellation then lands in this frame, so `finally` closes the
        # provider stream at once instead of whenever the generator is
        # garbage-collected.
        started = time.monotonic()
        progress = StreamProgress()
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
            await self._upstream.stream(arguments, progress, outbox.send)
            outbox.put(_end_message(progress))
            await outbox.close()
            outcome = status = "ok"
        except Exception as exc:
            error = after_deltas(exc, progress.emitted) if progress.emitted else exc
            outcome = "interrupted" if progress.emitted else "failed"
            status = "interrupted" if progress.emitted else _reason(exc)
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
            span.set_attribute("llm.deltas", progress.emitted)
            span.set_attribute("llm.answered_by", progress.model)
            span.end()
            log.info(
                "stream_chat_finished",
                outcome=outcome,
                chunks=progress.chunks,
                deltas=progress.emitted,
                writes=outbox.writes,
                finish_reason=progress.finish_reason,
                answered_by=progress.model,
                duration_ms=round(elapsed * 1000, 1),
            )
            structlog.contextvars.reset_contextvars(**bound)

    async def Chat(
        self, request: llmproxy_pb2.ChatRequest, context: Context
    ) -> llmproxy_pb2.ChatResponse:
        bound = structlog.contextvars.bind_contextvars(
            request_id=metadata_value(context, REQUEST_ID_HEADER) or "", model=request.model
        )
        try:
            arguments = self._budget.fitted(chat_arguments(request))
            result = await self._upstream.complete(arguments)
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


def _reason(exc: Exception) -> str:
    """The metrics status of a failed call: its error reason, or ``internal``."""
    mapped = errors.from_litellm(exc)
    return "internal" if mapped is None else mapped.reason


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


def _vector(item: Any) -> list[float]:
    values = item.get("embedding") if isinstance(item, Mapping) else item.embedding
    return [float(v) for v in values or ()]
