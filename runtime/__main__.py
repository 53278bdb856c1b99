"""The agent runtime: ``python -m runtime`` or ``codelab-runtime``.

``python -m runtime migrate`` applies the database schema (Alembic); the
service refuses to start on a database that is not at the newest revision.

Environment (prefix ``AGENT_RUNTIME__``):

================================  ===================  =========================================
variable                          default              meaning
================================  ===================  =========================================
``HOST``                          ``127.0.0.1``        address to listen on
``PORT``                          ``50051``            gRPC port (0 picks a free one)
``INTERNAL_API_KEY``              (required)           credential callers must present
``LLM_PROXY_ADDRESS``             ``127.0.0.1:50052``  the LLM proxy's gRPC address
``LLM_PROXY_API_KEY``             = INTERNAL_API_KEY   credential presented to the LLM proxy
``LLM_MODEL``                     ``offline``          model group the agents use
``ROUTING_MODEL``                 = LLM_MODEL          model group that routes first messages
``AGENT_MODELS``                  (none)               per-agent model groups, e.g.
                                                       ``debug=gpt-4o,ask=offline``
``APPROVAL_REQUIRED``             write_file,…         tools needing approval (comma list;
                                                       default: write_file, delete_file,
                                                       move_file, create_directory,
                                                       execute_command; ``none`` for none)
``LLM_TIMEOUT``                   ``300``              seconds a whole model call may take
``LLM_CONNECT_TIMEOUT``           ``10``               seconds a model call waits for an
                                                       unreachable llmproxy (a restart) before
                                                       it fails with ``llm_unavailable``
``TLS_CERT`` / ``TLS_KEY``        (none)               serve TLS with this certificate and key
``TLS_CLIENT_CA``                 (none)               with it, require client certificates (mTLS)
``LLM_PROXY_TLS_CA``              (none)               TLS to llmproxy, verified with this CA
``LLM_PROXY_TLS_CERT`` / ``_KEY`` (none)               client certificate for mTLS to llmproxy
``DATABASE_URL``                  ``sqlite+aiosqlite:///.codelab/runtime.db``
                                                       sessions, history, approvals, event log
                                                       (PostgreSQL: ``postgresql+asyncpg://…``)
``DETACH_GRACE``                  ``10``               seconds a streaming turn continues with
                                                       no client attached before it is cancelled
``SUBSCRIBER_QUEUE``              ``1024``             events buffered per stream; a stream
                                                       further behind catches up from the log
``MAX_REPLAY``                    ``100000``           a client further behind reloads history
``REPLICA_ID``                    ``HOSTNAME:PORT``    this replica's name in session leases (stable
                                                       across restarts of the same slot)
``LEASE_TTL``                     ``15``               seconds a session lease lasts unrenewed: how
                                                       long a dead replica's sessions wait to move
``OPEN_TIMEOUT``                  ``10``               seconds a new stream has to send ``open``
``MAX_CONCURRENT_RPCS``           ``2000``             calls with the credential served at once;
                                                       more are refused (RESOURCE_EXHAUSTED);
                                                       health checks without it have a separate
                                                       pool (mesh.grpc_server)
``SHUTDOWN_GRACE``                ``5``                seconds in-flight calls get on SIGTERM
``LOG_LEVEL``                     ``INFO``             log level
``METRICS_PORT``                  ``0``                Prometheus ``GET /metrics`` port on HOST
                                                       (0: no metrics endpoint)
``HEALTH_INTERVAL``               ``5``                seconds between dependency checks
                                                       (database, llmproxy); gRPC health is
                                                       NOT_SERVING while one fails
================================  ===================  =========================================

Tracing: ``OTEL_TRACES_EXPORTER`` (see :mod:`mesh.tracing`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
import sqlalchemy
import structlog
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.database import create_engine, current_revision
from mesh.env import ConfigError, Env
from mesh.grpc_server import (
    MeshServer,
    TlsFiles,
    grpc_target,
    health_check,
    internal_metadata,
    mesh_channel,
)
from mesh.health import HealthWatch
from mesh.logs import configure_logging
from mesh.metrics import MetricsServer, RpcMetrics
from mesh.process import run, settled
from mesh.signals import wait_for_stop_signal
from mesh.tracing import configure_tracing
from runtime.agents import AGENTS, DEFAULT_AGENT
from runtime.conversation import ConversationSettings
from runtime.hub import SessionHub
from runtime.llm import CONNECT_TIMEOUT, LlmClient
from runtime.metrics import RuntimeMetrics
from runtime.schema import VERSION_TABLE
from runtime.service import AgentRuntimeServicer
from runtime.store import Store, head_revision, migrate
from runtime.tools import DEFAULT_APPROVAL_REQUIRED, TOOLS
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

SERVICE_NAME = runtime_pb2.DESCRIPTOR.services_by_name["AgentRuntimeService"].full_name


@dataclass(frozen=True)
class RuntimeConfig:
    internal_api_key: str
    host: str = "127.0.0.1"
    port: int = 50051
    llm_proxy_address: str = "127.0.0.1:50052"
    llm_proxy_api_key: str = ""
    llm_model: str = "offline"
    routing_model: str = ""
    agent_models: tuple[tuple[str, str], ...] = ()
    approval_required: tuple[str, ...] = tuple(sorted(DEFAULT_APPROVAL_REQUIRED))
    llm_timeout: float = 300.0
    llm_connect_timeout: float = CONNECT_TIMEOUT
    tls: TlsFiles = field(default_factory=TlsFiles)
    llm_proxy_tls: TlsFiles = field(default_factory=TlsFiles)
    database_url: str = "sqlite+aiosqlite:///.codelab/runtime.db"
    detach_grace: float = 10.0
    replica_id: str = ""
    lease_ttl: float = 15.0
    subscriber_queue: int = 1024
    max_replay: int = 100_000
    open_timeout: float = 10.0
    max_concurrent_rpcs: int = 2000
    shutdown_grace: float = 5.0
    log_level: str = "INFO"
    metrics_port: int = 0
    health_interval: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = Env("AGENT_RUNTIME", environ)
        key = env.required("INTERNAL_API_KEY")
        approval = tuple(
            name
            for name in env.list("APPROVAL_REQUIRED", tuple(sorted(DEFAULT_APPROVAL_REQUIRED)))
            if name != "none"
        )
        unknown = sorted(set(approval) - set(TOOLS))
        if unknown:
            raise ConfigError(f"{env.name('APPROVAL_REQUIRED')}: unknown tools {unknown}")
        agent_models = []
        for item in env.list("AGENT_MODELS"):
            agent, sep, model = item.partition("=")
            if not sep or agent.strip() not in AGENTS or not model.strip():
                raise ConfigError(
                    f"{env.name('AGENT_MODELS')}: {item!r} is not AGENT=MODEL "
                    f"with AGENT one of {', '.join(AGENTS)}"
                )
            agent_models.append((agent.strip(), model.strip()))
        llm_connect_timeout = env.float("LLM_CONNECT_TIMEOUT", cls.llm_connect_timeout)
        if llm_connect_timeout <= 0:
            raise ConfigError(
                f"{env.name('LLM_CONNECT_TIMEOUT')}={llm_connect_timeout!r} must be positive"
            )
        llm_proxy_address = env.str("LLM_PROXY_ADDRESS", cls.llm_proxy_address)
        try:
            grpc_target(llm_proxy_address)
        except ValueError as exc:
            raise ConfigError(f"{env.name('LLM_PROXY_ADDRESS')}: {exc}") from None
        return cls(
            internal_api_key=key,
            host=env.str("HOST", cls.host),
            port=env.int("PORT", cls.port),
            llm_proxy_address=llm_proxy_address,
            llm_proxy_api_key=env.str("LLM_PROXY_API_KEY", key),
            llm_model=env.str("LLM_MODEL", cls.llm_model),
            routing_model=env.str("ROUTING_MODEL", ""),
            agent_models=tuple(agent_models),
            approval_required=approval,
            llm_timeout=env.float("LLM_TIMEOUT", cls.llm_timeout),
            llm_connect_timeout=llm_connect_timeout,
            tls=TlsFiles(
                cert=env.str("TLS_CERT", ""),
                key=env.str("TLS_KEY", ""),
                ca=env.str("TLS_CLIENT_CA", ""),
            ),
            llm_proxy_tls=TlsFiles(
                cert=env.str("LLM_PROXY_TLS_CERT", ""),
                key=env.str("LLM_PROXY_TLS_KEY", ""),
                ca=env.str("LLM_PROXY_TLS_CA", ""),
            ),
            database_url=env.str("DATABASE_URL", cls.database_url),
            detach_grace=env.float("DETACH_GRACE", cls.detach_grace),
            replica_id=env.str("REPLICA_ID", ""),
            lease_ttl=env.float("LEASE_TTL", cls.lease_ttl),
            subscriber_queue=env.int("SUBSCRIBER_QUEUE", cls.subscriber_queue),
            max_replay=env.int("MAX_REPLAY", cls.max_replay),
            open_timeout=env.float("OPEN_TIMEOUT", cls.open_timeout),
            max_concurrent_rpcs=env.int("MAX_CONCURRENT_RPCS", cls.max_concurrent_rpcs),
            shutdown_grace=env.float("SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env.str("LOG_LEVEL", cls.log_level),
            metrics_port=env.int("METRICS_PORT", cls.metrics_port),
            health_interval=env.float("HEALTH_INTERVAL", cls.health_interval),
        )


async def serve(
    config: RuntimeConfig,
    *,
    started: Callable[[int], None] | None = None,
    stop: asyncio.Future[object] | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run the runtime until ``stop`` resolves (default: SIGTERM or SIGINT).

    ``started`` is called with the bound port once the server accepts calls.
    Metrics go to ``registry`` (default: a new one), served on
    ``metrics_port`` when it is set.
    """
    log = structlog.get_logger("runtime")
    registry = registry if registry is not None else CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    async with contextlib.AsyncExitStack() as stack:
        channel = mesh_channel(config.llm_proxy_address, config.llm_proxy_tls)
        stack.push_async_callback(channel.close)
        llm = LlmClient(
            channel,
            internal_api_key=config.llm_proxy_api_key or config.internal_api_key,
            timeout=config.llm_timeout,
            connect_timeout=config.llm_connect_timeout,
            metrics=metrics,
        )
        engine = create_engine(config.database_url)
        stack.push_async_callback(engine.dispose)
        revision = await current_revision(engine, VERSION_TABLE)
        if revision != head_revision():
            raise ConfigError(
                f"the runtime database is at revision {revision or 'none'}, not "
                f"{head_revision()}: run `python -m runtime migrate` (scripts/up does)"
            )
        settings = ConversationSettings(
            model=config.llm_model,
            routing_model=config.routing_model or None,
            agent_models=dict(config.agent_models),
            approval_required=frozenset(config.approval_required),
            detach_grace=config.detach_grace,
            subscriber_queue=config.subscriber_queue,
            max_replay=config.max_replay,
        )
        hub = SessionHub(
            Store(engine),
            llm,
            settings,
            default_agent=DEFAULT_AGENT,
            metrics=metrics,
            replica=config.replica_id or f"{socket.gethostname()}:{config.port}",
            lease_ttl=config.lease_ttl,
        )
        hub.start()
        stack.push_async_callback(hub.close)
        servicer = AgentRuntimeServicer(hub, open_timeout=config.open_timeout)
        mesh = MeshServer(
            address=f"{config.host}:{config.port}",
            internal_api_key=config.internal_api_key,
            service_names=[SERVICE_NAME],
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            metrics=RpcMetrics(registry),
            tls=config.tls,
        )
        runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(servicer, mesh.server)
        port = await mesh.start()
        stack.push_async_callback(mesh.stop, config.shutdown_grace)
        watch = HealthWatch(
            mesh,
            {
                "database": _database_check(engine),
                "llmproxy": _llmproxy_check(
                    channel, config.llm_proxy_api_key or config.internal_api_key
                ),
            },
            interval=config.health_interval,
            timeout=min(config.health_interval, 2.0),
            registry=registry,
        )
        stack.push_async_callback(watch.stop)
        await watch.start()
        if config.metrics_port:
            exporter = MetricsServer(registry, config.host, config.metrics_port)
            await exporter.start()
            stack.push_async_callback(exporter.stop)
        log.info("runtime_started", host=config.host, port=port, model=config.llm_model)
        if started is not None:
            started(port)
        if stop is None:
            settled()
            signal_received = await wait_for_stop_signal()
            log.info("runtime_stopping", signal=signal_received.name)
        else:
            await stop
            log.info("runtime_stopping")
    log.info("runtime_stopped")


