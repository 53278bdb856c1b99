"""Reading one service's settings from the environment.

Each service's ``__main__`` reads its variables once, through :class:`Env`,
into a frozen dataclass. Variables follow the seeds' convention
``<PREFIX>__<NAME>`` (``GATEWAY__PORT``, ``AGENT_RUNTIME__LLM_PROXY_ADDRESS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A variable is present but unusable; the message names it."""


class Env:
    """Typed access to the variables ``<prefix>__*`` of one environment."""

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        self._prefix = prefix
        self._environ = os.environ if environ is None else environ

    def name(self, key: str) -> str:
        return f"{self._prefix}__{key}"

    def raw(self, key: str) -> str | None:
        value = self._environ.get(self.name(key))
        return None if value is None or value == "" else value

    def str(self, key: str, default: str) -> str:
        value = self.raw(key)
        return default if value is None else value

    def required(self, key: str) -> str:
        value = self.raw(key)
        if value is None:
            raise ConfigError(f"{self.name(key)} must be set")
        return value

    def int(self, key: str, default: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{self.name(key)}={value!r} is not an integer") from None

    def float(self, key: str, default: float) -> float:
        value = self.raw(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{self.name(key)}={value!r} is not a number") from None

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{self.name(key)}={value!r} is not a boolean")

    def list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return default
        return tuple(item.strip() for item in value.split(",") if item.strip())
