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
    jwt_require_at_jwt: bool = True
    """Only ``typ: at+jwt`` tokens (RFC 9068); False also takes ``JWT`` or none."""
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
    shutdown_delay: float = 0.0
    """Seconds ``/ready`` answers 503 before the listener closes on SIGTERM."""
    log_level: str = "INFO"
    metrics_port: int = 0
    """Prometheus ``GET /metrics`` on ``host`` at this port, apart from the
    public one; 0 serves no metrics."""
    # -- the edge under attack (docs/GATEWAY.md) --
    allowed_origins: tuple[str, ...] = ()
    """WebSocket ``Origin`` allow-list; empty allows any, and none."""
    max_connections_per_user: int = 16
    max_connections: int = 10_000
    connect_rate: float = 20.0
    """Requests per second per client address (token bucket); 0 disables."""
    connect_burst: int = 40
    frame_rate: float = 50.0
    """IDE frames per second per connection (token bucket); 0 disables."""
    frame_burst: int = 100
    idle_timeout: float = 900.0
    """No frame either way for this long closes with 1001; 0 disables."""
    attach_on_first_frame: bool = True
    """Open the runtime stream of an idle session on the first IDE frame, or
    when another connection of the session here gets a newer event (see
    docs/GATEWAY.md); False opens it at connect."""
    slow_consumer_timeout: float = 10.0
    """A send blocked this long on ``write_limit`` closes with 1013."""
    view_timeout: float = 5.0
    """Bound of each unary runtime call (REST views, the ownership check)."""
    revocations_url: str = ""
    """The auth service's revocation feed; empty disables polling."""
    auth_internal_api_key: str = ""
    """Credential for the feed; empty means ``internal_api_key``."""
    revocation_poll_interval: float = 2.0
    revocation_retention: float = 86_400.0
    """How long a revocation is remembered; at least the longest token lifetime."""
    runtime_tls_ca: str = ""
    """PEM file: with it the runtime channel uses TLS (mTLS with cert and key)."""
    runtime_tls_cert: str = ""
    runtime_tls_key: str = ""
    runtime_tls_server_name: str = ""
    """Overrides the name checked in the runtime's certificate."""

    @property
    def feed_api_key(self) -> str:
        return self.auth_internal_api_key or self.internal_api_key

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
            shutdown_delay=env.float("SHUTDOWN_DELAY", cls.shutdown_delay),
            log_level=env.str("LOG_LEVEL", cls.log_level),
            metrics_port=env.int("METRICS_PORT", cls.metrics_port),
            allowed_origins=tuple(
                origin.lower().rstrip("/") for origin in env.list("ALLOWED_ORIGINS")
            ),
            max_connections_per_user=env.int(
                "MAX_CONNECTIONS_PER_USER", cls.max_connections_per_user
            ),
            max_connections=env.int("MAX_CONNECTIONS", cls.max_connections),
            connect_rate=env.float("CONNECT_RATE", cls.connect_rate),
            connect_burst=env.int("CONNECT_BURST", cls.connect_burst),
            frame_rate=env.float("FRAME_RATE", cls.frame_rate),
            frame_burst=env.int("FRAME_BURST", cls.frame_burst),
            idle_timeout=env.float("IDLE_TIMEOUT", cls.idle_timeout),
            attach_on_first_frame=env.bool("ATTACH_ON_FIRST_FRAME", cls.attach_on_first_frame),
            slow_consumer_timeout=env.float("SLOW_CONSUMER_TIMEOUT", cls.slow_consumer_timeout),
            view_timeout=env.float("VIEW_TIMEOUT", cls.view_timeout),
            revocations_url=env.str("REVOCATIONS_URL", cls.revocations_url),
            auth_internal_api_key=env.str("AUTH_INTERNAL_API_KEY", cls.auth_internal_api_key),
            revocation_poll_interval=env.float(
                "REVOCATION_POLL_INTERVAL", cls.revocation_poll_interval
            ),
            revocation_retention=env.float("REVOCATION_RETENTION", cls.revocation_retention),
            runtime_tls_ca=env.str("RUNTIME_TLS_CA", cls.runtime_tls_ca),
            runtime_tls_cert=env.str("RUNTIME_TLS_CERT", cls.runtime_tls_cert),
            runtime_tls_key=env.str("RUNTIME_TLS_KEY", cls.runtime_tls_key),
            runtime_tls_server_name=env.str("RUNTIME_TLS_SERVER_NAME", cls.runtime_tls_server_name),
        )


def _optional_seconds(value: float) -> float | None:
    """0 disables a keepalive timer."""
    return value if value > 0 else None
