"""GATEWAY__* → GatewayConfig."""

from __future__ import annotations

import pytest

from gateway.config import DEFAULT_MAX_FRAME_BYTES, GatewayConfig
from mesh.env import ConfigError, Env


def test_defaults_need_only_the_internal_key():
    config = GatewayConfig.from_env(Env("GATEWAY", {"GATEWAY__INTERNAL_API_KEY": "k"}))
    assert config == GatewayConfig(internal_api_key="k")
    assert (config.host, config.port, config.runtime_address) == (
        "127.0.0.1",
        8000,
        "127.0.0.1:50051",
    )
    assert config.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    assert (config.ping_interval, config.ping_timeout) == (20.0, 20.0)


def test_missing_internal_key_is_refused():
    with pytest.raises(ConfigError, match="GATEWAY__INTERNAL_API_KEY"):
        GatewayConfig.from_env(Env("GATEWAY", {}))


def test_overrides_and_disabled_keepalive():
    config = GatewayConfig.from_env(
        Env(
            "GATEWAY",
            {
                "GATEWAY__INTERNAL_API_KEY": "k",
                "GATEWAY__PORT": "9000",
                "GATEWAY__JWT_AUDIENCE": "other",
                "GATEWAY__JWT_REQUIRE_AT_JWT": "true",
                "GATEWAY__MAX_FRAME_BYTES": "2048",
                "GATEWAY__PING_INTERVAL": "0",
            },
        )
    )
    assert (config.port, config.jwt_audience, config.jwt_require_at_jwt) == (9000, "other", True)
    assert config.max_frame_bytes == 2048
    assert config.ping_interval is None


def test_bad_number_names_the_variable():
    with pytest.raises(ConfigError, match="GATEWAY__PORT"):
        GatewayConfig.from_env(
            Env("GATEWAY", {"GATEWAY__INTERNAL_API_KEY": "k", "GATEWAY__PORT": "x"})
        )
