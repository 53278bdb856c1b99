"""The auth service's settings, read once from ``AUTH_SERVICE__*`` variables.

Each field is one variable, documented by its docstring (see
:mod:`mesh.config`; listed with defaults in ``docs/CONFIGURATION.md``). The
admin CLI reads the same variables, so both always agree on the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mesh.addresses import Network, parse_networks
from mesh.config import ConfigError, comma_list, not_negative, positive, setting

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.codelab/auth.db"


def _tcp_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "is not a TCP port"


def _some_scope(value: tuple[str, ...]) -> str | None:
    return None if value else "must name at least one scope"


def _networks(text: str) -> tuple[Network, ...]:
    return parse_networks(comma_list(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Everything the service needs to know about its environment."""

    env_prefix: ClassVar[str] = "AUTH_SERVICE"

    host: str = "127.0.0.1"
    """address the OAuth2 HTTP service listens on"""
    port: int = setting(8003, check=_tcp_port)
    """HTTP port: /oauth/token, /oauth/revoke, JWKS, discovery (metrics: METRICS_PORT)"""
    metrics_port: int = setting(0, check=_tcp_port)
    """Prometheus GET /metrics on this port of HOST, never on the public PORT (0: no metrics
    endpoint; scripts/up: 9103)"""
    database_url: str = DEFAULT_DATABASE_URL
    """users, clients, refresh tokens, lockouts, audit (PostgreSQL: postgresql+asyncpg://...)"""
    keys_dir: Path = Path(".codelab/keys")
    """signing keys, created on first start (files 0600, directory 0700)"""
    issuer: str = setting("http://127.0.0.1:8003", parse=lambda text: text.rstrip("/"))
    """iss of the tokens it signs; also the discovery document's issuer"""
    audience: str = "codelab-api"
    """aud of the access tokens"""
    access_token_ttl: int = setting(900, check=positive)
    """seconds an access token lives"""
    client_id: str = "codelab-ide"
    """the first-party client allowed to use the password grant"""
    scopes: tuple[str, ...] = setting(("codelab",), check=_some_scope)
    """scopes granted when a request names none (comma list)"""
    refresh_token_ttl: int = setting(30 * 24 * 3600, check=positive)
    """refresh tokens live this long (seconds); each use rotates them"""
    trusted_proxies: tuple[Network, ...] = setting((), parse=_networks)
    """proxies whose X-Forwarded-For is believed (comma list of IPs/CIDRs)"""
    internal_api_key: str | None = setting(None, example="${CODELAB_INTERNAL_API_KEY}")
    """key the gateway presents to /internal/revocations (empty: the feed is off)"""
    keys_reload_interval: float = setting(30.0, check=not_negative)
    """seconds between re-reads of KEYS_DIR (key rotation without restart)"""
    keys_publish_ahead: float = setting(600.0, check=not_negative)
    """a staged key is published this long before it signs"""
    keys_retire_leeway: float = setting(300.0, check=not_negative)
    """a retired key stays published access-token TTL + this long"""
    lockout_threshold: int = setting(10, check=positive)
    """failures before a temporary lockout, and its length (seconds)"""
    lockout_duration: float = setting(900.0, check=positive)
    """seconds a lockout lasts"""
    migrate_on_start: bool = True
    """apply pending schema migrations at start"""
    shutdown_grace: float = 10.0
    """seconds in-flight requests get on SIGTERM"""
    log_level: str = setting("INFO", parse=str.upper)
    """log level; logs are JSON unless stderr is a terminal"""

    def __post_init__(self) -> None:
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError(
                f"{self.env_prefix}__METRICS_PORT must differ from {self.env_prefix}__PORT: "
                "metrics are never served on the public port"
            )

    @property
    def key_retire_after(self) -> float:
        """How long a replaced key stays published: every token it signed has expired."""
        return self.access_token_ttl + self.keys_retire_leeway
