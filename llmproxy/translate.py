"""Protobuf ⇄ LiteLLM: the servicer's requests and answers, translated.

Requests become the OpenAI-style keyword arguments the Router takes
(:func:`chat_arguments`, which validates them); LiteLLM's answers and the
plain deltas of :mod:`llmproxy.resilience` become messages. Only the
servicer (:mod:`llmproxy.service`) calls this module; nothing else in the
proxy sees protobuf.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from llmproxy import errors
from llmproxy.resilience import Delta, StreamProgress, ToolCallDelta
from llmproxy.router import DeploymentHealth, ModelDescription
from llmproxy.v1 import llmproxy_pb2

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})

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
    # Every field is read once: each read of a protobuf field makes a new
    # Python object, and a long session's prompt has thousands of messages.
    role, content, calls = message.role, message.content, message.tool_calls
    if role not in _ROLES:
        raise errors.InvalidRequest(
            f"messages[{index}].role={role!r} must be system, user, assistant or tool"
        )
    converted: dict[str, Any] = {"role": role, "content": content}
    if calls:
        if role != "assistant":
            raise errors.InvalidRequest(f"messages[{index}]: only assistant messages call tools")
        converted["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
            }
            for call in calls
        ]
        # OpenAI wants null, not "", beside tool calls.
        converted["content"] = content or None
    if role == "tool":
        tool_call_id = message.tool_call_id
        if not tool_call_id:
            raise errors.InvalidRequest(f"messages[{index}]: a tool message needs tool_call_id")
        converted["tool_call_id"] = tool_call_id
    name = message.name
    if name:
        converted["name"] = name
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


def end_message(
    progress: StreamProgress, token_counts: Sequence[int] = ()
) -> llmproxy_pb2.StreamChatResponse:
    """The last message of a stream that ``progress`` describes, with the
    ``token_counts`` the proxy made of the request's uncounted messages."""
    return llmproxy_pb2.StreamChatResponse(
        end=llmproxy_pb2.StreamEnd(
            finish_reason=progress.finish_reason or "stop",
            usage=llmproxy_pb2.Usage(**progress.usage),
            model=progress.model,
            token_counts=token_counts,
        )
    )


def _text_message(texts: list[str]) -> llmproxy_pb2.StreamChatResponse:
    # Set in place: a TextDelta built apart and copied in costs three times
    # as much, once per message written.
    message = llmproxy_pb2.StreamChatResponse()
    message.text.text = texts[0] if len(texts) == 1 else "".join(texts)
    return message


def chat_response(result: Any, requested: str) -> llmproxy_pb2.ChatResponse:
    """The message for LiteLLM's whole answer ``result`` to a call on group ``requested``."""
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


def embed_response(result: Any, requested: str) -> llmproxy_pb2.EmbedResponse:
    """The message for LiteLLM's embedding ``result`` on group ``requested``."""
    usage = getattr(result, "usage", None)
    hidden = getattr(result, "_hidden_params", None) or {}
    return llmproxy_pb2.EmbedResponse(
        embeddings=[llmproxy_pb2.Embedding(values=_vector(item)) for item in result.data or ()],
        model=str(hidden.get("litellm_model_name") or result.model or requested),
        usage=llmproxy_pb2.Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            total_tokens=int(getattr(usage, "total_tokens", 0) or 0),
        ),
    )


def models_response(models: Iterable[ModelDescription]) -> llmproxy_pb2.ListModelsResponse:
    """The ``ListModels`` answer."""
    return llmproxy_pb2.ListModelsResponse(
        models=[
            llmproxy_pb2.Model(
                name=model.name,
                provider=model.provider,
                context_window=model.context_window,
                supports_tools=model.supports_tools,
            )
            for model in models
        ]
    )


def health_response(
    deployments: Iterable[DeploymentHealth],
) -> llmproxy_pb2.GetDeploymentHealthResponse:
    """The ``GetDeploymentHealth`` answer."""
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
            for health in deployments
        ]
    )


def _vector(item: Any) -> list[float]:
    values = item.get("embedding") if isinstance(item, Mapping) else item.embedding
    return [float(v) for v in values or ()]
