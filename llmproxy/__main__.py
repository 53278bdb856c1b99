"""Composition root: ``python -m llmproxy`` / ``codelab-llmproxy``.

Settings: ``LLM_PROXY__*``, one per field of :class:`Settings` (listed with
defaults in ``docs/CONFIGURATION.md``); tracing: ``OTEL_TRACES_EXPORTER``
(see :mod:`mesh.tracing`). A deployment's ``stream_first_token_timeout`` /
``stream_chunk_timeout`` in the LiteLLM config override the first two
stream timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import structlog
from prometheus_client import CollectorRegistry

from mesh.config import ConfigError, load, setting, tls_setting
from mesh.grpc_server import MeshServer
from mesh.health import HealthWatch
from mesh.logs import configure_logging
from mesh.metrics import MetricsServer, RpcMetrics
from mesh.process import run, settled
from mesh.signals import wait_for_stop_signal
from mesh.tls import TlsFiles
from mesh.tracing import configure_tracing

log = structlog.get_logger("llmproxy")


def _timeout(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0 (0 disables it)"


def _threads(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the process reads from ``LLM_PROXY__*``; tests build it directly."""

    env_prefix: ClassVar[str] = "LLM_PROXY"

    host: str = "127.0.0.1"
    """address the gRPC server listens on"""
    port: int = 50052
    """gRPC port"""
    internal_api_key: str = setting(example="${CODELAB_INTERNAL_API_KEY}")
    """credential every caller must present (x-internal-auth)"""
    metrics_port: int = 0
    """Prometheus GET /metrics on this port (0: no metrics endpoint; scripts/up: 9102)"""
    health_interval: float = 5.0
    """seconds between health re-judgements (NOT_SERVING while every deployment cools down)"""
    config_path: Path | None = setting(None, env="CONFIG")
    """LiteLLM config (model_list, router_settings, litellm_settings); empty: the packaged
    offline-only llmproxy/default.yaml"""
    max_concurrent_rpcs: int = 1000
    """calls with the credential served at once, and model calls in progress on one StreamChats
    stream; more are refused (RESOURCE_EXHAUSTED). Health checks without it have a separate pool
    of 32"""
    worker_threads: int = setting(1, check=_threads)
    """threads for LiteLLM's blocking work (call set-up, end-of-stream bookkeeping); 1 leaves
    the event loop the GIL for relaying chunks. Raise it for a provider LiteLLM only calls
    synchronously"""
    first_token_timeout: float = setting(60.0, check=_timeout)
    """seconds to the first delta before falling back (0 = off)"""
    chunk_timeout: float = setting(60.0, check=_timeout)
    """seconds allowed between deltas before the stream ends "interrupted" (0 = off)"""
    total_timeout: float = setting(600.0, check=_timeout)
    """a whole call, retries and fallbacks included (0 = off)"""
    fast_path: bool = True
    """stream openai/ and offline deployments below LiteLLM's per-chunk wrapper (the Router
    still picks, retries, falls back and cools down); false: every call takes LiteLLM's full
    path"""
    tls: TlsFiles = tls_setting(
        cert=(
            "TLS_CERT",
            "serve TLS with this certificate and key; with TLS_CLIENT_CA, require client "
            "certificates (mTLS)",
        ),
        key=("TLS_KEY", "key of llmproxy's TLS certificate"),
        ca=("TLS_CLIENT_CA", "CA that client certificates must be signed by (mTLS)"),
    )
    shutdown_grace: float = 5.0
    """seconds in-flight calls get on SIGTERM"""
    log_level: str = "INFO"
    """log level; logs are JSON unless stderr is a terminal"""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def limit_worker_threads(count: int) -> None:
    """Give LiteLLM ``count`` threads for its blocking work, in this loop.

    LiteLLM runs the synchronous part of every call in a thread (the set-up
    of ``acompletion`` in the loop's default executor, the end-of-stream
    ``stream_chunk_builder`` through anyio), and those threads compete with
    the event loop for the GIL while the loop relays other calls' chunks.
    With its defaults (up to 40 threads) a burst of calls starting or ending
    at once leaves the loop a small share; with one thread it gets about
    half (measured: p99 token latency 12-15 ms instead of 19-24 ms, 50
    sessions x 100 tok/s, docs/BENCHMARKS.md). Raise it for a provider whose
    LiteLLM integration has no async path: its whole calls then run in
    these threads.
    """
    import anyio.to_thread

    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=count, thread_name_prefix="litellm")
    )
    anyio.to_thread.current_default_thread_limiter().total_tokens = count


