"""The gRPC servicer: ``llmproxy.v1.LlmProxyService`` on a LiteLLM Router.

Protobuf stops here. :mod:`llmproxy.translate` turns requests into the
Router's keyword arguments and answers into messages;
:mod:`llmproxy.budget` fits the prompt to the model's context window;
:mod:`llmproxy.resilience` streams with the proxy's deadlines and
fallbacks, on plain deltas. Every RPC runs inside
:func:`llmproxy.errors.grpc_boundary`, where an exception becomes a status
code (plus the ``x-error-reason`` trailer); a call on a ``StreamChats``
stream ends with the same code, message and reason in a ``ChatStatus``
(both from :func:`llmproxy.errors.failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeAlias

import grpc
import structlog
from litellm.router import Router
from opentelemetry import context as otel_context
from opentelemetry import trace

from llmproxy import errors, translate
from llmproxy.budget import ContextBudget
from llmproxy.errors import Context
from llmproxy.metrics import ProxyMetrics
from llmproxy.resilience import (
    ResilientUpstream,
    RouterUpstream,
    StreamProgress,
    StreamTimeouts,
    Upstream,
    after_deltas,
)
from llmproxy.router import deployment_health, describe_models
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh import tracing
from mesh.grpc_server import REQUEST_ID_HEADER, metadata_value
from mesh.outbox import Outbox

log = structlog.get_logger("llmproxy")
_tracer = tracing.tracer("llmproxy.service")


_Outbox: TypeAlias = Outbox[translate.Outgoing, llmproxy_pb2.StreamChatResponse]
_Write: TypeAlias = Callable[[llmproxy_pb2.StreamChatResponse], Awaitable[object]]

STREAM_CALL_LIMIT = 1000
"""Default for the most calls in progress on one ``StreamChats`` stream
(``max_concurrent_rpcs``, as StreamChat calls are limited)."""


class LlmProxyServicer(llmproxy_pb2_grpc.LlmProxyServiceServicer):
    """``llmproxy.v1.LlmProxyService`` on a LiteLLM Router.

    Calls go to ``upstream`` (default: the Router's full path,
    :class:`RouterUpstream`; in production
    :class:`llmproxy.fastpath.FastPathUpstream` unless the fast path is
    switched off). Every method is safe to cancel: cancelling a
    ``StreamChat`` call closes the provider stream (and with it the upstream
    HTTP request).
    """

    def __init__(
        self,
        router: Router,
        timeouts: StreamTimeouts | None = None,
        metrics: ProxyMetrics | None = None,
        upstream: Upstream | None = None,
        *,
        stream_call_limit: int = STREAM_CALL_LIMIT,
    ) -> None:
        if stream_call_limit < 1:
            raise ValueError(f"stream_call_limit must be at least 1, not {stream_call_limit}")
        self._stream_call_limit = stream_call_limit
        self._router = router
        self._metrics = metrics if metrics is not None else ProxyMetrics()
        self._upstream = ResilientUpstream(
            upstream if upstream is not None else RouterUpstream(router),
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
        with _bound(context, request.model):
            async with errors.grpc_boundary(context):
                await self._stream_chat(request, context.write)

    async def StreamChats(  # type: ignore[override]  # writes with context.write
        self, requests: AsyncIterator[llmproxy_pb2.StreamChatsRequest], context: Context
    ) -> None:
        calls = _Calls(context, self._stream_call_limit)
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "start":
                    calls.start(request, self._stream_chat)
                elif kind == "cancel":
                    calls.cancel(request.id)
                else:
                    calls.refuse(
                        request.id,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "a request must either start or cancel a call",
                    )
            await calls.finished()
        finally:
            calls.cancel_all()

    async def Chat(
        self, request: llmproxy_pb2.ChatRequest, context: Context
    ) -> llmproxy_pb2.ChatResponse:
        with _bound(context, request.model):
            async with errors.grpc_boundary(context):
                try:
                    arguments, _ = self._budget.fitted(translate.chat_arguments(request))
                    result = await self._upstream.complete(arguments)
                except Exception as exc:
                    self._metrics.calls.labels(request.model, errors.reason_of(exc)).inc()
                    raise
                self._metrics.calls.labels(request.model, "ok").inc()
                return translate.chat_response(result, request.model)

    async def ListModels(
        self, request: llmproxy_pb2.ListModelsRequest, context: Context
    ) -> llmproxy_pb2.ListModelsResponse:
        async with errors.grpc_boundary(context):
            return translate.models_response(describe_models(self._router))

    async def GetDeploymentHealth(
        self, request: llmproxy_pb2.GetDeploymentHealthRequest, context: Context
    ) -> llmproxy_pb2.GetDeploymentHealthResponse:
        async with errors.grpc_boundary(context):
            return translate.health_response(deployment_health(self._router))

    async def Embed(
        self, request: llmproxy_pb2.EmbedRequest, context: Context
    ) -> llmproxy_pb2.EmbedResponse:
        async with errors.grpc_boundary(context):
            if not request.inputs:
                raise errors.InvalidRequest("inputs must not be empty")
            self._budget.require_model(request.model)
            result = await self._router.aembedding(model=request.model, input=list(request.inputs))
            return translate.embed_response(result, request.model)

    async def _stream_chat(self, request: llmproxy_pb2.StreamChatRequest, write: _Write) -> None:
        """Stream the answer with ``write``; raises what ended it,
        :class:`errors.StreamInterrupted` once deltas were sent."""
        started = time.monotonic()
        progress = StreamProgress()
        outcome = "error"
        status = "cancelled"
        span = _tracer.start_span("stream_chat", attributes={"llm.model": request.model})
        # Deltas go out through the outbox: at once while the stream keeps
        # up, merged while a write is still in flight (see mesh.outbox).
        outbox: _Outbox = Outbox(write, translate.merged)
        try:
            arguments, counted = self._budget.fitted(
                translate.chat_arguments(request), request.token_counts
            )
            await self._upstream.stream(arguments, progress, outbox.send)
            outbox.put(translate.end_message(progress, counted))
            await outbox.close()
            outcome = status = "ok"
        except Exception as exc:
            outcome = "interrupted" if progress.emitted else "failed"
            status = "interrupted" if progress.emitted else errors.reason_of(exc)
            span.set_status(trace.StatusCode.ERROR, status)
            # The deltas produced before the failure still go first.
            with contextlib.suppress(Exception):
                await outbox.close()
            if progress.emitted:
                raise after_deltas(exc, progress.emitted) from exc
            raise
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


@contextlib.contextmanager
def _bound(context: Context, model: str) -> Iterator[None]:
    """Log lines within carry the call's request id and model."""
    bound = structlog.contextvars.bind_contextvars(
        request_id=metadata_value(context, REQUEST_ID_HEADER) or "", model=model
    )
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**bound)


