"""Loading LiteLLM proxy YAML: environment references and settings."""

from __future__ import annotations

from pathlib import Path

import litellm
import pytest

from llmproxy.config import ConfigError, default_config_path, load_config, parse_config
from llmproxy.router import build_router, describe_models


def document(**extra: object) -> dict[str, object]:
    return {
        "model_list": [
            {
                "model_name": "gpt",
                "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/MY_KEY"},
            },
            {"model_name": "offline", "litellm_params": {"model": "offline/echo"}},
        ],
        **extra,
    }


def test_environment_references_are_resolved() -> None:
    config = parse_config(document(), environ={"MY_KEY": "sk-123"})

    assert config.model_list[0]["litellm_params"]["api_key"] == "sk-123"


def test_a_missing_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(gpt\).*MY_KEY.*not set"):
        parse_config(document(), environ={})


def test_router_settings_and_litellm_fallbacks_reach_the_router(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # build_router sets LiteLLM globals; restore them after the test.
    monkeypatch.setattr(litellm, "drop_params", litellm.drop_params)
    config = parse_config(
        document(
            router_settings={"num_retries": 3, "timeout": 30, "cooldown_time": 5},
            litellm_settings={"fallbacks": [{"gpt": ["offline"]}], "drop_params": True},
        ),
        environ={"MY_KEY": "sk-123"},
    )

    assert config.router_settings == {
        "num_retries": 3,
        "timeout": 30,
        "cooldown_time": 5,
        "fallbacks": [{"gpt": ["offline"]}],
    }
    assert config.litellm_globals == {"drop_params": True}
    router = build_router(config)
    assert litellm.drop_params is True
    assert router.fallbacks == [{"gpt": ["offline"]}]
    assert router.num_retries == 3
    assert [m.name for m in describe_models(router)] == ["gpt", "offline"]


def test_unknown_router_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"router_settings\.num_retry is not"):
        parse_config(document(router_settings={"num_retry": 1}), environ={"MY_KEY": "x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list: []", "model_list must be a non-empty list"),
        ("- a\n- b", "top level must be a mapping"),
        ("model_list: [{model_name: x}]", r"\(x\): litellm_params.model must be a string"),
        (
            "model_list: [{model_name: x, litellm_params: {model: a}}]\nrouter_settings: 3",
            "router_settings must be a mapping",
        ),
        ("model_list: [", "not valid YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_packaged_default_is_the_offline_model_only() -> None:
    config = load_config(default_config_path())

    assert [m["model_name"] for m in config.model_list] == ["offline"]
    assert config.model_list[0]["litellm_params"]["model"] == "offline/echo"


def test_bad_offline_settings_fail_at_startup() -> None:
    config = parse_config(
        {
            "model_list": [
                {
                    "model_name": "offline",
                    "litellm_params": {"model": "offline/echo", "reply_tokens": 0},
                }
            ]
        }
    )

    with pytest.raises(ConfigError, match="offline: offline model: reply_tokens"):
        build_router(config)


EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-fake-openai",
    "OPENAI_API_KEY_SECONDARY": "sk-fake-openai-2",
    "ANTHROPIC_API_KEY": "sk-ant-fake",
    "OLLAMA_API_BASE": "http://127.0.0.1:11434",
}


def test_the_providers_example_loads_and_builds_a_router(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(litellm, "drop_params", litellm.drop_params)
    path = Path(__file__).parents[2] / "llmproxy" / "examples" / "providers.yaml"

    config = load_config(path, environ=EXAMPLE_ENV)
    router = build_router(config)

    described = {m.name: m for m in describe_models(router)}
    assert list(described) == [
        "gpt-4o",
        "gpt-4o-mini",
        "claude-sonnet",
        "claude-long",
        "local-llama",
        "embeddings",
        "offline",
    ]
    assert described["gpt-4o"].provider == "openai"
    assert described["claude-sonnet"].provider == "anthropic"
    assert described["local-llama"].provider == "ollama_chat"
    assert described["local-llama"].context_window == 131072
    assert router.fallbacks[0] == {"gpt-4o": ["claude-sonnet", "local-llama"]}
    assert router.context_window_fallbacks == [
        {"gpt-4o": ["claude-long"]},
        {"gpt-4o-mini": ["claude-long"]},
    ]
    assert (router.num_retries, router.allowed_fails, router.cooldown_time) == (2, 3, 30)
    first = config.model_list[0]
    assert first["litellm_params"]["api_key"] == "sk-fake-openai"
    # The proxy's own timeouts never reach LiteLLM (or the provider).
    assert "stream_first_token_timeout" not in first["litellm_params"]
    assert first["model_info"]["stream_first_token_timeout"] == 20


def test_the_providers_example_names_a_missing_key() -> None:
    path = Path(__file__).parents[2] / "llmproxy" / "examples" / "providers.yaml"
    environ = {k: v for k, v in EXAMPLE_ENV.items() if k != "ANTHROPIC_API_KEY"}

    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        load_config(path, environ=environ)


def test_a_negative_stream_timeout_is_refused() -> None:
    doc = document()
    doc["model_list"][0]["litellm_params"]["stream_chunk_timeout"] = -1  # type: ignore[index]

    with pytest.raises(ConfigError, match="stream_chunk_timeout must be a number"):
        parse_config(doc, environ={"MY_KEY": "x"})
