"""The gateway's settings, read once from ``GATEWAY__*`` by ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.env import Env

DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
"""1 MiB: a ``tool_result`` carries whole file contents."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs; tests build it directly."""

    internal_api_key: str
    host: str = "127.0.0.1"
    port: int = 8000
    runtime_address: str = "127.0.0.1:50051"
    jwks_url: str = "http://127.0.0.1:8003/.well-known/jwks.json"
    jwt_issuer: str = "http://127.0.0.1:8003"
    jwt_audience: str = "codelab-api"
    jwt_leeway: float = 30.0
    jwt_require_at_jwt: bool = False
    jwks_ttl: float = 300.0
    jwks_min_refetch_interval: float = 10.0
    jwks_timeout: float = 5.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_queue: int = 16
    """Incoming frames buffered per connection before reading pauses."""
    write_limit: int = 64 * 1024
    """Outgoing bytes buffered per connection before sends wait."""
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    open_timeout: float = 10.0
    close_timeout: float = 10.0
    shutdown_grace: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Env) -> GatewayConfig:
        """Read ``GATEWAY__*``; raises :class:`mesh.env.ConfigError`."""
        return cls(
            internal_api_key=env.required("INTERNAL_API_KEY"),
            host=env.str("HOST", cls.host),
            port=env.int("PORT", cls.port),
            runtime_address=env.str("RUNTIME_ADDRESS", cls.runtime_address),
            jwks_url=env.str("JWKS_URL", cls.jwks_url),
            jwt_issuer=env.str("JWT_ISSUER", cls.jwt_issuer),
            jwt_audience=env.str("JWT_AUDIENCE", cls.jwt_audience),
            jwt_leeway=env.float("JWT_LEEWAY", cls.jwt_leeway),
            jwt_require_at_jwt=env.bool("JWT_REQUIRE_AT_JWT", cls.jwt_require_at_jwt),
            jwks_ttl=env.float("JWKS_TTL", cls.jwks_ttl),
            jwks_min_refetch_interval=env.float(
                "JWKS_MIN_REFETCH_INTERVAL", cls.jwks_min_refetch_interval
            ),
            jwks_timeout=env.float("JWKS_TIMEOUT", cls.jwks_timeout),
            max_frame_bytes=env.int("MAX_FRAME_BYTES", cls.max_frame_bytes),
            max_queue=env.int("MAX_QUEUE", cls.max_queue),
            write_limit=env.int("WRITE_LIMIT", cls.write_limit),
            ping_interval=_optional_seconds(env.float("PING_INTERVAL", 20.0)),
            ping_timeout=_optional_seconds(env.float("PING_TIMEOUT", 20.0)),
            open_timeout=env.float("OPEN_TIMEOUT", cls.open_timeout),
            close_timeout=env.float("CLOSE_TIMEOUT", cls.close_timeout),
            shutdown_grace=env.float("SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env.str("LOG_LEVEL", cls.log_level),
        )


def _optional_seconds(value: float) -> float | None:
    """0 disables a keepalive timer."""
    return value if value > 0 else None
