"""The gateway's settings, read once from ``GATEWAY__*`` by ``__main__``.

Each field is one variable, documented by its docstring (see
:mod:`mesh.config`); ``.env.example`` and ``docs/CONFIGURATION.md`` are
generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gateway.frames import DEFAULT_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, PayloadLimits
from gateway.profiles import parse_assignment
from mesh.addresses import Network, parse_networks
from mesh.config import comma_list, not_negative, positive, setting
from mesh.tls import TlsFiles

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
"""4 MiB: room to receive (and answer) a ``tool_result`` larger than the
runtime may get (``MAX_TOOL_RESULT_BYTES``); with ``MAX_QUEUE`` 4 a
connection still buffers at most 16 MiB, as 1 MiB x 16 did."""

INTERNAL_API_KEY_EXAMPLE = "${CODELAB_INTERNAL_API_KEY}"


def _optional_seconds(text: str) -> float | None:
    """0 disables a keepalive timer."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    return value if value > 0 else None


def _payload_bound(value: int) -> str | None:
    if 0 < value <= MAX_PAYLOAD_BYTES:
        return None
    return f"must be from 1 to {MAX_PAYLOAD_BYTES} (below the runtime's gRPC message limit)"


def _networks(text: str) -> tuple[Network, ...]:
    return parse_networks(comma_list(text))


def _profile_assignments(text: str) -> tuple[str, ...]:
    entries = comma_list(text)
    for entry in entries:
        parse_assignment(entry)  # a ValueError names the bad entry
    return entries


