"""The subset of Kustomize that deploy/kubernetes uses, to render it in tests.

No kustomize binary installs from the registries this project uses, so the
tests render the base and overlays with this and validate the result against
the Kubernetes schemas (``kubernetes-validate``). Supported: ``resources``
(files and directories), ``labels`` (added to every object's metadata),
``images`` (``newName``/``newTag``), ``replicas`` and ``patches`` made of JSON
6902 ``add``/``replace``/``remove`` operations with a ``kind``/``name``
target. Anything else in a kustomization raises :class:`Unsupported`, so
the manifests never use what the tests would silently skip.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
"""The kinds Kustomize's ``replicas`` sets ``spec.replicas`` of."""
KNOWN = {"apiVersion", "kind", "resources", "labels", "images", "replicas", "patches"}


class Unsupported(Exception):
    """A kustomization uses a feature this renderer does not implement."""


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` would print (for this subset)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)}")
    objects: list[Object] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects = copy.deepcopy(objects)
    for entry in kustomization.get("labels", []):
        if set(entry) - {"pairs"}:
            raise Unsupported(f"labels options {sorted(set(entry) - {'pairs'})}")
        for item in objects:
            item.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for item in objects:
            for container in containers(item):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{image.get('newTag', _tag or 'latest')}"
    for replica in kustomization.get("replicas", []):
        targets = [
            i for i in objects if i["kind"] in SCALABLE and i["metadata"]["name"] == replica["name"]
        ]
        if not targets:
            raise Unsupported(f"replicas of unknown {replica['name']}")
        for item in targets:
            item["spec"]["replicas"] = replica["count"]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        targets = [
            i
            for i in objects
            if i["kind"] == target["kind"] and i["metadata"]["name"] == target["name"]
        ]
        if not targets:
            raise Unsupported(f"patch of unknown {target}")
        for item in targets:
            for operation in yaml.safe_load(patch["patch"]):
                apply(item, operation)
    return objects


def containers(item: Object) -> list[Object]:
    """Every container and init container of a workload."""
    spec = item.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def apply(document: Object, operation: Object) -> None:
    """One JSON 6902 operation (add, replace, remove) on ``document``, in place."""
    op = operation["op"]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"patch op {op}")
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        else:
            del node[index]
        return
    if op == "replace" and last not in node:
        raise KeyError(f"replace of missing {operation['path']}")
    if op == "remove":
        del node[last]
    else:
        node[last] = operation["value"]