class _Calls:
    """The calls in progress on one ``StreamChats`` stream, each a task
    writing its responses (with its id) onto the stream, one write at a time."""

    def __init__(self, context: Context, limit: int) -> None:
        self._context = context
        self._limit = limit
        self._tasks: dict[int, asyncio.Task[None]] = {}
        """The calls in progress, by id."""
        self._pending: set[asyncio.Task[None]] = set()
        """Every task writing to the stream: the calls, and refusals."""
        self._writing = asyncio.Lock()

    def start(
        self,
        request: llmproxy_pb2.StreamChatsRequest,
        serve: Callable[[llmproxy_pb2.StreamChatRequest, _Write], Awaitable[None]],
    ) -> None:
        call = request.id
        if call in self._tasks:
            self.refuse(call, grpc.StatusCode.INVALID_ARGUMENT, f"call {call} is in progress")
            return
        if len(self._tasks) >= self._limit:
            self.refuse(
                call,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many calls in progress on this stream (at most {self._limit}); retry later",
            )
            return
        task = self._hold(self._run(request, serve))
        self._tasks[call] = task
        task.add_done_callback(lambda _: self._forget(call, task))

    def cancel(self, call: int) -> None:
        task = self._tasks.pop(call, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        for task in self._pending:
            task.cancel()
        self._tasks.clear()

    async def finished(self) -> None:
        """Return once every call in progress (and every refusal) has ended."""
        while self._pending:
            await asyncio.wait(list(self._pending))

    def _hold(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def _forget(self, call: int, task: asyncio.Task[None] | None) -> None:
        if self._tasks.get(call) is task:
            del self._tasks[call]

    async def _run(
        self,
        request: llmproxy_pb2.StreamChatsRequest,
        serve: Callable[[llmproxy_pb2.StreamChatRequest, _Write], Awaitable[None]],
    ) -> None:
        call = request.id

        task = asyncio.current_task()

        async def write(message: llmproxy_pb2.StreamChatResponse) -> None:
            if message.WhichOneof("chunk") == "end":
                self._forget(call, task)  # its id is free once the caller can see the end
            await self._write(llmproxy_pb2.StreamChatsResponse(id=call, chunk=message))

        # The task runs in a copy of the stream's context: what it binds is its own.
        structlog.contextvars.bind_contextvars(
            request_id=request.request_id, user=request.user, model=request.start.model
        )
        traced = tracing.extract(request.traceparent) if request.traceparent else None
        token = otel_context.attach(traced) if traced is not None else None
        limit = asyncio.timeout(request.timeout_ms / 1000 if request.timeout_ms else None)
        try:
            async with limit:
                await serve(request.start, write)
        except Exception as exc:
            self._forget(call, task)
            if isinstance(exc, TimeoutError) and limit.expired():  # not the provider's own
                await self._status(
                    call,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the call exceeded its timeout of {request.timeout_ms} ms",
                    reason="timed_out",
                )
                return
            code, message, error = errors.failure(exc)
            await self._status(
                call,
                code,
                message,
                reason="" if error is None else error.reason,
                retry_after=None if error is None else error.retry_after,
            )
        finally:
            if token is not None:
                otel_context.detach(token)

    def refuse(self, call: int, code: grpc.StatusCode, message: str) -> None:
        """Fail call ``call`` at once with ``code``; a call in progress under its id goes on."""
        log.warning("stream_chats_call_refused", call=call, code=code.name, message=message)
        self._hold(self._status(call, code, message))

    async def _status(
        self,
        call: int,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        status = llmproxy_pb2.ChatStatus(code=code.value[0], message=message, reason=reason)
        if retry_after is not None and retry_after >= 0:
            status.retry_after_seconds = max(0, round(retry_after))
        with contextlib.suppress(Exception):  # the stream is gone: nobody to tell
            await self._write(llmproxy_pb2.StreamChatsResponse(id=call, status=status))

    async def _write(self, response: llmproxy_pb2.StreamChatsResponse) -> None:
        async with self._writing:
            await self._context.write(response)
