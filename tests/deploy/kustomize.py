"""Render a kustomization the way `kubectl apply -k` would, for the few fields this repo's
deploy/ uses (resources, namespace, images, RFC 6902 patches). Any other field is refused, so
the render can never silently differ from kustomize's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
# Kinds that live outside a namespace (none in deploy/ today; listed so a namespace is not set on them).
_CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})


class KustomizeError(Exception):
    pass


def build(directory: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - _FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not implement: {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    for patch in spec.get("patches", []):
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise KustomizeError(f"patch target {target} matches no resource")
        operations = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        docs = [operations.apply(d) if d in hits else d for d in docs]
    for image in spec.get("images", []):
        if not any(_set_image(d, image) for d in docs):
            raise KustomizeError(f"image {image['name']} is used by no container")
    if "namespace" in spec:
        for d in docs:
            if d["kind"] not in _CLUSTER_SCOPED:
                d["metadata"]["namespace"] = spec["namespace"]
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _set_image(doc: dict[str, Any], image: dict[str, str]) -> bool:
    spec = pod_spec(doc)
    changed = False
    for container in containers(spec) if spec else []:
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
            changed = True
    return changed
