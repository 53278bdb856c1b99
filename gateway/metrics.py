"""The gateway's Prometheus series; one instance per gateway, on its registry.

Counted at connect and close, never per frame: a connection's frame counts
are added when it closes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    """Every series the gateway exports (names in the README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.connections_open = Gauge(
            "codelab_gateway_connections_open",
            "WebSocket connections open now.",
            registry=registry,
        )
        self.connections = Counter(
            "codelab_gateway_connections_closed",
            "WebSocket connections closed, by close code.",
            ["code"],
            registry=registry,
        )
        self.connection_duration = Histogram(
            "codelab_gateway_connection_duration_seconds",
            "How long WebSocket connections stayed open.",
            buckets=(*LATENCY_BUCKETS, 900, 3600, 14400),
            registry=registry,
        )
        self.frames_in = Counter(
            "codelab_gateway_frames_received",
            "IDE frames received, added when their connection closes.",
            registry=registry,
        )
        self.frames_out = Counter(
            "codelab_gateway_frames_sent",
            "Frames sent to IDEs, added when their connection closes.",
            registry=registry,
        )
        self.handshakes_refused = Counter(
            "codelab_gateway_handshakes_refused",
            "WebSocket handshakes and REST requests refused, by HTTP status.",
            ["status"],
            registry=registry,
        )
