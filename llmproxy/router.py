"""Building the LiteLLM Router, and describing the model groups it serves."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.router import Router
from litellm.router_utils.fallback_event_handlers import get_fallback_model_group
from litellm.router_utils.router_callbacks.track_deployment_metrics import (
    get_deployment_failures_for_current_minute,
    get_deployment_successes_for_current_minute,
)

from llmproxy.config import ProxyConfig
from llmproxy.offline import PROVIDER as OFFLINE_PROVIDER
from llmproxy.offline import OfflineLLM, OfflineSettings
from mesh.config import ConfigError


@dataclass(frozen=True)
class ModelDescription:
    """One model group as ``ListModels`` reports it."""

    name: str
    provider: str
    context_window: int
    supports_tools: bool


@dataclass(frozen=True)
class DeploymentHealth:
    """One deployment's circuit-breaker state, as ``GetDeploymentHealth`` reports it."""

    id: str
    model_name: str
    model: str
    cooling_down: bool
    cooldown_remaining: float
    last_error_status: int
    last_error: str
    failures_this_minute: int
    successes_this_minute: int


# HTTP statuses worth another attempt: request timeout and rate limit among
# the 4xx; every 5xx. Everything else in 4xx is the request's or the
# operator's fault and fails the same way every time.
_RETRYABLE_4XX = frozenset({408, 429})


