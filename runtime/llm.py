"""The runtime's side of the LLM proxy: chat streaming as plain data.

:class:`LlmClient` calls ``llmproxy.v1.LlmProxyService`` through the generated
stub and turns its messages into the dataclasses below, and its failures into
:class:`runtime.errors.UpstreamError`. Cancelling the consumer cancels the
gRPC call, which cancels the provider request in the proxy.

A call made while the proxy is unreachable (restarting, or just back and
the channel still in its reconnect backoff) waits for it up to
``connect_timeout`` seconds instead of failing at once, then fails with
``llm_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh import tracing
from mesh.caller import CALLER
from mesh.grpc_server import internal_metadata
from runtime.errors import UpstreamError
from runtime.events import Usage
from runtime.llm_streams import ChatStreams, Unsupported, encode_varint
from runtime.metrics import RuntimeMetrics

_tracer = tracing.tracer("runtime.llm")

CONNECT_TIMEOUT = 10.0
"""Default seconds a call waits for an unreachable proxy: long enough for
a proxy's restart, short of a turn's whole model call."""


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A complete tool call as the model made it (arguments as its JSON text)."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation, OpenAI-style."""

    role: str
    content: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call, with its JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    index: int
    call_id: str
    name: str
    arguments_fragment: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    finish_reason: str
    usage: Usage
    model: str
    token_counts: tuple[int, ...] = ()
    """The proxy's counts of the messages a prompt sent uncounted
    (:class:`runtime.context.Prompt`), in their order."""


Chunk = TextChunk | ToolCallChunk | StreamEnd


class ChatModel(Protocol):
    """What a turn needs of a model: :class:`LlmClient`, or a test's scripted model."""

    async def context_window(self, model: str) -> int:
        """The model's context window in tokens, 0 when unknown."""
        ...

    def stream_chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """The completion's chunks as they arrive, the last a StreamEnd; raises
        :class:`~runtime.errors.UpstreamError`."""
        ...


# The proxy's trailing ``x-error-reason`` → (error code for the IDE,
# retryable). `interrupted` means deltas already arrived: the turn fails and
# what streamed is not kept as an answer.
ERROR_REASON_KEY = "x-error-reason"
_REASON_CODES: dict[str, tuple[str, bool]] = {
    "rate_limited": ("llm_rate_limited", True),
    "context_too_long": ("llm_context_too_long", False),
    "upstream_auth_failed": ("llm_auth_failed", False),
    "unavailable": ("llm_unavailable", True),
    "timed_out": ("llm_timeout", True),
    "bad_request": ("llm_bad_request", False),
    "model_not_found": ("llm_model_not_found", False),
    "interrupted": ("llm_interrupted", True),
}

# Without a reason (an older proxy, or a status from gRPC itself): by status.
_STATUS_REASONS: dict[grpc.StatusCode, tuple[str, bool]] = {
    grpc.StatusCode.UNAVAILABLE: ("llm_unavailable", True),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("llm_rate_limited", True),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("llm_timeout", True),
    grpc.StatusCode.INVALID_ARGUMENT: ("llm_bad_request", False),
    grpc.StatusCode.FAILED_PRECONDITION: ("llm_auth_failed", False),
    grpc.StatusCode.NOT_FOUND: ("llm_model_not_found", False),
    grpc.StatusCode.UNAUTHENTICATED: ("llm_proxy_refused", False),
}


