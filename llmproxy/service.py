"""The gRPC servicer: protobuf in, LiteLLM Router calls, protobuf out.

Protobuf messages stop here. Requests become OpenAI-style dicts (what the
Router takes); streamed LiteLLM chunks become ``StreamChatResponse``
messages; exceptions become status codes through :mod:`llmproxy.errors`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

import grpc
import structlog
from litellm.router import Router

from llmproxy import errors
from llmproxy.router import describe_models, knows_model
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import REQUEST_ID_HEADER, metadata_value

log = structlog.get_logger("llmproxy")

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def chat_arguments(request: llmproxy_pb2.StreamChatRequest) -> dict[str, Any]:
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
    finish_reason: str = ""
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    def responses(self, chunk: Any) -> Iterator[llmproxy_pb2.StreamChatResponse]:
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
                yield llmproxy_pb2.StreamChatResponse(
                    text=llmproxy_pb2.TextDelta(text=delta.content)
                )
            for call in delta.tool_calls or ():
                function = call.function
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


class LlmProxyServicer(llmproxy_pb2_grpc.LlmProxyServiceServicer):
    """``llmproxy.v1.LlmProxyService`` on a LiteLLM Router.

    Every method is safe to cancel: cancelling a ``StreamChat`` call closes
    the provider stream (and with it the upstream HTTP request).
    """

    def __init__(self, router: Router) -> None:
        self._router = router

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
        bound = structlog.contextvars.bind_contextvars(
            request_id=metadata_value(context, REQUEST_ID_HEADER) or "", model=request.model
        )
        try:
            arguments = self._checked(chat_arguments(request))
            stream = await self._router.acompletion(
                **arguments, stream=True, stream_options={"include_usage": True}
            )
            try:
                async for chunk in stream:
                    for response in translation.responses(chunk):
                        await context.write(response)
                hidden = getattr(stream, "_hidden_params", None) or {}
                await context.write(translation.end(hidden.get("litellm_model_name")))
            finally:
                await _close(stream)
            outcome = "ok"
        except errors.ProxyError as exc:
            outcome = "refused"
            await _abort(context, exc)
        except Exception as exc:
            await _abort(context, exc)
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            log.info(
                "stream_chat_finished",
                outcome=outcome,
                chunks=translation.chunks,
                finish_reason=translation.finish_reason,
                answered_by=translation.model,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            structlog.contextvars.reset_contextvars(**bound)

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

    async def Embed(
        self, request: llmproxy_pb2.EmbedRequest, context: Context
    ) -> llmproxy_pb2.EmbedResponse:
        try:
            if not request.inputs:
                raise errors.InvalidRequest("inputs must not be empty")
            self._checked({"model": request.model})
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

    def _checked(self, arguments: dict[str, Any]) -> dict[str, Any]:
        model = arguments["model"]
        if not model:
            raise errors.InvalidRequest("model must be set")
        if not knows_model(self._router, model):
            names = ", ".join(self._router.get_model_names())
            raise errors.NotFound(f"model {model!r} is not configured (configured: {names})")
        return arguments


async def _abort(context: Context, exc: Exception) -> NoReturn:
    """End the call with the status for ``exc``; logs what is unexpected."""
    error = errors.from_litellm(exc)
    if error is None:
        log.error("llmproxy_internal_error", error_type=type(exc).__name__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in llmproxy")
    else:
        code = errors.grpc_status(error)
        log.info("llmproxy_call_failed", code=code.name, error_type=type(exc).__name__)
        await context.abort(code, str(error))
    raise AssertionError("context.abort returned")  # pragma: no cover


async def _close(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _vector(item: Any) -> list[float]:
    values = item.get("embedding") if isinstance(item, Mapping) else item.embedding
    return [float(v) for v in values or ()]
