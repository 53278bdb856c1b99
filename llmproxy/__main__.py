"""Composition root: ``python -m llmproxy`` / ``codelab-llmproxy``.

Environment (read once, into :class:`Settings`):

- ``LLM_PROXY__HOST`` (127.0.0.1), ``LLM_PROXY__PORT`` (50052; 0 picks one)
- ``LLM_PROXY__INTERNAL_API_KEY`` (required): the mesh's shared credential
- ``LLM_PROXY__CONFIG``: LiteLLM proxy YAML (default: packaged ``default.yaml``)
- ``LLM_PROXY__LOG_LEVEL`` (INFO)
- ``LLM_PROXY__SHUTDOWN_GRACE`` (5 seconds for in-flight calls on SIGTERM)
- ``LLM_PROXY__MAX_CONCURRENT_RPCS`` (1000): calls with the credential
  served at once; further calls are refused with RESOURCE_EXHAUSTED (health
  checks without it have a separate pool, see :mod:`mesh.grpc_server`)
- ``LLM_PROXY__FIRST_TOKEN_TIMEOUT`` (60 seconds to the first delta; then
  the call falls back), ``LLM_PROXY__CHUNK_TIMEOUT`` (60 seconds between
  deltas), ``LLM_PROXY__TOTAL_TIMEOUT`` (600 seconds for a whole call);
  0 disables one. A deployment's ``stream_first_token_timeout`` /
  ``stream_chunk_timeout`` override the first two.
- ``LLM_PROXY__METRICS_PORT`` (0: none): Prometheus ``GET /metrics`` on HOST
- ``LLM_PROXY__HEALTH_INTERVAL`` (5 seconds): how often gRPC health is
  re-judged; NOT_SERVING while every deployment cools down
- ``OTEL_TRACES_EXPORTER``: tracing, see :mod:`mesh.tracing`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from mesh.env import ConfigError as EnvError
from mesh.env import Env
from mesh.grpc_server import MeshServer, TlsFiles
from mesh.health import HealthWatch
from mesh.logs import configure_logging
from mesh.metrics import MetricsServer, RpcMetrics
from mesh.process import run, settled
from mesh.signals import wait_for_stop_signal
from mesh.tracing import configure_tracing

log = structlog.get_logger("llmproxy")


@dataclass(frozen=True)
class Settings:
    """Everything the process reads from its environment."""

    internal_api_key: str
    host: str = "127.0.0.1"
    port: int = 50052
    config_path: Path | None = None
    log_level: str = "INFO"
    shutdown_grace: float = 5.0
    max_concurrent_rpcs: int = 1000
    first_token_timeout: float = 60.0
    chunk_timeout: float = 60.0
    total_timeout: float = 600.0
    metrics_port: int = 0
    health_interval: float = 5.0
    worker_threads: int = 1
    """Threads for LiteLLM's blocking work (see :func:`limit_worker_threads`)."""
    tls: TlsFiles = field(default_factory=TlsFiles)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``LLM_PROXY__*``; raises ``mesh.env.ConfigError`` naming a bad one."""
        env = Env("LLM_PROXY", environ)
        config = env.raw("CONFIG")
        timeouts = {
            "FIRST_TOKEN_TIMEOUT": env.float("FIRST_TOKEN_TIMEOUT", 60.0),
            "CHUNK_TIMEOUT": env.float("CHUNK_TIMEOUT", 60.0),
            "TOTAL_TIMEOUT": env.float("TOTAL_TIMEOUT", 600.0),
        }
        for key, value in timeouts.items():
            if value < 0:
                raise EnvError(f"{env.name(key)}={value!r} must be >= 0 (0 disables it)")
        worker_threads = env.int("WORKER_THREADS", 1)
        if worker_threads < 1:
            raise EnvError(f"{env.name('WORKER_THREADS')}={worker_threads} must be at least 1")
        return cls(
            internal_api_key=env.required("INTERNAL_API_KEY"),
            host=env.str("HOST", "127.0.0.1"),
            port=env.int("PORT", 50052),
            config_path=None if config is None else Path(config),
            log_level=env.str("LOG_LEVEL", "INFO"),
            shutdown_grace=env.float("SHUTDOWN_GRACE", 5.0),
            max_concurrent_rpcs=env.int("MAX_CONCURRENT_RPCS", 1000),
            first_token_timeout=timeouts["FIRST_TOKEN_TIMEOUT"],
            chunk_timeout=timeouts["CHUNK_TIMEOUT"],
            total_timeout=timeouts["TOTAL_TIMEOUT"],
            metrics_port=env.int("METRICS_PORT", 0),
            health_interval=env.float("HEALTH_INTERVAL", 5.0),
            worker_threads=worker_threads,
            tls=TlsFiles(
                cert=env.str("TLS_CERT", ""),
                key=env.str("TLS_KEY", ""),
                ca=env.str("TLS_CLIENT_CA", ""),
            ),
        )


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

    Raises ``llmproxy.config.ConfigError`` for a bad config file. The yielded
    server's ``port`` is the bound port (useful with ``port=0``). Metrics go
    to ``registry`` (default: a new one).
    """
    # LiteLLM fetches its cost map over the network at import unless told not
    # to; the proxy must start offline, so set it before the first import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from llmproxy.config import default_config_path, load_config
    from llmproxy.metrics import ProxyMetrics
    from llmproxy.resilience import StreamTimeouts
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
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(
        LlmProxyServicer(router, timeouts, metrics), mesh.server
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
        settings = Settings.from_env()
    except EnvError as exc:
        print(f"llmproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    try:
        configure_tracing("codelab-llmproxy")
    except EnvError as exc:
        print(f"llmproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from llmproxy.config import ConfigError

    try:
        run(serve(settings))
    except ConfigError as exc:
        log.error("llmproxy_config_invalid", error=str(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
