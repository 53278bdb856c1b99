"""Composition root: ``python -m gateway`` / ``codelab-gateway``.

Reads ``GATEWAY__*`` once (see :class:`gateway.config.GatewayConfig`), builds
the JWKS client, the runtime channel (TLS, with a client certificate for
mTLS, when ``RUNTIME_TLS_*`` are set), the revocation feed (when
``REVOCATIONS_URL`` is set), the Prometheus endpoint (when ``METRICS_PORT``
is set: ``GET /metrics`` on that port only, never on the public one), the
REST port (when ``REST_PORT`` is set: :mod:`gateway.rest_server`) and the
server, serves until SIGTERM or SIGINT, then closes every WebSocket with
1012 (service restart).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import httpx
import structlog
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.jwks import JwksCache, TokenVerifier
from gateway.metrics import GatewayMetrics
from gateway.replicas import ReplicaChannels
from gateway.rest_server import RestServer
from gateway.revocations import RevocationFeed, RevocationList
from gateway.server import Gateway
from mesh.config import ConfigError, load
from mesh.grpc_server import grpc_target, health_check, internal_metadata, mesh_channel
from mesh.logs import configure_logging
from mesh.metrics import MetricsServer
from mesh.process import run, settled
from mesh.signals import wait_for_stop_signal
from mesh.tls import TlsFileError
from mesh.tracing import configure_tracing
from runtime.v1 import runtime_pb2_grpc

log = structlog.get_logger("gateway")


@contextlib.asynccontextmanager
async def running_gateway(
    config: GatewayConfig, registry: CollectorRegistry | None = None
) -> AsyncIterator[Gateway]:
    """A started gateway with all its resources; stopped and disposed on exit.

    Tests use this to run the real composition in-process (``port=0`` picks
    a free port; read it from :attr:`Gateway.port`). Metrics go to
    ``registry`` (default: a new one), served at ``GET /metrics`` on
    ``metrics_port`` when it is set.
    """
    async with contextlib.AsyncExitStack() as stack:
        http_client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=config.jwks_timeout, follow_redirects=False)
        )
        channel = await stack.enter_async_context(runtime_channel(config))
        keys = JwksCache(
            http_client,
            config.jwks_url,
            ttl=config.jwks_ttl,
            min_refetch_interval=config.jwks_min_refetch_interval,
        )
        verifier = TokenVerifier(
            keys,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            leeway=config.jwt_leeway,
            require_at_jwt=config.jwt_require_at_jwt,
        )
        # A grpc.aio.Channel selects the stub's async overload.
        runtime = runtime_pb2_grpc.AgentRuntimeServiceStub(channel)
        revocations = RevocationList(retention=config.revocation_retention)
        check = health_check(channel)
        # With the credential, the check uses the runtime's slots for the
        # mesh's own calls, not the small pool left to anonymous probes.
        check_metadata = internal_metadata(config.internal_api_key)

        async def runtime_serving() -> bool:
            reply = await check(
                health_pb2.HealthCheckRequest(),
                metadata=check_metadata,
                timeout=config.view_timeout,
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        metrics = GatewayMetrics(registry)
        replicas = None
        if config.replica_channels > 0:
            replicas = ReplicaChannels(
                lambda address: runtime_channel(replace(config, runtime_address=address)),
                config.replica_channels,
            )
            stack.push_async_callback(replicas.close)
        gateway = Gateway(
            config,
            verifier,
            runtime,
            revocations=revocations,
            metrics=metrics,
            ready_checks={"runtime": runtime_serving, "jwks": keys.loaded},
            replicas=replicas,
        )
        stack.push_async_callback(gateway.stop)
        await gateway.start()
        if config.rest_port:
            rest = RestServer(gateway, config.host, config.rest_port, grace=config.shutdown_grace)
            await rest.start()
            stack.push_async_callback(rest.stop)
            gateway.rest_port = rest.port
        if config.metrics_port:
            exporter = MetricsServer(metrics.registry, config.host, config.metrics_port)
            await exporter.start()
            stack.push_async_callback(exporter.stop)
        if config.revocations_url:
            feed = RevocationFeed(
                http_client,
                config.revocations_url,
                internal_api_key=config.feed_api_key,
                revocations=revocations,
                listener=gateway.revoke,
                interval=config.revocation_poll_interval,
            )
            stack.push_async_callback(feed.stop)
            feed.start()
        yield gateway


def runtime_channel(config: GatewayConfig) -> grpc.aio.Channel:
    """The channel to the runtime: plaintext, or TLS when ``runtime_tls_ca``
    or a client certificate is configured (mTLS with ``runtime_tls_cert`` and
    ``runtime_tls_key``). Raises ConfigError for unreadable or half-given
    files.

    Several runtime replicas: ``runtime_address`` may be a comma list of
    ``host:port`` (or a ``dns:///name:port`` naming them all); calls are spread
    round robin, and a replica that is down is skipped.
    """
    runtime_target(config.runtime_address)
    try:
        return mesh_channel(
            config.runtime_address, config.runtime_tls, server_name=config.runtime_tls_server_name
        )
    except TlsFileError as exc:
        raise ConfigError(f"GATEWAY__RUNTIME_TLS_{exc.part.upper()}: {exc}") from None


def runtime_target(address: str) -> str:
    """A gRPC target for one address or a comma list of ``host:port``."""
    try:
        return grpc_target(address)
    except ValueError as exc:
        raise ConfigError(f"GATEWAY__RUNTIME_ADDRESS: {exc}") from None


async def serve(config: GatewayConfig) -> None:
    """Run until a stop signal arrives."""
    async with running_gateway(config):
        settled()
        received = await wait_for_stop_signal()
        log.info("gateway_stopping", signal=received.name)


def main() -> None:
    """Console entry point."""
    config = load(GatewayConfig, os.environ)
    configure_logging(config.log_level)
    # websockets logs every connection and HTTP response at INFO; the gateway
    # writes its own one-line summary per connection instead.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    configure_tracing("codelab-gateway", os.environ)
    run(serve(config), os.environ)


if __name__ == "__main__":
    main()
