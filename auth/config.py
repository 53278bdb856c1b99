"""The auth service's settings, read once from ``AUTH_SERVICE__*`` variables.

See ``auth.__main__`` for the list of variables and their defaults. The
admin CLI reads the same variables, so both always agree on the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auth.addresses import Network, parse_networks
from mesh.env import ConfigError, Env

ENV_PREFIX = "AUTH_SERVICE"

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.codelab/auth.db"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Everything the service needs to know about its environment."""

    host: str = "127.0.0.1"
    port: int = 8003
    metrics_port: int = 0
    database_url: str = DEFAULT_DATABASE_URL
    keys_dir: Path = Path(".codelab/keys")
    issuer: str = "http://127.0.0.1:8003"
    audience: str = "codelab-api"
    access_token_ttl: int = 900
    client_id: str = "codelab-ide"
    scopes: tuple[str, ...] = ("codelab",)
    refresh_token_ttl: int = 30 * 24 * 3600
    trusted_proxies: tuple[Network, ...] = ()
    internal_api_key: str | None = None
    keys_reload_interval: float = 30.0
    keys_publish_ahead: float = 600.0
    keys_retire_leeway: float = 300.0
    lockout_threshold: int = 10
    lockout_duration: float = 900.0
    migrate_on_start: bool = True
    shutdown_grace: float = 10.0
    log_level: str = "INFO"

    @property
    def key_retire_after(self) -> float:
        """How long a replaced key stays published: every token it signed has expired."""
        return self.access_token_ttl + self.keys_retire_leeway

    @classmethod
    def from_env(cls, env: Env) -> AuthConfig:
        """Read the variables; raises :class:`mesh.env.ConfigError` naming a bad one."""
        defaults = cls()
        config = cls(
            host=env.str("HOST", defaults.host),
            port=env.int("PORT", defaults.port),
            metrics_port=env.int("METRICS_PORT", defaults.metrics_port),
            database_url=env.str("DATABASE_URL", defaults.database_url),
            keys_dir=Path(env.str("KEYS_DIR", str(defaults.keys_dir))),
            issuer=env.str("ISSUER", defaults.issuer).rstrip("/"),
            audience=env.str("AUDIENCE", defaults.audience),
            access_token_ttl=env.int("ACCESS_TOKEN_TTL", defaults.access_token_ttl),
            client_id=env.str("CLIENT_ID", defaults.client_id),
            scopes=env.list("SCOPES", defaults.scopes),
            refresh_token_ttl=env.int("REFRESH_TOKEN_TTL", defaults.refresh_token_ttl),
            trusted_proxies=_networks(env),
            internal_api_key=env.raw("INTERNAL_API_KEY"),
            keys_reload_interval=env.float("KEYS_RELOAD_INTERVAL", defaults.keys_reload_interval),
            keys_publish_ahead=env.float("KEYS_PUBLISH_AHEAD", defaults.keys_publish_ahead),
            keys_retire_leeway=env.float("KEYS_RETIRE_LEEWAY", defaults.keys_retire_leeway),
            lockout_threshold=env.int("LOCKOUT_THRESHOLD", defaults.lockout_threshold),
            lockout_duration=env.float("LOCKOUT_DURATION", defaults.lockout_duration),
            migrate_on_start=env.bool("MIGRATE_ON_START", defaults.migrate_on_start),
            shutdown_grace=env.float("SHUTDOWN_GRACE", defaults.shutdown_grace),
            log_level=env.str("LOG_LEVEL", defaults.log_level).upper(),
        )
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"{env.name('PORT')}={config.port} is not a TCP port")
        if not 0 <= config.metrics_port <= 65535:
            raise ConfigError(
                f"{env.name('METRICS_PORT')}={config.metrics_port} is not a TCP port (0: none)"
            )
        if config.metrics_port and config.metrics_port == config.port:
            raise ConfigError(
                f"{env.name('METRICS_PORT')} must differ from {env.name('PORT')}: "
                "metrics are never served on the public port"
            )
        if config.access_token_ttl <= 0:
            raise ConfigError(
                f"{env.name('ACCESS_TOKEN_TTL')} must be a positive number of seconds"
            )
        for name in ("REFRESH_TOKEN_TTL", "LOCKOUT_THRESHOLD", "LOCKOUT_DURATION"):
            if getattr(config, name.lower()) <= 0:
                raise ConfigError(f"{env.name(name)} must be positive")
        for name in ("KEYS_RELOAD_INTERVAL", "KEYS_PUBLISH_AHEAD", "KEYS_RETIRE_LEEWAY"):
            if getattr(config, name.lower()) < 0:
                raise ConfigError(f"{env.name(name)} must not be negative")
        if not config.scopes:
            raise ConfigError(f"{env.name('SCOPES')} must name at least one scope")
        return config


def _networks(env: Env) -> tuple[Network, ...]:
    try:
        return parse_networks(env.list("TRUSTED_PROXIES"))
    except ValueError as exc:
        raise ConfigError(f"{env.name('TRUSTED_PROXIES')}: {exc}") from None
