"""GATEWAY__* → GatewayConfig."""

from __future__ import annotations

import pytest

from gateway.config import DEFAULT_MAX_FRAME_BYTES, GatewayConfig
from mesh.config import ConfigError, load


def test_defaults_need_only_the_internal_key():
    config = load(GatewayConfig, {"GATEWAY__INTERNAL_API_KEY": "k"})
    assert config == GatewayConfig(internal_api_key="k")
    assert (config.host, config.port, config.runtime_address) == (
        "127.0.0.1",
        8000,
        "127.0.0.1:50051",
    )
    assert config.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    assert (config.ping_interval, config.ping_timeout) == (20.0, 20.0)
    assert config.jwt_require_at_jwt is True


def test_missing_internal_key_is_refused():
    with pytest.raises(ConfigError, match="GATEWAY__INTERNAL_API_KEY"):
        load(GatewayConfig, {})


def test_overrides_and_disabled_keepalive():
    config = load(
        GatewayConfig,
        {
            "GATEWAY__INTERNAL_API_KEY": "k",
            "GATEWAY__PORT": "9000",
            "GATEWAY__JWT_AUDIENCE": "other",
            "GATEWAY__JWT_REQUIRE_AT_JWT": "false",
            "GATEWAY__MAX_FRAME_BYTES": "2048",
            "GATEWAY__PING_INTERVAL": "0",
        },
    )
    assert (config.port, config.jwt_audience, config.jwt_require_at_jwt) == (9000, "other", False)
    assert config.max_frame_bytes == 2048
    assert config.ping_interval is None


def test_bad_number_names_the_variable():
    with pytest.raises(ConfigError, match="GATEWAY__PORT"):
        load(GatewayConfig, {"GATEWAY__INTERNAL_API_KEY": "k", "GATEWAY__PORT": "x"})


def test_edge_limits_and_revocation_settings():
    config = load(
        GatewayConfig,
        {
            "GATEWAY__INTERNAL_API_KEY": "k",
            "GATEWAY__ALLOWED_ORIGINS": "https://IDE.example/, http://localhost:3000",
            "GATEWAY__MAX_CONNECTIONS_PER_USER": "4",
            "GATEWAY__MAX_CONNECTIONS": "100",
            "GATEWAY__CONNECT_RATE": "5",
            "GATEWAY__CONNECT_BURST": "10",
            "GATEWAY__FRAME_RATE": "0",
            "GATEWAY__FRAME_BURST": "7",
            "GATEWAY__IDLE_TIMEOUT": "60",
            "GATEWAY__SLOW_CONSUMER_TIMEOUT": "3",
            "GATEWAY__VIEW_TIMEOUT": "2",
            "GATEWAY__REVOCATIONS_URL": "http://auth/internal/revocations",
            "GATEWAY__REVOCATION_POLL_INTERVAL": "0.5",
            "GATEWAY__REVOCATION_RETENTION": "3600",
        },
    )
    assert config.allowed_origins == ("https://ide.example", "http://localhost:3000")
    assert (config.max_connections_per_user, config.max_connections) == (4, 100)
    assert (config.connect_rate, config.connect_burst) == (5.0, 10)
    assert (config.frame_rate, config.frame_burst) == (0.0, 7)
    assert (config.idle_timeout, config.slow_consumer_timeout, config.view_timeout) == (60, 3, 2)
    assert config.revocations_url == "http://auth/internal/revocations"
    assert (config.revocation_poll_interval, config.revocation_retention) == (0.5, 3600)
    assert config.feed_api_key == "k"  # falls back to the internal key


def test_edge_defaults():
    config = GatewayConfig(internal_api_key="k", auth_internal_api_key="feed")
    assert config.allowed_origins == ()
    assert (config.max_connections_per_user, config.max_connections) == (16, 10_000)
    assert (config.connect_rate, config.connect_burst) == (20.0, 40)
    assert (config.frame_rate, config.frame_burst) == (50.0, 100)
    assert config.slow_consumer_timeout == 10.0
    assert config.revocations_url == ""
    assert config.feed_api_key == "feed"


def test_runtime_replicas_are_one_round_robin_target() -> None:
    from gateway.__main__ import runtime_target

    assert runtime_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert runtime_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert runtime_target("dns:///runtime:50051") == "dns:///runtime:50051"
    with pytest.raises(ConfigError):
        runtime_target("runtime-a:1,runtime-b:2")


@pytest.mark.parametrize("name", ["MAX_TOOL_RESULT_BYTES", "MAX_MESSAGE_BYTES"])
@pytest.mark.parametrize("value", ["0", str(4 * 1024 * 1024)])
def test_payload_limits_stay_below_the_runtimes_message_limit(name: str, value: str):
    with pytest.raises(ConfigError, match=f"GATEWAY__{name}"):
        load(GatewayConfig, {"GATEWAY__INTERNAL_API_KEY": "k", f"GATEWAY__{name}": value})
    config = load(GatewayConfig, {"GATEWAY__INTERNAL_API_KEY": "k", f"GATEWAY__{name}": "4096"})
    assert 4096 in (config.payload_limits.tool_result, config.payload_limits.message)
