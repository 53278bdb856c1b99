"""Prometheus metrics: one registry per service, and a tiny asyncio endpoint.

Every service builds its own :class:`prometheus_client.CollectorRegistry`
in its composition root and hands it to the objects that count; nothing
registers in the library's global default registry, so tests can run
several services in one process. Every service serves ``GET /metrics``
from :class:`MetricsServer`, a minimal HTTP/1.1 responder on the event loop
(no thread, unlike ``prometheus_client.start_http_server``), on the port
named by ``*__METRICS_PORT`` (0, the default, disables it) and never on a
service's public port: the gateway's and auth's are reached by IDEs.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = structlog.get_logger("mesh.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds; from a database commit to a long model call."""

_MAX_REQUEST_BYTES = 8192
_READ_TIMEOUT = 5.0


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class RpcMetrics:
    """What :class:`mesh.grpc_server.CallInterceptor` counts per RPC."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "grpc_server_handled",
            "gRPC calls finished, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "grpc_server_handling_seconds",
            "gRPC call duration, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class MetricsServer:
    """``GET /metrics`` on ``host:port``; anything else is 404.

    :meth:`start` binds (``port=0`` picks a free one, see :attr:`port`);
    :meth:`stop` is idempotent. One request per connection, bounded in size
    and time; the exposition is built on the event loop (it is small).
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics_listening", host=self._host, port=self.port)
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except ConnectionError:
            return
        parts = head[:_MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].split()
        method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) == 3 else (b"", b"")
        if method in (b"GET", b"HEAD") and path == b"/metrics":
            body, content_type = exposition(self._registry)
            status = b"200 OK"
        else:
            body, content_type, status = b"not found\n", "text/plain", b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + (body if method != b"HEAD" else b"")
        )  # fmt: skip
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
