"""Reading one service's settings from the environment.

Each service's ``__main__`` reads its variables once, through :class:`Env`,
into a frozen dataclass. Variables follow the seeds' convention
``<PREFIX>__<NAME>`` (``GATEWAY__PORT``, ``AGENT_RUNTIME__LLM_PROXY_ADDRESS``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A variable is present but unusable; the message names it."""


class Env:
    """Typed access to the variables ``<prefix>__*`` of one environment."""

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        self._prefix = prefix
        self._environ = os.environ if environ is None else environ

    def name(self, key: builtins.str) -> builtins.str:
        return f"{self._prefix}__{key}"

    def raw(self, key: builtins.str) -> builtins.str | None:
        value = self._environ.get(self.name(key))
        return None if value is None or value == "" else value

    def str(self, key: builtins.str, default: builtins.str) -> builtins.str:
        value = self.raw(key)
        return default if value is None else value

    def required(self, key: builtins.str) -> builtins.str:
        value = self.raw(key)
        if value is None:
            raise ConfigError(f"{self.name(key)} must be set")
        return value

    def int(self, key: builtins.str, default: builtins.int) -> builtins.int:
        value = self.raw(key)
        if value is None:
            return default
        try:
            return builtins.int(value)
        except ValueError:
            raise ConfigError(f"{self.name(key)}={value!r} is not an integer") from None

    def float(self, key: builtins.str, default: builtins.float) -> builtins.float:
        value = self.raw(key)
        if value is None:
            return default
        try:
            return builtins.float(value)
        except ValueError:
            raise ConfigError(f"{self.name(key)}={value!r} is not a number") from None

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.raw(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{self.name(key)}={value!r} is not a boolean")

    def list(
        self, key: builtins.str, default: tuple[builtins.str, ...] = ()
    ) -> tuple[builtins.str, ...]:
        value = self.raw(key)
        if value is None:
            return default
        return tuple(item.strip() for item in value.split(",") if item.strip())
