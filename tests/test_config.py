"""mesh.config: one loader for every service's config dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from auth.config import AuthConfig
from mesh.config import ConfigError, Variable, load, positive, setting, variables
from mesh.tls import TlsFiles


@dataclass(frozen=True, kw_only=True)
class Example:
    env_prefix: ClassVar[str] = "EXAMPLE"

    key: str = setting(example="${SECRET}")
    """a required credential"""
    ratio: float = setting(0.5, check=positive)
    """a positive ratio"""
    enabled: bool = True
    """turns it on"""
    names: tuple[str, ...] = ()
    """a comma list"""
    home: Path | None = setting(None, env="HOME_DIR")
    """somewhere"""


def test_types_defaults_and_names_come_from_the_fields() -> None:
    loaded = load(
        Example,
        {
            "EXAMPLE__KEY": "k",
            "EXAMPLE__ENABLED": "off",
            "EXAMPLE__NAMES": "a, b,,c",
            "EXAMPLE__HOME_DIR": "/srv",
            "EXAMPLE__RATIO": "",  # empty counts as unset
        },
    )
    assert loaded == Example(
        key="k", ratio=0.5, enabled=False, names=("a", "b", "c"), home=Path("/srv")
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "EXAMPLE__KEY must be set"),
        ({"EXAMPLE__KEY": "k", "EXAMPLE__RATIO": "x"}, "EXAMPLE__RATIO='x' is not a number"),
        ({"EXAMPLE__KEY": "k", "EXAMPLE__RATIO": "0"}, "EXAMPLE__RATIO='0' must be positive"),
        ({"EXAMPLE__KEY": "k", "EXAMPLE__ENABLED": "maybe"}, "EXAMPLE__ENABLED='maybe' is not"),
    ],
)
def test_an_unusable_value_names_its_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(Example, environ)


def test_the_docs_come_from_the_field_docstrings() -> None:
    assert list(variables(Example)) == [
        Variable("EXAMPLE__KEY", "${SECRET}", "a required credential", ""),
        Variable("EXAMPLE__RATIO", "0.5", "a positive ratio", "0.5"),
        Variable("EXAMPLE__ENABLED", "true", "turns it on", "true"),
        Variable("EXAMPLE__NAMES", "", "a comma list", ""),
        Variable("EXAMPLE__HOME_DIR", "", "somewhere", ""),
    ]


def test_an_undocumented_field_is_refused() -> None:
    @dataclass(frozen=True)
    class Undocumented:
        env_prefix: ClassVar[str] = "X"
        port: int = 1

    with pytest.raises(ValueError, match="X__PORT"):
        list(variables(Undocumented))


def test_auth_checks_name_the_variable() -> None:
    assert load(AuthConfig, {}) == AuthConfig()
    issuer = load(AuthConfig, {"AUTH_SERVICE__ISSUER": "https://auth.example/"}).issuer
    assert issuer == "https://auth.example"
    for name, value in [
        ("PORT", "70000"),
        ("ACCESS_TOKEN_TTL", "0"),
        ("KEYS_RELOAD_INTERVAL", "-1"),
        ("SCOPES", ", ,"),
        ("TRUSTED_PROXIES", "not-an-address"),
    ]:
        with pytest.raises(ConfigError, match=f"AUTH_SERVICE__{name}"):
            load(AuthConfig, {f"AUTH_SERVICE__{name}": value})


def test_tls_files_are_read_from_their_three_variables() -> None:
    from runtime.__main__ import RuntimeConfig

    config = load(
        RuntimeConfig,
        {
            "AGENT_RUNTIME__INTERNAL_API_KEY": "k",
            "AGENT_RUNTIME__TLS_CERT": "c.pem",
            "AGENT_RUNTIME__TLS_KEY": "k.pem",
            "AGENT_RUNTIME__TLS_CLIENT_CA": "ca.pem",
            "AGENT_RUNTIME__LLM_PROXY_TLS_CA": "proxy-ca.pem",
        },
    )
    assert config.tls == TlsFiles(cert="c.pem", key="k.pem", ca="ca.pem")
    assert config.llm_proxy_tls == TlsFiles(ca="proxy-ca.pem")


def test_the_floor_under_users_approval_rules() -> None:
    from runtime.__main__ import RuntimeConfig

    key = {"AGENT_RUNTIME__INTERNAL_API_KEY": "k"}
    default = load(RuntimeConfig, key).rule_limits()
    assert default.user_auto_approve == frozenset(load(RuntimeConfig, key).approval_required)
    assert default.max_auto_approvals_per_turn == 25
    narrowed = load(
        RuntimeConfig,
        {
            **key,
            "AGENT_RUNTIME__APPROVAL_REQUIRED": "write_file,execute_command",
            "AGENT_RUNTIME__MAX_AUTO_APPROVALS_PER_TURN": "3",
        },
    ).rule_limits()
    assert narrowed.user_auto_approve == {"write_file", "execute_command"}
    assert narrowed.max_auto_approvals_per_turn == 3
    none = load(RuntimeConfig, {**key, "AGENT_RUNTIME__USER_AUTO_APPROVE": "none"})
    assert none.rule_limits().user_auto_approve == frozenset()
    for name, value in [("USER_AUTO_APPROVE", "rm"), ("MAX_AUTO_APPROVALS_PER_TURN", "-1")]:
        with pytest.raises(ConfigError, match=f"AGENT_RUNTIME__{name}"):
            load(RuntimeConfig, {**key, f"AGENT_RUNTIME__{name}": value})