def _database_check(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with engine.connect() as connection:
            await connection.execute(sqlalchemy.text("SELECT 1"))
        return True

    return check


def _llmproxy_check(channel: grpc.aio.Channel, key: str) -> Callable[[], Awaitable[bool]]:
    """Reachable means its health service answers, SERVING or not: a proxy
    whose deployments all cool down is still there, and the turns that need
    it fail with a retryable error of their own. The check presents the
    credential, so it uses the proxy's slots for the mesh's own calls, not
    the small pool left to anonymous probes."""
    call = health_check(channel)
    metadata = internal_metadata(key)

    async def check() -> bool:
        await call(health_pb2.HealthCheckRequest(), metadata=metadata)
        return True

    return check


def main() -> None:
    """``codelab-runtime`` serves; ``codelab-runtime migrate`` applies the schema."""
    parser = argparse.ArgumentParser(prog="codelab-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    command = parser.parse_args().command
    try:
        config = RuntimeConfig.from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(f"codelab-runtime: {exc}") from None
    configure_logging(config.log_level)
    try:
        if command == "migrate":
            asyncio.run(migrate(config.database_url))
            structlog.get_logger("runtime").info("runtime_schema_migrated")
        else:
            configure_tracing("codelab-runtime")
            run(serve(config))
    except ConfigError as exc:
        raise SystemExit(f"codelab-runtime: {exc}") from None


if __name__ == "__main__":
    main()
