"""The runtime's Prometheus series; one instance per process, on its registry.

Counted where a turn, a model call, a tool call or a commit ends, never per
token: the streaming path only counts deltas in a local variable.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from mesh.metrics import LATENCY_BUCKETS


class RuntimeMetrics:
    """Every series the runtime exports (names in the README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.turns = Counter(
            "codelab_runtime_turns",
            "Turns ended, by status (completed, cancelled, failed).",
            ["status"],
            registry=registry,
        )
        self.turn_duration = Histogram(
            "codelab_runtime_turn_duration_seconds",
            "From the user's message to the end of the turn, waits for tools included.",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "codelab_runtime_time_to_first_token_seconds",
            "From a model call to its first delta, by model group.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.llm_calls = Counter(
            "codelab_runtime_llm_calls",
            "Model calls through the LLM proxy, by model group and outcome.",
            ["model", "outcome"],
            registry=registry,
        )
        self.tokens_streamed = Counter(
            "codelab_runtime_tokens_streamed",
            "Deltas (text and tool-call fragments) streamed from the model, by model group.",
            ["model"],
            registry=registry,
        )
        self.usage_tokens = Counter(
            "codelab_runtime_usage_tokens",
            "Tokens the provider billed per turn, by kind (prompt, completion).",
            ["kind"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "codelab_runtime_tool_calls",
            "Tool calls the model made, by tool and outcome "
            "(refused, completed, failed, rejected, cancelled, runtime).",
            ["tool", "outcome"],
            registry=registry,
        )
        self.approvals = Counter(
            "codelab_runtime_approvals",
            "Decisions on tool calls and plans, by tool and decision (auto: by the user's rules).",
            ["tool", "decision"],
            registry=registry,
        )
        self.histories_rested = Counter(
            "codelab_runtime_histories_rested",
            "Idle sessions' histories let go from memory (AGENT_RUNTIME__RESTING_HISTORY_MB).",
            registry=registry,
        )
        self.histories_recalled = Counter(
            "codelab_runtime_histories_recalled",
            "Resting sessions' histories read back from the database at their next event.",
            registry=registry,
        )
        self.db_commit = Histogram(
            "codelab_runtime_db_commit_seconds",
            "Duration of one step's transaction (events, messages, calls).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
