"""deploy/kubernetes: valid objects, wired to the services' real ports, probes and variables.

Rendered with :mod:`tests.kustomize` (the Kustomize subset the manifests
use) and validated offline against the Kubernetes API schemas with
``kubernetes-validate`` (strict: unknown fields fail).
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from gateway.server import _HEALTH_PATHS, _READY_PATHS
from tests.kustomize import Unsupported, apply, containers, render
from tests.test_deployment_files import variables_read_by_code

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
OVERLAYS = sorted(path for path in (DEPLOY / "overlays").iterdir() if path.is_dir())
SERVICES = ("auth", "llmproxy", "runtime", "gateway")
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest release still widely run that has every field we use, and the newest."""

Object = dict[str, Any]


def by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


@pytest.mark.parametrize("directory", [BASE, *OVERLAYS], ids=lambda path: path.name)
def test_every_object_is_valid_kubernetes(directory: Path) -> None:
    objects = render(directory)
    assert objects
    for version in KUBERNETES_VERSIONS:
        for item in objects:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{item['kind']}/{item['metadata']['name']}"
                pytest.fail(f"{directory.name}: {name} (Kubernetes {version}): {exc.message}")


def test_the_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(by_kind(render(BASE), "Deployment")["codelab-gateway"])
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpget"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpget"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_service_is_probed_disruption_budgeted_and_autoscaled() -> None:
    objects = render(BASE)
    deployments = by_kind(objects, "Deployment")
    budgets = by_kind(objects, "PodDisruptionBudget")
    scalers = by_kind(objects, "HorizontalPodAutoscaler")
    services = by_kind(objects, "Service")
    for service in SERVICES:
        name = f"codelab-{service}"
        deployment = deployments[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container[kind]
            if "httpGet" in probe:
                path = probe["httpGet"]["path"]
                if service == "gateway":
                    expected = _READY_PATHS if kind == "readinessProbe" else _HEALTH_PATHS
                    assert path in expected, f"{name} {kind} {path}"
                else:
                    assert path == "/health", f"{name} {kind} {path}"
                assert probe["httpGet"]["port"] in ports
            elif "grpc" in probe:
                assert probe["grpc"]["port"] in ports.values(), f"{name} {kind}"
            else:
                assert probe["tcpSocket"]["port"] in ports, f"{name} {kind}"
        if service in ("runtime", "llmproxy"):
            # gRPC health follows their dependencies: readiness asks it.
            assert "grpc" in container["readinessProbe"]
        assert container["resources"]["requests"]["cpu"], "the HPA needs a CPU request"
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budgets[name]["spec"]["minAvailable"] >= 1
        target = scalers[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert scalers[name]["spec"]["minReplicas"] >= 2
        assert services[name]["spec"]["selector"].items() <= labels.items()
        for port in services[name]["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{name} Service port {port['targetPort']}"


def test_manifests_set_only_real_variables_and_run_entry_points() -> None:
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    read = variables_read_by_code() | {"POD_IP", "POD_NAME"}
    for item in by_kind(render(BASE), "Deployment").values():
        for container in containers(item):
            for variable in container.get("env", []):
                assert variable["name"] in read, f"{container['name']} sets {variable['name']}"
            command = " ".join(container["command"])
            used = set(re.findall(r"(?:^|&&|;|exec)\s*(codelab-[a-z-]+)", command))
            assert used, f"{container['name']} runs one of the console scripts"
            assert used <= scripts, f"{container['name']} runs {used - scripts}"


def env_of(container: Object) -> dict[str, Object]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def test_postgres_is_external_and_secrets_come_from_a_secret() -> None:
    objects = render(BASE)
    assert not by_kind(objects, "StatefulSet"), "no database in the manifests"
    assert not by_kind(objects, "Secret"), "the Secret is the operator's, not in the repository"
    for item in by_kind(objects, "Deployment").values():
        for container in containers(item):
            for name, variable in env_of(container).items():
                if name.endswith(("DATABASE_URL", "API_KEY")):
                    reference = variable["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == "codelab-secrets", name


def test_runtime_pods_advertise_their_own_address_in_leases() -> None:
    runtime = by_kind(render(BASE), "Deployment")["codelab-runtime"]
    env = env_of(runtime["spec"]["template"]["spec"]["containers"][0])
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["AGENT_RUNTIME__ADVERTISE_ADDRESS"]["value"] == "$(POD_IP):50051"
    assert env["AGENT_RUNTIME__REPLICA_ID"]["value"] == "$(POD_NAME)"
    gateway = by_kind(render(BASE), "Deployment")["codelab-gateway"]
    address = env_of(gateway["spec"]["template"]["spec"]["containers"][0])
    assert address["GATEWAY__RUNTIME_ADDRESS"]["value"] == "dns:///codelab-runtime:50051"
    assert by_kind(render(BASE), "Service")["codelab-runtime"]["spec"]["clusterIP"] == "None"


def caddy_paths(matcher: str) -> set[str]:
    """The paths of a named matcher of the Caddyfile, without their ``/*``."""
    for line in (ROOT / "Caddyfile").read_text().splitlines():
        words = line.split()
        if words[:2] == [f"@{matcher}", "path"]:
            return {word.removesuffix("/*") for word in words[2:]}
    raise AssertionError(f"no @{matcher} in the Caddyfile")


def test_the_ingress_routes_what_the_caddyfile_routes() -> None:
    ingress = by_kind(render(BASE), "Ingress")["codelab"]
    routes: dict[str, tuple[str, str]] = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            service = path["backend"]["service"]
            routes[path["path"]] = (service["name"], service["port"]["name"])
    for path in caddy_paths("auth"):
        assert routes[path] == ("codelab-auth", "http"), path
    for path in caddy_paths("rest"):
        assert routes[path] == ("codelab-gateway", "rest"), path
    for path in caddy_paths("gateway"):
        assert routes[path] == ("codelab-gateway", "ws"), path
    assert set(routes) == caddy_paths("auth") | caddy_paths("rest") | caddy_paths("gateway")


def test_the_production_overlay_sets_image_host_and_one_issuer() -> None:
    objects = render(DEPLOY / "overlays" / "production")
    images = {c["image"] for item in objects for c in containers(item)}
    assert len(images) == 1
    assert not images.pop().startswith("codelab-ai-service:"), "the registry's image"
    ingress = by_kind(objects, "Ingress")["codelab"]
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    issuer = by_kind(objects, "ConfigMap")["codelab-config"]["data"]["issuer"]
    assert issuer == f"https://{ingress['spec']['rules'][0]['host']}"
    parts = {item["metadata"]["labels"]["app.kubernetes.io/part-of"] for item in objects}
    assert parts == {"codelab"}


def test_the_renderer_applies_json_patches_and_refuses_what_it_does_not_know(
    tmp_path: Path,
) -> None:
    document: Object = {"spec": {"rules": [{"http": {}}], "name": "a"}}
    apply(document, {"op": "add", "path": "/spec/rules/0/host", "value": "h"})
    apply(document, {"op": "add", "path": "/spec/rules/-", "value": {"x": 1}})
    apply(document, {"op": "replace", "path": "/spec/name", "value": "b"})
    apply(document, {"op": "remove", "path": "/spec/rules/1"})
    assert document == {"spec": {"rules": [{"http": {}, "host": "h"}], "name": "b"}}
    with pytest.raises(KeyError, match="missing"):
        apply(document, {"op": "replace", "path": "/spec/absent", "value": 1})
    with pytest.raises(Unsupported, match="move"):
        apply(document, {"op": "move", "from": "/spec/name", "path": "/spec/other"})
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(Unsupported, match="namePrefix"):
        render(tmp_path)
