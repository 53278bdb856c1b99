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
    assert {"postgres", "auth", "llmproxy", "runtime", "gateway"} <= set(services)
    ours = {name: service for name, service in services.items() if "build" in service}
    assert set(ours) == {"auth", "llmproxy", "runtime", "gateway"}
    for name, service in ours.items():
        for variable in service.get("environment", {}):
            assert variable in read, f"{name} sets {variable}, which nothing reads"
        command = " ".join(service["command"])
        used = set(re.findall(r"codelab-[a-z-]+", command))
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
    example = example_variables()
    for variable in re.findall(r"\$\{([A-Z_]+)", (ROOT / "compose.yaml").read_text()):
        assert variable in example, f"compose.yaml uses {variable}, missing from .env.example"
