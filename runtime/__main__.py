"""The agent runtime: ``python -m runtime`` or ``codelab-runtime``.

``python -m runtime migrate`` applies the database schema (Alembic); the
service refuses to start on a database that is not at the newest revision.

Settings: ``AGENT_RUNTIME__*``, one per field of :class:`RuntimeConfig`
(listed with defaults in ``docs/CONFIGURATION.md``); tracing:
``OTEL_TRACES_EXPORTER`` (see :mod:`mesh.tracing`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import grpc
import sqlalchemy
import structlog
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.config import (
    ConfigError,
    comma_list,
    load,
    not_negative,
    positive,
    setting,
    tls_setting,
)
from mesh.database import create_engine, current_revision
from mesh.grpc_server import (
    MeshServer,
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
from mesh.tls import TlsFiles
from mesh.tracing import configure_tracing
from runtime.agent_files import AgentsInvalid, ProjectLimits, load_operator_file
from runtime.agents import BUILT_IN, DEFAULT_AGENT, TOOL_GROUPS, Roster
from runtime.codeindex import SearchSettings
from runtime.condense import DEFAULT_THRESHOLD as DEFAULT_CONDENSE_THRESHOLD
from runtime.dispatch import DEFAULT_MAX_MISTAKES
from runtime.executors import Executor, Executors
from runtime.hub import SessionHub
from runtime.llm import CONNECT_TIMEOUT, LlmClient
from runtime.mcp import McpServer, McpTools, load_servers
from runtime.metrics import RuntimeMetrics
from runtime.resting import DEFAULT_RESTING_AFTER_S, DEFAULT_RESTING_HISTORY_MB
from runtime.rules import MAX_AUTO_APPROVALS_PER_TURN, OperatorLimits
from runtime.schema import VERSION_TABLE
from runtime.search import CodebaseSearch
from runtime.service import AgentRuntimeServicer
from runtime.settings import ConversationSettings
from runtime.store import Store, head_revision, migrate
from runtime.tools import DEFAULT_APPROVAL_REQUIRED, TOOLS
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

SERVICE_NAME = runtime_pb2.DESCRIPTOR.services_by_name["AgentRuntimeService"].full_name


def _approval_required(text: str) -> tuple[str, ...]:
    approval = tuple(name for name in comma_list(text) if name != "none")
    unknown = sorted(set(approval) - set(TOOLS))
    if unknown:
        raise ValueError(f"unknown tools {unknown}")
    return approval


def _agent_models(text: str) -> tuple[tuple[str, str], ...]:
    agent_models = []
    for item in comma_list(text):
        agent, sep, model = item.partition("=")
        if not sep or not agent.strip() or not model.strip():
            raise ValueError(f"{item!r} is not AGENT=MODEL")
        agent_models.append((agent.strip(), model.strip()))
    return tuple(agent_models)


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(name for name in comma_list(text) if name != "none")
    unknown = sorted(set(groups) - set(TOOL_GROUPS))
    if unknown:
        raise ValueError(f"unknown tool groups {unknown}; one of {', '.join(TOOL_GROUPS)}")
    return groups


def _address(text: str) -> str:
    grpc_target(text)
    return text


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Everything the runtime reads from ``AGENT_RUNTIME__*``; tests build it directly."""

    env_prefix: ClassVar[str] = "AGENT_RUNTIME"

    host: str = "127.0.0.1"
    """address the gRPC server listens on"""
    port: int = 50051
    """gRPC port"""
    internal_api_key: str = setting(example="${CODELAB_INTERNAL_API_KEY}")
    """credential every caller must present (x-internal-auth)"""
    llm_proxy_address: str = setting("127.0.0.1:50052", parse=_address)
    """llmproxy's gRPC address; several replicas: a comma list, or dns:///name:port (round
    robin)"""
    llm_proxy_api_key: str = setting("", example="${CODELAB_INTERNAL_API_KEY}")
    """credential presented to llmproxy (default: INTERNAL_API_KEY)"""
    llm_model: str = "offline"
    """model group the agents use"""
    routing_model: str = setting("", example="offline")
    """model group that classifies a new session's first message (default: LLM_MODEL)"""
    agent_models: tuple[tuple[str, str], ...] = setting((), parse=_agent_models)
    """per-agent model groups, e.g. debug=gpt-4o,ask=offline (default: none)"""
    user_models: tuple[str, ...] = setting((), parse=lambda text: tuple(comma_list(text)))
    """model groups a user may choose for a session (IDE `set_model`, PATCH a session's model),
    used for its every model call instead of the agents' groups (default: just LLM_MODEL)"""
    agents_file: str = setting("", example="/etc/codelab/agents.yaml")
    """YAML file of agents to add or override (docs/AGENTS.md, "Custom agents"); a bad file
    stops the runtime's start with a message naming the file and field (default: none)"""
    project_agent_tools: tuple[str, ...] = setting(tuple(TOOL_GROUPS), parse=_groups)
    """tool groups (read, edit, command) an agent of a project's .codelab/agents.yaml may have;
    "none": a project cannot add agents with tools. Their writes and commands always wait for
    approval"""
    embedding_model: str = setting("", example="offline")
    """model group codebase_search embeds files and queries with (default: LLM_MODEL)"""
    search_max_files: int = setting(SearchSettings().max_files, check=positive)
    """files one session's search index holds at most; past it, the file indexed longest ago
    is forgotten"""
    search_max_file_bytes: int = setting(SearchSettings().max_file_bytes, check=positive)
    """files larger than this are not indexed for codebase_search"""
    search_max_chunks: int = setting(SearchSettings().max_chunks, check=positive)
    """chunks (40 lines each, overlapping by 10) one session's search index holds at most"""
    max_consecutive_mistakes: int = setting(DEFAULT_MAX_MISTAKES, check=not_negative)
    """failed tool calls in a row (refused, an error, an edit that did not apply) after which a
    turn stops and asks the user how to go on; 0: never"""
    condense_threshold: int = setting(DEFAULT_CONDENSE_THRESHOLD, check=not_negative)
    """percent of the model's window (less the answer's reserve) a prompt fills before a turn
    first has the model summarize the older turns; 0: only on a `condense` frame"""
    approval_required: tuple[str, ...] = setting(
        tuple(sorted(DEFAULT_APPROVAL_REQUIRED)), parse=_approval_required
    )
    """tools that wait for a human's approval; "none" for none"""
    user_auto_approve: tuple[str, ...] | None = setting(None, parse=_approval_required)
    """tools a user's own approval rules may auto-approve (default: every tool in
    APPROVAL_REQUIRED); "none": users cannot lower any approval, APPROVAL_REQUIRED is the floor.
    Users' deny rules apply to every tool whatever this says"""
    max_auto_approvals_per_turn: int = setting(MAX_AUTO_APPROVALS_PER_TURN, check=not_negative)
    """calls one turn may auto-approve by a user's rules (the next ones are asked); a user's own
    cap can only be lower"""
    mcp_servers: tuple[McpServer, ...] = setting((), parse=load_servers, example="")
    """a JSON or YAML file of MCP servers (stdio or streamable HTTP) whose tools the runtime runs
    for the agents it names, as mcp__SERVER__TOOL (README: MCP tools); default: none"""
    llm_timeout: float = 300.0
    """seconds a whole model call may take"""
    llm_proxy_multiplex: bool = False
    """model calls on long-lived StreamChats streams to llmproxy, many calls per stream, instead of
    one StreamChat call each: less CPU per call, more per streamed token (docs/LLM.md)"""
    llm_connect_timeout: float = setting(CONNECT_TIMEOUT, check=positive)
    """seconds a model call waits for an unreachable llmproxy (a restart) before it fails with
    llm_unavailable"""
    database_url: str = "sqlite+aiosqlite:///.codelab/runtime.db"
    """sessions, history, approvals, event log (PostgreSQL: postgresql+asyncpg://...)"""
    detach_grace: float = 10.0
    """seconds a streaming turn goes on with no IDE attached before it is cancelled"""
    resting_history_mb: int = setting(DEFAULT_RESTING_HISTORY_MB, check=not_negative)
    """MiB of history a replica keeps in memory for sessions idle between turns (an IDE left
    open); past it, the sessions idle longest (at least RESTING_AFTER_S) let theirs go and read it
    back from the database at their next event; 0: every such session's"""
    resting_after_s: float = setting(DEFAULT_RESTING_AFTER_S, check=not_negative)
    """seconds a session must have been idle before its history may leave memory: a session
    taking a turn every few seconds keeps it, instead of reading it back at every turn"""
    subscriber_queue: int = 1024
    """events buffered per stream; a stream further behind catches up from the log"""
    max_replay: int = 100_000
    """a client further behind than this many events reloads history instead"""
    replica_id: str = ""
    """this replica's name in session leases (default HOSTNAME:PORT: stable across restarts of
    one slot)"""
    lease_ttl: float = 15.0
    """seconds a session lease lasts unrenewed: how long a dead replica's sessions wait to move"""
    advertise_address: str = ""
    """host:port at which gateways reach this replica, named in its session leases so a gateway
    goes straight to the replica serving a session (default: HOST:PORT, or HOSTNAME:PORT when
    HOST is a wildcard; Kubernetes: the pod IP)"""
    tls: TlsFiles = tls_setting(
        cert=(
            "TLS_CERT",
            "serve TLS with this certificate and key; with TLS_CLIENT_CA, require client "
            "certificates (mTLS)",
        ),
        key=("TLS_KEY", "key of the runtime's TLS certificate"),
        ca=("TLS_CLIENT_CA", "CA that client certificates must be signed by (mTLS)"),
    )
    llm_proxy_tls: TlsFiles = tls_setting(
        ca=(
            "LLM_PROXY_TLS_CA",
            "TLS to llmproxy: the CA that signed its certificate, and a client certificate for "
            "mTLS",
        ),
        cert=("LLM_PROXY_TLS_CERT", "client certificate for mTLS to llmproxy"),
        key=("LLM_PROXY_TLS_KEY", "key of that client certificate"),
    )
    open_timeout: float = 10.0
    """seconds a new Converse stream has to send open"""
    max_concurrent_rpcs: int = 2000
    """calls with the credential served at once; more are refused (RESOURCE_EXHAUSTED). Health
    checks without it have a separate pool of 32"""
    shutdown_grace: float = 5.0
    """seconds in-flight calls get on SIGTERM"""
    log_level: str = "INFO"
    """log level; logs are JSON unless stderr is a terminal"""
    metrics_port: int = 0
    """Prometheus GET /metrics on this port (0: no metrics endpoint; scripts/up: 9101)"""
    health_interval: float = 5.0
    """seconds between dependency checks (database, llmproxy) behind gRPC health"""

    def agents(self) -> Roster:
        """The built-in agents with AGENTS_FILE's; raises ConfigError naming the
        file and field of a bad one, or an AGENT_MODELS agent that does not exist."""
        roster = BUILT_IN
        if self.agents_file:
            try:
                roster = load_operator_file(self.agents_file, BUILT_IN)
            except AgentsInvalid as exc:
                raise ConfigError(f"AGENT_RUNTIME__AGENTS_FILE: {exc}") from None
        unknown = sorted({agent for agent, _ in self.agent_models} - set(roster))
        if unknown:
            raise ConfigError(
                f"AGENT_RUNTIME__AGENT_MODELS names no agent {unknown}; one of {', '.join(roster)}"
            )
        return roster

    def rule_limits(self) -> OperatorLimits:
        """The floor under users' approval rules: USER_AUTO_APPROVE (unset: APPROVAL_REQUIRED)
        and MAX_AUTO_APPROVALS_PER_TURN."""
        tools = self.approval_required if self.user_auto_approve is None else self.user_auto_approve
        return OperatorLimits(frozenset(tools), self.max_auto_approvals_per_turn)


