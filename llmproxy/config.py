"""The proxy's model configuration, in LiteLLM's own proxy YAML format.

A user's existing LiteLLM ``config.yaml`` works unchanged::

    model_list:
      - model_name: gpt-4o
        litellm_params:
          model: openai/gpt-4o
          api_key: os.environ/OPENAI_API_KEY
    router_settings:
      num_retries: 2
      timeout: 60
    litellm_settings:
      fallbacks: [{gpt-4o: [offline]}]

``os.environ/NAME`` references in ``litellm_params`` are resolved here, when
the file is loaded, so that a missing variable is a startup error that names
it (LiteLLM itself would quietly substitute None and fail on the first call).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mesh.config import ConfigError

ENV_REFERENCE_PREFIX = "os.environ/"

# litellm_settings keys that LiteLLM's own proxy hands to the Router; they
# merge into router_settings (router_settings wins when both set one).
_ROUTER_KEYS_IN_LITELLM_SETTINGS = frozenset(
    {
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "default_fallbacks",
        "num_retries",
        "allowed_fails",
        "cooldown_time",
        "retry_policy",
        "model_group_alias",
    }
)
# litellm_settings keys applied as LiteLLM module globals, with the rename
# LiteLLM's proxy uses (``request_timeout`` is the per-call default timeout).
_GLOBAL_KEYS_IN_LITELLM_SETTINGS = frozenset(
    {"drop_params", "modify_params", "request_timeout", "num_retries_per_request"}
)


# Keys of the proxy's own stream timeouts. They may be written in
# litellm_params (next to LiteLLM's timeout/stream_timeout) or in model_info;
# either way they end up in model_info, so LiteLLM never forwards them to a
# provider as request parameters.
STREAM_TIMEOUT_KEYS = frozenset({"stream_first_token_timeout", "stream_chunk_timeout"})


@dataclass(frozen=True)
class ProxyConfig:
    """A validated configuration, with environment references resolved.

    ``model_list`` entries are plain dicts in LiteLLM's shape; the Router
    mutates what it is given, so :func:`llmproxy.router.build_router` copies
    them first.
    """

    model_list: tuple[Mapping[str, Any], ...]
    router_settings: Mapping[str, Any] = field(default_factory=dict)
    litellm_globals: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"


def default_config_path() -> Path:
    """The packaged ``default.yaml``: only the offline model."""
    return Path(str(resources.files("llmproxy").joinpath("default.yaml")))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read and validate a YAML file; raises :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(document, environ=environ, source=str(path))


def parse_config(
    document: Any, *, environ: Mapping[str, str] | None = None, source: str = "<memory>"
) -> ProxyConfig:
    """Validate an already parsed document; raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a model_list")
    # LiteLLM proxy files often carry general_settings and friends; they mean
    # nothing here, but they must not stop a user's file from loading.
    raw_models = document.get("model_list")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{source}: model_list must be a non-empty list")
    models = tuple(
        _parse_model(entry, index, env, source) for index, entry in enumerate(raw_models)
    )

    router_settings = _mapping(document.get("router_settings"), "router_settings", source)
    litellm_settings = _mapping(document.get("litellm_settings"), "litellm_settings", source)
    merged: dict[str, Any] = {
        key: value
        for key, value in litellm_settings.items()
        if key in _ROUTER_KEYS_IN_LITELLM_SETTINGS
    }
    merged.update(router_settings)
    accepted = _router_parameters()
    for key in merged:
        if key not in accepted:
            raise ConfigError(f"{source}: router_settings.{key} is not a litellm.Router setting")
    if "model_list" in merged:
        raise ConfigError(f"{source}: router_settings must not contain model_list")
    supported = _ROUTER_KEYS_IN_LITELLM_SETTINGS | _GLOBAL_KEYS_IN_LITELLM_SETTINGS
    globals_ = {}
    for key, value in litellm_settings.items():
        if key in _GLOBAL_KEYS_IN_LITELLM_SETTINGS:
            globals_[key] = value
        elif key not in _ROUTER_KEYS_IN_LITELLM_SETTINGS:
            raise ConfigError(
                f"{source}: litellm_settings.{key} is not supported here "
                f"(supported: {', '.join(sorted(supported))})"
            )
    return ProxyConfig(
        model_list=models, router_settings=merged, litellm_globals=globals_, source=source
    )


def _parse_model(entry: Any, index: int, environ: Mapping[str, str], source: str) -> dict[str, Any]:
    where = f"{source}: model_list[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping")
    name = entry.get("model_name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.model_name must be a non-empty string")
    params = entry.get("litellm_params")
    if not isinstance(params, dict) or not isinstance(params.get("model"), str):
        raise ConfigError(f"{where} ({name}): litellm_params.model must be a string")
    resolved = {
        key: _resolve(value, f"{where} ({name}): litellm_params.{key}", environ)
        for key, value in params.items()
    }
    model_info = dict(_mapping(entry.get("model_info"), f"model_list[{index}].model_info", source))
    for key in STREAM_TIMEOUT_KEYS:
        if key in resolved:
            model_info.setdefault(key, resolved.pop(key))
        value = model_info.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ConfigError(f"{where} ({name}): {key} must be a number of seconds >= 0")
    return {"model_name": name, "litellm_params": resolved, "model_info": model_info}


def _resolve(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    if not isinstance(value, str) or not value.startswith(ENV_REFERENCE_PREFIX):
        return value
    name = value.removeprefix(ENV_REFERENCE_PREFIX)
    resolved = environ.get(name)
    if resolved is None:
        raise ConfigError(f"{where} refers to environment variable {name}, which is not set")
    return resolved


def _mapping(value: Any, what: str, source: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {what} must be a mapping")
    return value


def _router_parameters() -> frozenset[str]:
    from litellm.router import Router

    return frozenset(inspect.signature(Router.__init__).parameters) - {"self"}
