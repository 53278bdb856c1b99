"""The LLM proxy's Prometheus series; one instance per process, on its registry.

Calls are counted when they end (never per chunk). The breaker state is
read from the Router's cooldowns when Prometheus scrapes, not tracked.
"""

from __future__ import annotations

from collections.abc import Iterator

from litellm.router import Router
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmproxy.router import deployment_health
from mesh.metrics import LATENCY_BUCKETS


class ProxyMetrics:
    """Every series the proxy exports (names in the README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.calls = Counter(
            "codelab_llmproxy_calls",
            "LLM calls (StreamChat, Chat, Embed) by requested model group and status "
            "(ok, cancelled, interrupted, or the error reason: rate_limited, timed_out, ...).",
            ["model", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "codelab_llmproxy_call_duration_seconds",
            "LLM call duration, retries and fallbacks included, by model group.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "codelab_llmproxy_retries",
            "Attempts LiteLLM's Router repeated after a failure, by model group.",
            ["model"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "codelab_llmproxy_fallbacks",
            "Streams moved to a fallback group after no first delta in time.",
            ["from_model", "to_model"],
            registry=registry,
        )

    def watch_breakers(self, router: Router) -> None:
        """Export ``router``'s deployment cooldowns (call once per router)."""
        self.registry.register(BreakerCollector(router))


class BreakerCollector(Collector):
    """``codelab_llmproxy_deployment_cooling_down``: 1 while a deployment's
    circuit breaker (LiteLLM's cooldown) is open, read at scrape time."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "codelab_llmproxy_deployment_cooling_down",
            "1 while the deployment cools down after failures (its breaker is open).",
            labels=["model", "deployment", "deployment_id"],
        )
        for health in deployment_health(self._router):
            gauge.add_metric(
                [health.model_name, health.model, health.id], 1.0 if health.cooling_down else 0.0
            )
        yield gauge