class ProxyRouter(Router):
    """LiteLLM's Router with a stricter retry rule.

    LiteLLM retries 409, and retries 401/403 when a group has several
    deployments. Here no 4xx other than 408 and 429 is ever retried: a bad
    key or a bad request fails the same way on the next attempt, and the
    provider would be hit for nothing. Fallbacks (another model group) still
    apply, as LiteLLM decides. A ``retry_policy`` in the config, when given,
    replaces this rule, as in LiteLLM.

    ``on_retry``, when set, is called with the model group of every attempt
    the Router repeats (metrics).
    """

    on_retry: Callable[[str], None] | None = None

    def log_retry(self, kwargs: dict[str, Any], e: Exception) -> dict[str, Any]:
        if self.on_retry is not None:
            self.on_retry(str(kwargs.get("model") or ""))
        result: dict[str, Any] = super().log_retry(kwargs=kwargs, e=e)
        return result

    def should_retry_this_error(  # type: ignore[no-untyped-def]  # LiteLLM's signature
        self,
        error: Exception,
        healthy_deployments=None,
        all_deployments=None,
        context_window_fallbacks=None,
        content_policy_fallbacks=None,
        regular_fallbacks=None,
    ):
        status = getattr(error, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise error
        return super().should_retry_this_error(
            error,
            healthy_deployments=healthy_deployments,
            all_deployments=all_deployments,
            context_window_fallbacks=context_window_fallbacks,
            content_policy_fallbacks=content_policy_fallbacks,
            regular_fallbacks=regular_fallbacks,
        )


def register_offline_provider() -> None:
    """Make ``offline/...`` models resolvable; idempotent.

    ``litellm.custom_provider_map`` is process-global; entries for other
    providers are kept.
    """
    others = [item for item in litellm.custom_provider_map if item["provider"] != OFFLINE_PROVIDER]
    litellm.custom_provider_map = [
        *others,
        {"provider": OFFLINE_PROVIDER, "custom_handler": OfflineLLM()},
    ]
    litellm.utils.custom_llm_setup()  # type: ignore[no-untyped-call]


def build_router(config: ProxyConfig) -> ProxyRouter:
    """A Router for ``config``; applies its LiteLLM globals first.

    Raises :class:`ConfigError` for bad offline-model settings, and
    ``ValueError`` from LiteLLM when it rejects a setting.
    """
    for entry in config.model_list:
        params = entry["litellm_params"]
        if str(params["model"]).startswith(OFFLINE_PROVIDER + "/"):
            try:
                OfflineSettings.from_params(params)
            except ValueError as exc:
                raise ConfigError(f"{config.source}: {entry['model_name']}: {exc}") from None
    litellm.suppress_debug_info = True
    register_offline_provider()
    for key, value in config.litellm_globals.items():
        setattr(litellm, key, value)
    # The Router pops keys out of the dicts it is given.
    model_list = [copy.deepcopy(dict(entry)) for entry in config.model_list]
    return ProxyRouter(model_list=model_list, **dict(config.router_settings))


async def warm_up() -> None:
    """Stream one offline reply and count its tokens, in a throwaway Router.

    LiteLLM imports its logging, cost, tokenizer and MCP modules on the
    first call (about 0.7 s here); without this, the first request to each
    llmproxy process pays for it.
    """
    router = Router(
        model_list=[
            {
                "model_name": "warm-up",
                "litellm_params": {"model": f"{OFFLINE_PROVIDER}/warm-up", "reply_tokens": 2},
            }
        ]
    )
    messages: list[Any] = [{"role": "user", "content": "warm up"}]
    # With tools, LiteLLM also imports its MCP handler (0.4 s here).
    tool = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    stream = await router.acompletion(
        model="warm-up",
        messages=messages,
        stream=True,
        tools=[tool],
        stream_options={"include_usage": True},
    )
    async for _ in stream:
        pass
    litellm.token_counter(model=f"{OFFLINE_PROVIDER}/warm-up", messages=messages)
    router.discard()  # type: ignore[no-untyped-call]  # LiteLLM leaves it untyped


def knows_model(router: Router, model: str) -> bool:
    """Whether ``model`` names a group, an alias or a wildcard route."""
    if model in router.get_model_names():
        return True
    if router.model_group_alias and model in router.model_group_alias:
        return True
    return bool(router.pattern_router.route(model))


def describe_models(router: Router) -> list[ModelDescription]:
    """One description per model group, in configuration order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for deployment in router.get_model_list() or []:
        groups.setdefault(deployment["model_name"], []).append(deployment)
    return [describe_group(name, deployments) for name, deployments in groups.items()]


def describe_group(name: str, deployments: Iterable[Mapping[str, Any]]) -> ModelDescription:
    """Describe a group by its first deployment, the one tried first."""
    deployment = next(iter(deployments))
    params: Mapping[str, Any] = deployment.get("litellm_params") or {}
    info: Mapping[str, Any] = deployment.get("model_info") or {}
    model = str(params.get("model", ""))
    provider = str(params.get("custom_llm_provider") or "")
    if not provider and "/" in model:
        provider = model.split("/", 1)[0]
    known = _known_model_info(model, provider)
    context_window = info.get("max_input_tokens") or known.get("max_input_tokens") or 0
    supports_tools = info.get("supports_function_calling")
    if supports_tools is None:
        supports_tools = provider == OFFLINE_PROVIDER or bool(
            known.get("supports_function_calling")
        )
    return ModelDescription(
        name=name,
        provider=provider or "unknown",
        context_window=int(context_window),
        supports_tools=bool(supports_tools),
    )


def context_window_of(router: Router, model_group: str) -> tuple[int, str]:
    """(context window in tokens, model name for LiteLLM's token counter) of a group.

    The window is the group's first deployment's, 0 when unknown (no trimming).
    """
    deployments = [d for d in router.get_model_list() or [] if d.get("model_name") == model_group]
    if not deployments:
        return 0, ""
    description = describe_group(model_group, deployments)
    tokenizer = str((deployments[0].get("litellm_params") or {}).get("model", ""))
    return description.context_window, tokenizer


def _known_model_info(model: str, provider: str) -> Mapping[str, Any]:
    """LiteLLM's cost-map entry for ``model``, or empty when it has none."""
    if provider == OFFLINE_PROVIDER:
        return {}
    try:
        return litellm.get_model_info(model)
    except Exception:
        # get_model_info raises a bare Exception for models not in its map.
        return {}


def fallback_groups(router: Router, model_group: str) -> list[str]:
    """The groups ``router.fallbacks`` names for ``model_group`` (incl. ``*``), in order."""
    groups, _ = get_fallback_model_group(list(router.fallbacks or []), model_group)
    return [str(group) for group in groups or ()]


def deployment_of(router: Router, model_id: str | None) -> Mapping[str, Any] | None:
    """The deployment dict with ``model_info.id == model_id``, or None."""
    if not model_id:
        return None
    found = router.get_deployment(model_id=model_id)
    return None if found is None else found.model_dump(exclude_none=True)


def record_failure(router: Router, model_id: str | None, model_group: str, exc: Exception) -> bool:
    """Count a failure LiteLLM did not see (a first-token timeout) against a
    deployment, so its cooldown (the breaker) judges it like any other.

    Returns whether the deployment is now cooling down.
    """
    deployment = deployment_of(router, model_id)
    if deployment is None:
        return False
    now = time.time()
    return bool(
        router.deployment_callback_on_failure(
            kwargs={
                "exception": exc,
                "litellm_params": {
                    "model_info": dict(deployment.get("model_info") or {}),
                    "metadata": {"model_group": model_group},
                },
            },
            completion_response=None,
            start_time=now,
            end_time=now,
        )
    )


def deployment_health(router: Router) -> list[DeploymentHealth]:
    """Every deployment's cooldown state and this minute's counts, in config order."""
    deployments = router.get_model_list() or []
    ids = [str((d.get("model_info") or {}).get("id", "")) for d in deployments]
    active = dict(router.cooldown_cache.get_active_cooldowns(model_ids=ids, parent_otel_span=None))
    now = time.time()
    report = []
    for deployment, model_id in zip(deployments, ids, strict=True):
        cooldown = active.get(model_id)
        remaining = 0.0
        status = 0
        error = ""
        if cooldown is not None:
            ends = float(cooldown.get("timestamp", now)) + float(cooldown.get("cooldown_time", 0))
            remaining = max(0.0, ends - now)
            status = _int(cooldown.get("status_code"))
            error = _first_line(str(cooldown.get("exception_received", "")))
        params = deployment.get("litellm_params") or {}
        report.append(
            DeploymentHealth(
                id=model_id,
                model_name=str(deployment.get("model_name", "")),
                model=str(params.get("model", "")),
                cooling_down=cooldown is not None,
                cooldown_remaining=remaining,
                last_error_status=status,
                last_error=error,
                failures_this_minute=get_deployment_failures_for_current_minute(router, model_id),
                successes_this_minute=get_deployment_successes_for_current_minute(router, model_id),
            )
        )
    return report


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 300 else line[:297] + "..."