def _origins(text: str) -> tuple[str, ...]:
    return tuple(origin.lower().rstrip("/") for origin in comma_list(text))


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Everything the gateway needs; tests build it directly."""

    env_prefix: ClassVar[str] = "GATEWAY"

    host: str = "127.0.0.1"
    """address the WebSocket + HTTP edge listens on"""
    port: int = 8000
    """the IDE's port: WebSocket, read views, /health, /ready (metrics: METRICS_PORT)"""
    rest_port: int = 0
    """the REST views again on this port of HOST, where request bodies are read (PATCH
    /api/v1/sessions/{id}); the front door sends every REST path here (0: none, only the
    bodiless views on PORT; scripts/up: 8001)"""
    internal_api_key: str = setting(example=INTERNAL_API_KEY_EXAMPLE)
    """credential presented to the runtime (x-internal-auth)"""
    runtime_address: str = "127.0.0.1:50051"
    """the runtime's gRPC address; several replicas: a comma list, or dns:///name:port (round
    robin)"""
    jwks_url: str = "http://127.0.0.1:8003/.well-known/jwks.json"
    """where the token issuer publishes its signing keys"""
    jwt_issuer: str = "http://127.0.0.1:8003"
    """required iss of access tokens"""
    jwt_audience: str = "codelab-api"
    """required aud of access tokens"""
    jwt_leeway: float = 30.0
    """seconds of clock skew tolerated on exp/nbf/iat"""
    jwt_require_at_jwt: bool = True
    """only access tokens with header typ at+jwt (RFC 9068, what auth/ issues); false also
    accepts typ JWT or none"""
    jwks_ttl: float = 300.0
    """seconds the fetched keys are cached"""
    jwks_min_refetch_interval: float = 10.0
    """an unknown kid refetches the JWKS at most this often (seconds)"""
    jwks_timeout: float = 5.0
    """seconds a JWKS fetch may take"""
    max_frame_bytes: int = setting(DEFAULT_MAX_FRAME_BYTES, check=positive)
    """largest IDE frame the socket takes (4 MiB); larger closes 1009. A connection buffers at
    most MAX_FRAME_BYTES x MAX_QUEUE (16 MiB)"""
    max_queue: int = setting(4, check=positive)
    """incoming frames buffered per connection before reading pauses"""
    max_tool_result_bytes: int = setting(DEFAULT_PAYLOAD_BYTES, check=_payload_bound)
    """largest tool result passed to the runtime (encoded; 1 MiB); a larger one fails that
    call with an error the model sees (ask for a smaller part), the connection stays up"""
    max_message_bytes: int = setting(DEFAULT_PAYLOAD_BYTES, check=_payload_bound)
    """largest message content (user_message, switch_agent) or edited arguments (hitl_decision)
    passed to the runtime (1 MiB); larger: an error frame invalid_field"""
    write_limit: int = 64 * 1024
    """outgoing bytes buffered per connection before sends wait"""
    ping_interval: float | None = setting(20.0, parse=_optional_seconds)
    """0 disables keepalive pings"""
    ping_timeout: float | None = setting(20.0, parse=_optional_seconds)
    """seconds to wait for a pong before closing (0 disables)"""
    open_timeout: float = 10.0
    """seconds a WebSocket handshake may take"""
    close_timeout: float = 10.0
    """seconds to wait for the closing handshake"""
    shutdown_grace: float = 10.0
    """seconds connections get to close on SIGTERM (code 1012)"""
    shutdown_delay: float = 0.0
    """seconds /ready answers 503 before the listener closes on SIGTERM (0: close at once)"""
    log_level: str = "INFO"
    """log level; logs are JSON unless stderr is a terminal"""
    metrics_port: int = 0
    """Prometheus GET /metrics on this port of HOST, never on the public PORT (0: no metrics
    endpoint; scripts/up: 9100)"""
    # -- the edge under attack (docs/GATEWAY.md) --
    allowed_origins: tuple[str, ...] = setting((), parse=_origins)
    """Origins allowed to open the WebSocket (comma list); empty allows any and none"""
    max_connections_per_user: int = 16
    """open WebSockets per user / per process (0 = no limit)"""
    max_connections: int = 10_000
    """open WebSockets per process (0 = no limit); over it: 503"""
    trusted_proxies: tuple[Network, ...] = setting((), parse=_networks)
    """proxies whose X-Forwarded-For names the client (comma list of IPs/CIDRs; the front
    door: scripts/up sets 127.0.0.1); per-address limits then count the real client"""
    connect_rate: float = 20.0
    """handshakes per second per client address, and the burst (0 disables)"""
    connect_burst: int = 40
    """burst of handshakes allowed per client address"""
    frame_rate: float = 50.0
    """IDE frames per second per connection, and the burst (0 disables); over it: close 1008"""
    frame_burst: int = 100
    """burst of IDE frames allowed per connection"""
    idle_timeout: float = 900.0
    """seconds with no frame either way before the connection is closed (0 disables)"""
    attach_on_first_frame: bool = True
    """open the runtime stream of an idle session on the connection's first frame, not at
    connect (saves ~25 KB in the gateway and ~30 KB in the runtime per idle connection); it
    also opens when another connection of the session on the same gateway gets a newer event,
    so windows see each other's turns live; windows on different gateway replicas do not
    (docs/GATEWAY.md): false attaches every connection at connect"""
    client_profiles: tuple[str, ...] = setting(
        ("codelab-flutter-app=codelab-ide",), parse=_profile_assignments
    )
    """which OAuth client ids get which built-in profile (comma list of client_id=profile;
    profiles: strict, codelab-ide); any other client gets strict, the protocol in the README
    (docs/GATEWAY.md, "Client profiles")"""
    slow_consumer_timeout: float = 10.0
    """seconds a send may wait for an IDE that does not read before close 1013 (0 disables)"""
    view_timeout: float = 5.0
    """seconds each unary runtime call of the REST views may take"""
    revocations_url: str = setting("", example="http://127.0.0.1:8003/internal/revocations")
    """the auth service's revocation feed; empty turns revocation polling off"""
    auth_internal_api_key: str = setting("", example=INTERNAL_API_KEY_EXAMPLE)
    """key sent to the feed (default: INTERNAL_API_KEY)"""
    revocation_poll_interval: float = 2.0
    """seconds between polls of the revocation feed"""
    revocation_retention: float = 86_400.0
    """seconds a revocation is remembered (at least the longest token lifetime)"""
    runtime_tls_ca: str = ""
    """TLS / mTLS to the runtime: CA, client certificate and key (empty: plaintext)"""
    runtime_tls_cert: str = ""
    """client certificate for mTLS to the runtime (with RUNTIME_TLS_KEY)"""
    runtime_tls_key: str = ""
    """key of that client certificate"""
    runtime_tls_server_name: str = ""
    """name to verify in the runtime's certificate (default: from the address)"""
    replica_channels: int = setting(64, check=not_negative)
    """channels kept to single runtime replicas: a replica refusing a session names the one
    holding its lease and the gateway connects straight there (0: retry on the balanced channel
    instead)"""

    @property
    def payload_limits(self) -> PayloadLimits:
        """What a frame may carry to the runtime (:func:`gateway.frames.parse_frame`)."""
        return PayloadLimits(message=self.max_message_bytes, tool_result=self.max_tool_result_bytes)

    @property
    def feed_api_key(self) -> str:
        return self.auth_internal_api_key or self.internal_api_key

    @property
    def runtime_tls(self) -> TlsFiles:
        """The files of the runtime channel (none: plaintext)."""
        return TlsFiles(
            cert=self.runtime_tls_cert, key=self.runtime_tls_key, ca=self.runtime_tls_ca
        )
