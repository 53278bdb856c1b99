"""OpenTelemetry tracing, off unless asked for.

Each service's ``__main__`` calls :func:`configure_tracing` once. It reads
the standard OpenTelemetry variables:

- ``OTEL_TRACES_EXPORTER``: ``none`` (the default here, unlike the
  OpenTelemetry SDK's ``otlp``), ``console`` (spans as JSON on stdout) or
  ``otlp`` (needs ``opentelemetry-exporter-otlp``, which is not a
  dependency; it then reads ``OTEL_EXPORTER_OTLP_*`` itself);
- ``OTEL_SERVICE_NAME``: defaults to the service's own name.

With tracing off, the OpenTelemetry API's no-op tracer is used: spans cost a
function call and :func:`inject` adds nothing to the metadata.

The trace context crosses every hop as W3C ``traceparent``: in gRPC metadata
for unary and server-streaming calls (:func:`inject` / :func:`extract`, the
server side is :class:`mesh.grpc_server.CallInterceptor`), and in the
``traceparent`` field of ``runtime.v1.ConverseRequest`` for the events of
the long-lived ``Converse`` stream, whose metadata is sent only once.

Spans: gateway ``ws.message`` (one per ``user_message``); runtime ``turn``
and ``llm.call``; llmproxy ``stream_chat``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.config import ConfigError

TRACEPARENT_HEADER = "traceparent"
"""Metadata key (and ConverseRequest field) of the W3C trace context."""

_PROPAGATOR = TraceContextTextMapPropagator()


def configure_tracing(service_name: str, environ: Mapping[str, str]) -> bool:
    """Install a tracer provider when ``OTEL_TRACES_EXPORTER`` asks for one.

    Returns whether tracing is on. Raises ConfigError for an unknown
    exporter or a missing exporter package. Call once per process.
    """
    exporter_name = (environ.get("OTEL_TRACES_EXPORTER") or "none").strip().lower()
    if exporter_name == "none":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER=otlp needs `pip install opentelemetry-exporter-otlp`"
            ) from None
        exporter = OTLPSpanExporter()
    else:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r} is not one of none, console, otlp"
        )
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def tracer(name: str) -> trace.Tracer:
    """The tracer of one module (no-op until a provider is installed)."""
    return trace.get_tracer(name)


def inject(
    pairs: Iterable[tuple[str, str]], context: otel_context.Context | None = None
) -> tuple[tuple[str, str], ...]:
    """``pairs`` plus ``traceparent`` for ``context`` (default: the current
    one); unchanged when there is no recording span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return (*pairs, *carrier.items())


def traceparent(context: otel_context.Context | None = None) -> str:
    """The W3C ``traceparent`` of ``context`` (default: current), or ``""``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get(TRACEPARENT_HEADER, "")


def extract(value: str | None) -> otel_context.Context:
    """The context a ``traceparent`` value names (empty context for none)."""
    if not value:
        return otel_context.Context()
    return _PROPAGATOR.extract({TRACEPARENT_HEADER: value})


@contextlib.contextmanager
def continued_from(value: str | None) -> Iterator[None]:
    """Make the trace ``value`` (a ``traceparent``) names the current
    context inside the block; without a value, change nothing."""
    if not value:
        yield
        return
    token = otel_context.attach(extract(value))
    try:
        yield
    finally:
        otel_context.detach(token)
