"""compose.yaml, .env.example, the Dockerfile and the code agree.

No Docker engine runs here, so these files cannot be started; what can be
checked is that they are valid and name only variables and entry points that
exist, and that .env.example lists every variable the services read.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = {
    "gateway": "GATEWAY",
    "runtime": "AGENT_RUNTIME",
    "llmproxy": "LLM_PROXY",
    "auth": "AUTH_SERVICE",
}
READ = re.compile(r"env\.(?:str|int|float|bool|list|required|raw)\(\s*\"([A-Z_]+)\"")


def variables_read_by_code() -> set[str]:
    names = set()
    for package, prefix in PREFIXES.items():
        for source in (ROOT / package).rglob("*.py"):
            names |= {f"{prefix}__{name}" for name in READ.findall(source.read_text())}
    return names


def example_variables() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def test_env_example_lists_exactly_what_the_services_read() -> None:
    read = variables_read_by_code()
    documented = {name for name in example_variables() if "__" in name}
    assert read, "the scan found the services' variables"
    assert sorted(read - documented) == [], "read by code but missing from .env.example"
    assert sorted(documented - read) == [], "in .env.example but read by nothing"


def test_compose_sets_only_real_variables_and_runs_real_entry_points() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    read = variables_read_by_code()
    services = compose["services"]
    assert {"frontdoor", "postgres", "auth", "llmproxy", "runtime", "gateway"} <= set(services)
    ours = {name: service for name, service in services.items() if "build" in service}
    assert set(ours) == {"auth", "llmproxy", "runtime", "gateway"}
    for name, service in ours.items():
        for variable in service.get("environment", {}):
            assert variable in read, f"{name} sets {variable}, which nothing reads"
        command = " ".join(service["command"])
        # Console scripts in command position (not arguments like a client id).
        used = set(re.findall(r"(?:^|&&|;|exec)\s*(codelab-[a-z-]+)", command))
        assert used, f"{name} runs one of the console scripts"
        assert used <= scripts, f"{name} runs {used - scripts}"


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for pattern in packages:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in dockerfile


def test_compose_services_are_health_checked_and_wait_for_healthy_dependencies() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "auth", "llmproxy", "runtime", "gateway"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert services["ollama"]["profiles"] == ["ollama"], "Ollama only on request"
    for replicated in ("gateway", "runtime", "llmproxy"):
        assert services[replicated]["deploy"]["replicas"] >= 2, f"{replicated} is replicated"
    runtime_address = services["gateway"]["environment"]["GATEWAY__RUNTIME_ADDRESS"]
    assert runtime_address.startswith("dns:///"), "the gateway balances over every runtime"
    llmproxy_address = services["runtime"]["environment"]["AGENT_RUNTIME__LLM_PROXY_ADDRESS"]
    assert llmproxy_address.startswith("dns:///"), "the runtime balances over every llmproxy"
    example = example_variables()
    for variable in re.findall(r"\$\{([A-Z_]+)", (ROOT / "compose.yaml").read_text()):
        assert variable in example, f"compose.yaml uses {variable}, missing from .env.example"


SECTIONS = {
    "GATEWAY": "gateway",
    "AGENT_RUNTIME": "runtime",
    "LLM_PROXY": "llmproxy",
    "AUTH_SERVICE": "auth",
}


def configuration_reference() -> str:
    """docs/CONFIGURATION.md, built from .env.example's variables and comments."""
    rows: dict[str, list[str]] = {section: [] for section in SECTIONS}
    other: list[str] = []
    comment: list[str] = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# ---") or not line.strip():
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
            continue
        name, _, default = line.partition("=")
        meaning = " ".join(comment) or "—"
        row = (
            f"| `{name}` | `{default}` | {meaning} |" if default else f"| `{name}` | | {meaning} |"
        )
        prefix = name.split("__", 1)[0]
        rows.get(prefix, other).append(row)
        comment = []
    header = "| variable | default | meaning |\n|---|---|---|\n"
    parts = [
        "# Configuration reference\n",
        "Every variable the services read, with its default and meaning. Generated from",
        "`.env.example` by `scripts/gen-config-docs`; `tests/test_deployment_files.py`",
        "fails when the two disagree, and when `.env.example` misses a variable the",
        "code reads. `${CODELAB_INTERNAL_API_KEY}` stands for the one shared secret.\n",
    ]
    for prefix, service in SECTIONS.items():
        parts.append(f"## {service} (`{prefix}__*`)\n\n" + header + "\n".join(rows[prefix]) + "\n")
    parts.append("## Shared\n\n" + header + "\n".join(other) + "\n")
    return "\n".join(parts)


def test_every_variable_is_explained() -> None:
    assert "| — |" not in configuration_reference(), "a variable in .env.example has no comment"


def test_the_configuration_reference_is_generated_from_env_example() -> None:
    assert (ROOT / "docs" / "CONFIGURATION.md").read_text() == configuration_reference(), (
        "run scripts/gen-config-docs"
    )


def test_the_front_door_is_the_only_published_entrance() -> None:
    """compose publishes the front door; auth and the gateway only behind it,
    with the Caddyfile the front door is given and scripts/up runs."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published - {"ollama"} == {"frontdoor"}, "(Ollama, on request, is a local model)"
    front = services["frontdoor"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in front["volumes"]
    assert front["depends_on"] == {
        "auth": {"condition": "service_healthy"},
        "gateway": {"condition": "service_healthy"},
    }
    assert "add-client codelab-flutter-app --public --exist-ok" in " ".join(
        services["auth"]["command"]
    ), "the CodeLab IDE's client is registered out of the box"