def error_code(exc: grpc.aio.AioRpcError) -> tuple[str, bool]:
    """(error code for the IDE, retryable) for a failed proxy call: by the
    ``x-error-reason`` trailer when the proxy sent one, else by status."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_REASON_KEY and isinstance(value, str) and value in _REASON_CODES:
            return _REASON_CODES[value]
    return _STATUS_REASONS.get(exc.code(), ("llm_error", False))


def _upstream_error(exc: grpc.aio.AioRpcError) -> UpstreamError:
    code, retryable = error_code(exc)
    return UpstreamError(
        f"LLM proxy: {exc.details() or exc.code().name}", code=code, retryable=retryable
    )


def _to_proto(message: ChatMessage) -> llmproxy_pb2.ChatMessage:
    return llmproxy_pb2.ChatMessage(
        role=message.role,
        content=message.content,
        tool_calls=[
            llmproxy_pb2.ToolCall(
                id=call.call_id, name=call.name, arguments_json=call.arguments_json
            )
            for call in message.tool_calls
        ],
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


_MESSAGES_FIELD = b"\x12"  # StreamChatRequest.messages: field 2, length-delimited
_TOOLS_FIELD = b"\x1a"  # StreamChatRequest.tools: field 3, length-delimited
_COUNTS_FIELD = b"\x3a"  # StreamChatRequest.token_counts: field 7, packed


def encode_message(message: ChatMessage) -> bytes:
    """``message`` as one entry of ``StreamChatRequest.messages``, on the
    wire: encoded once per message, joined per call (:mod:`runtime.context`)."""
    payload = _to_proto(message).SerializeToString()
    return _MESSAGES_FIELD + encode_varint(len(payload)) + payload


def decode_messages(wire: bytes | bytearray) -> list[ChatMessage]:
    """The messages :func:`encode_message` wrote one after another in ``wire``
    (one parse of them all: a ``StreamChatRequest`` holding only messages)."""
    return [
        ChatMessage(
            entry.role,
            entry.content,
            tuple(ToolCallRequest(c.id, c.name, c.arguments_json) for c in entry.tool_calls),
            entry.tool_call_id,
            entry.name,
        )
        for entry in llmproxy_pb2.StreamChatRequest.FromString(bytes(wire)).messages
    ]


def encode_tool(tool: ToolSpec) -> bytes:
    """``tool`` as one entry of ``StreamChatRequest.tools``, on the wire."""
    payload = llmproxy_pb2.Tool(
        name=tool.name, description=tool.description, parameters_json=json.dumps(tool.parameters)
    ).SerializeToString()
    return _TOOLS_FIELD + encode_varint(len(payload)) + payload


def encode_counts(varints: Sequence[bytes | bytearray]) -> bytes:
    """``StreamChatRequest.token_counts`` on the wire, from the counts' varints
    (each alone, or runs of them already joined)."""
    packed = b"".join(varints)
    return _COUNTS_FIELD + encode_varint(len(packed)) + packed


def _caller(request_id: str | None) -> dict[str, str | None]:
    """The request id and user to forward: ``request_id`` if given, else
    the calling RPC's (:data:`mesh.caller.CALLER`), so the proxy's logs
    carry both."""
    caller = CALLER.get()
    if request_id is None:
        request_id = caller.request_id
    return {"request_id": request_id, "user": caller.user}


class LlmClient:
    """Streams chat completions from the LLM proxy over ``channel``.

    Every call carries the request id (given, or the calling RPC's) and, when
    tracing is on, the ``llm.call`` span's ``traceparent``. ``timeout``
    bounds a whole call, the wait for an unreachable proxy included;
    ``connect_timeout`` (at most ``timeout``) bounds that wait.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        internal_api_key: str,
        timeout: float,
        connect_timeout: float = CONNECT_TIMEOUT,
        metrics: RuntimeMetrics | None = None,
        multiplex: bool = False,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
        self._channel = channel
        self._stub = llmproxy_pb2_grpc.LlmProxyServiceStub(channel)
        # StreamChat with a request already serialized: a prompt's messages
        # (runtime.context) and the tools are encoded once each, not on every call.
        self._stream_encoded: grpc.aio.UnaryStreamMultiCallable[
            bytes, llmproxy_pb2.StreamChatResponse
        ] = channel.unary_stream(
            "/llmproxy.v1.LlmProxyService/StreamChat",
            request_serializer=None,
            response_deserializer=llmproxy_pb2.StreamChatResponse.FromString,
        )
        self._key = internal_api_key
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self._windows: dict[str, int] = {}
        self._tools: dict[str, tuple[ToolSpec, bytes]] = {}
        """Each tool's encoding, by name, with the spec it was made from (one
        entry per tool name ever offered: the built-in and declared tools)."""
        self._metrics = metrics if metrics is not None else RuntimeMetrics()
        self._streams = (
            ChatStreams(channel, internal_metadata(internal_api_key)) if multiplex else None
        )
        """Model calls on StreamChats streams (:mod:`runtime.llm_streams`);
        None, or no longer ``supported``: one StreamChat call each."""

    async def aclose(self) -> None:
        """Close the StreamChats streams (calls still on them fail)."""
        if self._streams is not None:
            await self._streams.aclose()

    async def _connect(self) -> None:
        """Return once the channel to the proxy is ready.

        A fail-fast call on a channel that cannot connect now fails at once,
        and after a proxy restarts the channel reconnects only when its
        backoff (up to two seconds, :func:`mesh.grpc_server.channel_options`)
        runs out; so a call first waits for the channel, for at most
        ``connect_timeout`` seconds. Raises UpstreamError (``llm_unavailable``,
        retryable) when it is still not ready then. Safe to cancel.
        """
        if self._channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout):
                await self._channel.channel_ready()
                return
        state = self._channel.get_state().name.lower()
        raise UpstreamError(
            f"LLM proxy unreachable for {self._connect_timeout:g}s (channel {state})",
            code="llm_unavailable",
            retryable=True,
        )

    async def context_window(self, model: str) -> int:
        """The model group's context window in tokens, 0 when unknown.

        Asked once per group (ListModels) and remembered; a failed ask is
        not remembered, and answers 0 (no limit) this time. Raises
        UpstreamError (``llm_unavailable``) when the proxy stays unreachable
        (see :meth:`_connect`): the model call that would follow cannot
        succeed either.
        """
        if model in self._windows:
            return self._windows[model]
        started = time.monotonic()
        await self._connect()
        try:
            listing = await self._stub.ListModels(
                llmproxy_pb2.ListModelsRequest(),
                metadata=internal_metadata(self._key, **_caller(None)),
                timeout=max(min(self._timeout, 10.0) - (time.monotonic() - started), 0.001),
            )
        except grpc.aio.AioRpcError:
            return 0
        for item in listing.models:
            self._windows[item.name] = item.context_window
        return self._windows.setdefault(model, 0)

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """One embedding per text, in order, from the model group ``model``.

        Raises UpstreamError when the proxy fails or answers with a different
        number of vectors. Safe to cancel.
        """
        started = time.monotonic()
        await self._connect()
        try:
            answer = await self._stub.Embed(
                llmproxy_pb2.EmbedRequest(model=model, inputs=list(texts)),
                metadata=internal_metadata(self._key, **_caller(None)),
                timeout=max(self._timeout - (time.monotonic() - started), 0.001),
            )
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        vectors = [list(item.values) for item in answer.embeddings]
        if len(vectors) != len(texts):
            raise UpstreamError(
                f"{len(vectors)} embeddings for {len(texts)} texts",
                code="llm_error",
                retryable=False,
            )
        return vectors

    def _encoded_tools(self, tools: Sequence[ToolSpec]) -> bytes:
        """``tools`` on the wire. A tool's schema is encoded once, not on every
        call: its encoding is kept while the tool keeps its description and
        the very same parameters (a tool's schema is never changed in place)."""
        parts = []
        for tool in tools:
            kept = self._tools.get(tool.name)
            if (
                kept is None
                or kept[0].parameters is not tool.parameters
                or kept[0].description != tool.description
            ):
                kept = self._tools[tool.name] = (tool, encode_tool(tool))
            parts.append(kept[1])
        return b"".join(parts)

    async def stream_chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Yield the completion's chunks as they arrive; the last is StreamEnd.

        Raises UpstreamError when the proxy fails. Safe to cancel: the call
        is cancelled with the consumer. Use it under ``contextlib.aclosing``
        when the consumer may stop early.
        """
        request = llmproxy_pb2.StreamChatRequest(model=model)
        # A prompt of runtime.context carries its messages already encoded.
        encoded = getattr(messages, "encoded", None)
        if not isinstance(encoded, bytes):
            request.messages.extend(_to_proto(m) for m in messages)
            encoded = b""
        payload = request.SerializeToString() + self._encoded_tools(tools) + encoded
        span = _tracer.start_span("llm.call", attributes={"llm.model": model})
        caller = _caller(request_id)
        started = time.monotonic()
        responses: AsyncIterable[llmproxy_pb2.StreamChatResponse] | None = None
        deltas = 0
        first = True
        outcome = "cancelled"
        try:
            await self._connect()
            timeout = max(self._timeout - (time.monotonic() - started), 0.001)
            responses = self._responses(payload, caller, span, timeout)
            async for response in responses:
                if first:
                    first = False
                    self._metrics.time_to_first_token.labels(model).observe(
                        time.monotonic() - started
                    )
                deltas += 1
                kind = response.WhichOneof("chunk")
                if kind == "text":
                    yield TextChunk(response.text.text)
                elif kind == "tool_call":
                    delta = response.tool_call
                    yield ToolCallChunk(delta.index, delta.id, delta.name, delta.arguments_fragment)
                elif kind == "end":
                    deltas -= 1  # the closing message is not a delta
                    end = response.end
                    yield StreamEnd(
                        end.finish_reason,
                        Usage(end.usage.prompt_tokens, end.usage.completion_tokens),
                        end.model,
                        tuple(end.token_counts),
                    )
            outcome = "ok"
        except (grpc.aio.AioRpcError, UpstreamError) as exc:
            failure = exc if isinstance(exc, UpstreamError) else _upstream_error(exc)
            outcome = failure.code
            span.set_status(trace.StatusCode.ERROR, failure.code)
            raise failure from None
        finally:
            if isinstance(responses, grpc.aio.UnaryStreamCall):
                responses.cancel()
            elif isinstance(responses, AsyncGenerator):  # _multiplexed
                await responses.aclose()
            # Counted once per call, not per delta.
            self._metrics.tokens_streamed.labels(model).inc(max(0, deltas))
            self._metrics.llm_calls.labels(model, outcome).inc()
            span.set_attribute("llm.deltas", deltas)
            span.end()

    def _responses(
        self,
        payload: bytes,
        caller: dict[str, str | None],
        span: trace.Span,
        limit: float,
    ) -> AsyncIterable[llmproxy_pb2.StreamChatResponse]:
        """The call's responses: on a StreamChats stream, or as one StreamChat
        call (the default, iterated directly: no layer per token)."""
        context = trace.set_span_in_context(span)
        if self._streams is not None and self._streams.supported:
            return self._multiplexed(self._streams, payload, caller, context, limit)
        return self._call(payload, caller, context, limit)

    def _call(
        self,
        payload: bytes,
        caller: dict[str, str | None],
        context: otel_context.Context,
        limit: float,
    ) -> grpc.aio.UnaryStreamCall[Any, llmproxy_pb2.StreamChatResponse]:
        metadata = tracing.inject(internal_metadata(self._key, **caller), context)
        return self._stream_encoded(payload, metadata=metadata, timeout=limit)

    async def _multiplexed(
        self,
        streams: ChatStreams,
        payload: bytes,
        caller: dict[str, str | None],
        context: otel_context.Context,
        limit: float,
    ) -> AsyncGenerator[llmproxy_pb2.StreamChatResponse, None]:
        """The call on a StreamChats stream; a proxy without them gets it as
        one StreamChat call (nothing of it was sent)."""
        calling = streams.call(
            payload,
            request_id=caller["request_id"] or "",
            user=caller["user"] or "",
            traceparent=tracing.traceparent(context),
            limit=limit,
        )
        try:
            async for response in calling:
                yield response
            return
        except Unsupported:
            pass
        finally:
            await calling.aclose()
        call = self._call(payload, caller, context, limit)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()