@contextlib.asynccontextmanager
async def running(
    settings: Settings, registry: CollectorRegistry | None = None
) -> AsyncIterator[MeshServer]:
    """Start the proxy; on exit, stop it with the shutdown grace.

    Raises :class:`mesh.config.ConfigError` for a bad config file. The yielded
    server's ``port`` is the bound port (useful with ``port=0``). Metrics go
    to ``registry`` (default: a new one).
    """
    # LiteLLM fetches its cost map over the network at import unless told not
    # to; the proxy must start offline, so set it before the first import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from llmproxy.config import default_config_path, load_config
    from llmproxy.fastpath import FastPathUpstream
    from llmproxy.metrics import ProxyMetrics
    from llmproxy.resilience import RouterUpstream, StreamTimeouts
    from llmproxy.router import build_router, deployment_health, warm_up
    from llmproxy.service import LlmProxyServicer
    from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc

    config_path = settings.config_path or default_config_path()
    config = load_config(config_path)
    router = build_router(config)
    limit_worker_threads(settings.worker_threads)
    await warm_up()
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ProxyMetrics(registry)
    router.on_retry = lambda group: metrics.retries.labels(group).inc()
    metrics.watch_breakers(router)
    mesh = MeshServer(
        address=settings.address,
        internal_api_key=settings.internal_api_key,
        service_names=[llmproxy_pb2.DESCRIPTOR.services_by_name["LlmProxyService"].full_name],
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        metrics=RpcMetrics(registry),
        tls=settings.tls,
    )
    timeouts = StreamTimeouts(
        first_token=settings.first_token_timeout or None,
        chunk=settings.chunk_timeout or None,
        total=settings.total_timeout or None,
    )
    upstream = FastPathUpstream(router) if settings.fast_path else RouterUpstream(router)
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(
        LlmProxyServicer(
            router,
            timeouts,
            metrics,
            upstream,
            stream_call_limit=settings.max_concurrent_rpcs,
        ),
        mesh.server,
    )

    async def some_deployment_usable() -> bool:
        return any(not health.cooling_down for health in deployment_health(router))

    watch = HealthWatch(
        mesh,
        {"deployments": some_deployment_usable},
        interval=settings.health_interval,
        timeout=min(settings.health_interval, 2.0),
        registry=registry,
    )
    exporter = (
        MetricsServer(registry, settings.host, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    port = await mesh.start()
    log.info(
        "llmproxy_started",
        host=settings.host,
        port=port,
        config=str(config_path),
        models=router.get_model_names(),
    )
    try:
        await watch.start()
        if exporter is not None:
            await exporter.start()
        yield mesh
    finally:
        await watch.stop()
        await mesh.stop(settings.shutdown_grace)
        if exporter is not None:
            await exporter.stop()
        if isinstance(upstream, FastPathUpstream):
            await upstream.aclose()
        log.info("llmproxy_stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    async with running(settings):
        settled()
        sig = await wait_for_stop_signal()
        log.info("llmproxy_stopping", signal=sig.name)


def main() -> None:
    """Console entry point; exits 2 on a configuration error."""
    try:
        settings = load(Settings, os.environ)
        configure_logging(settings.log_level)
        configure_tracing("codelab-llmproxy", os.environ)
    except ConfigError as exc:
        print(f"llmproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(serve(settings), os.environ)
    except ConfigError as exc:
        log.error("llmproxy_config_invalid", error=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
