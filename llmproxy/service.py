"""The gRPC servicer: ``llmproxy.v1.LlmProxyService`` on a LiteLLM Router.

Protobuf stops here. :mod:`llmproxy.translate` turns requests into the
Router's keyword arguments and answers into messages;
:mod:`llmproxy.budget` fits the prompt to the model's context window;
:mod:`llmproxy.resilience` streams with the proxy's deadlines and
fallbacks, on plain deltas. Every RPC runs inside
:func:`llmproxy.errors.grpc_boundary`, the one place an exception becomes a
status code (plus the ``x-error-reason`` trailer).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TypeAlias

import structlog
from litellm.router import Router
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
    ) -> None:
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
                await self._stream_chat(request, context)

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

    async def _stream_chat(self, request: llmproxy_pb2.StreamChatRequest, context: Context) -> None:
        """Stream the answer with ``context.write``; raises what ended it,
        :class:`errors.StreamInterrupted` once deltas were sent."""
        started = time.monotonic()
        progress = StreamProgress()
        outcome = "error"
        status = "cancelled"
        span = _tracer.start_span("stream_chat", attributes={"llm.model": request.model})
        # Deltas go out through the outbox: at once while the stream keeps
        # up, merged while a write is still in flight (see mesh.outbox).
        outbox: _Outbox = Outbox(context.write, translate.merged)
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
