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
import time
from typing import Any, NoReturn, TypeAlias

import grpc
import structlog
from litellm.router import Router
from opentelemetry import trace

from llmproxy import errors, translate
from llmproxy.budget import ContextBudget
from llmproxy.metrics import ProxyMetrics
from llmproxy.resilience import (
    ResilientUpstream,
    RouterUpstream,
    StreamProgress,
    StreamTimeouts,
    after_deltas,
)
from llmproxy.router import deployment_health, describe_models
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh import tracing
from mesh.grpc_server import REQUEST_ID_HEADER, metadata_value
from mesh.outbox import Outbox

log = structlog.get_logger("llmproxy")
_tracer = tracing.tracer("llmproxy.service")


Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


_Outbox: TypeAlias = Outbox[translate.Outgoing, llmproxy_pb2.StreamChatResponse]


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
        outbox: _Outbox = Outbox(context.write, translate.merged)
        try:
            arguments = self._budget.fitted(translate.chat_arguments(request))
            await self._upstream.stream(arguments, progress, outbox.send)
            outbox.put(translate.end_message(progress))
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
            arguments = self._budget.fitted(translate.chat_arguments(request))
            result = await self._upstream.complete(arguments)
        except Exception as exc:
            self._metrics.calls.labels(request.model, _reason(exc)).inc()
            await _abort(context, exc)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        self._metrics.calls.labels(request.model, "ok").inc()
        return translate.chat_response(result, request.model)

    async def ListModels(
        self, request: llmproxy_pb2.ListModelsRequest, context: Context
    ) -> llmproxy_pb2.ListModelsResponse:
        return translate.models_response(describe_models(self._router))

    async def GetDeploymentHealth(
        self, request: llmproxy_pb2.GetDeploymentHealthRequest, context: Context
    ) -> llmproxy_pb2.GetDeploymentHealthResponse:
        return translate.health_response(deployment_health(self._router))

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
        return translate.embed_response(result, request.model)


def _reason(exc: Exception) -> str:
    """The metrics status of a failed call: its error reason, or ``internal``."""
    mapped = errors.from_litellm(exc)
    return "internal" if mapped is None else mapped.reason


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