def advertised(host: str, port: int) -> str:
    """The address other processes reach a server listening on ``host:port``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _executors(config: RuntimeConfig, store: Store, llm: LlmClient) -> list[Executor]:
    """The runtime's executors of tools it runs itself (:mod:`runtime.executors`)."""
    search = SearchSettings(
        model=config.embedding_model,
        max_files=config.search_max_files,
        max_file_bytes=config.search_max_file_bytes,
        max_chunks=config.search_max_chunks,
    )
    executors: list[Executor] = [CodebaseSearch(store.index, llm, config.llm_model, search)]
    if config.mcp_servers:
        executors.append(McpTools(config.mcp_servers))
    return executors


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
        agents = config.agents()
        channel = mesh_channel(config.llm_proxy_address, config.llm_proxy_tls)
        stack.push_async_callback(channel.close)
        llm = LlmClient(
            channel,
            internal_api_key=config.llm_proxy_api_key or config.internal_api_key,
            timeout=config.llm_timeout,
            connect_timeout=config.llm_connect_timeout,
            metrics=metrics,
            multiplex=config.llm_proxy_multiplex,
        )
        stack.push_async_callback(llm.aclose)
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
            user_models=config.user_models,
            approval_required=frozenset(config.approval_required),
            max_consecutive_mistakes=config.max_consecutive_mistakes,
            condense_threshold=config.condense_threshold,
            rule_limits=config.rule_limits(),
            agents=agents,
            project_limits=ProjectLimits(
                frozenset(config.project_agent_tools),
                frozenset(config.user_models or (config.llm_model,)),
            ),
            detach_grace=config.detach_grace,
            resting_history_bytes=config.resting_history_mb * 2**20,
            resting_after_s=config.resting_after_s,
            subscriber_queue=config.subscriber_queue,
            max_replay=config.max_replay,
        )
        store = Store(engine)
        executors = Executors(_executors(config, store, llm))
        stack.push_async_callback(executors.close)
        hub = SessionHub(
            store,
            llm,
            settings,
            default_agent=DEFAULT_AGENT,
            metrics=metrics,
            replica=config.replica_id or f"{socket.gethostname()}:{config.port}",
            lease_ttl=config.lease_ttl,
            executors=executors,
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
        hub.address = config.advertise_address or advertised(config.host, port)
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
        config = load(RuntimeConfig, os.environ)
    except ConfigError as exc:
        raise SystemExit(f"codelab-runtime: {exc}") from None
    configure_logging(config.log_level)
    try:
        if command == "migrate":
            asyncio.run(migrate(config.database_url))
            structlog.get_logger("runtime").info("runtime_schema_migrated")
        else:
            configure_tracing("codelab-runtime", os.environ)
            run(serve(config), os.environ)
    except ConfigError as exc:
        raise SystemExit(f"codelab-runtime: {exc}") from None


if __name__ == "__main__":
    main()
