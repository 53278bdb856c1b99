"""Building the LiteLLM Router, and describing the model groups it serves."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.router import Router

from llmproxy.config import ConfigError, ProxyConfig
from llmproxy.offline import PROVIDER as OFFLINE_PROVIDER
from llmproxy.offline import OfflineLLM, OfflineSettings


@dataclass(frozen=True)
class ModelDescription:
    """One model group as ``ListModels`` reports it."""

    name: str
    provider: str
    context_window: int
    supports_tools: bool


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


def build_router(config: ProxyConfig) -> Router:
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
    return Router(model_list=model_list, **dict(config.router_settings))


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


def _known_model_info(model: str, provider: str) -> Mapping[str, Any]:
    """LiteLLM's cost-map entry for ``model``, or empty when it has none."""
    if provider == OFFLINE_PROVIDER:
        return {}
    try:
        return litellm.get_model_info(model)
    except Exception:
        # get_model_info raises a bare Exception for models not in its map.
        return {}
