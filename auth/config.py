"""The auth service's settings, read once from ``AUTH_SERVICE__*`` variables.

See ``auth.__main__`` for the list of variables and their defaults. The
admin CLI reads the same variables, so both always agree on the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh.env import ConfigError, Env

ENV_PREFIX = "AUTH_SERVICE"

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.codelab/auth.db"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Everything the service needs to know about its environment."""

    host: str = "127.0.0.1"
    port: int = 8003
    database_url: str = DEFAULT_DATABASE_URL
    keys_dir: Path = Path(".codelab/keys")
    issuer: str = "http://127.0.0.1:8003"
    audience: str = "codelab-api"
    access_token_ttl: int = 900
    client_id: str = "codelab-ide"
    scopes: tuple[str, ...] = ("codelab",)
    migrate_on_start: bool = True
    shutdown_grace: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Env) -> AuthConfig:
        """Read the variables; raises :class:`mesh.env.ConfigError` naming a bad one."""
        defaults = cls()
        config = cls(
            host=env.str("HOST", defaults.host),
            port=env.int("PORT", defaults.port),
            database_url=env.str("DATABASE_URL", defaults.database_url),
            keys_dir=Path(env.str("KEYS_DIR", str(defaults.keys_dir))),
            issuer=env.str("ISSUER", defaults.issuer).rstrip("/"),
            audience=env.str("AUDIENCE", defaults.audience),
            access_token_ttl=env.int("ACCESS_TOKEN_TTL", defaults.access_token_ttl),
            client_id=env.str("CLIENT_ID", defaults.client_id),
            scopes=env.list("SCOPES", defaults.scopes),
            migrate_on_start=env.bool("MIGRATE_ON_START", defaults.migrate_on_start),
            shutdown_grace=env.float("SHUTDOWN_GRACE", defaults.shutdown_grace),
            log_level=env.str("LOG_LEVEL", defaults.log_level).upper(),
        )
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"{env.name('PORT')}={config.port} is not a TCP port")
        if config.access_token_ttl <= 0:
            raise ConfigError(
                f"{env.name('ACCESS_TOKEN_TTL')} must be a positive number of seconds"
            )
        if not config.scopes:
            raise ConfigError(f"{env.name('SCOPES')} must name at least one scope")
        return config
