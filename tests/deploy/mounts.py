"""A container's ConfigMap and Secret mounts laid out under a test directory, so its real command
line runs on this machine with every absolute path moved under that directory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Relocated:
    root: Path

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def args(self, argv: Iterable[str]) -> list[str]:
        return [str(self.path(a)) if a.startswith("/") else a for a in argv]


def lay_out_mounts(docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], root: Path) -> Relocated:
    """Write every ConfigMap and Secret item `container` mounts at its mount path under `root`;
    the absolute paths the files name (a policy's key files) are moved there too."""
    moved = Relocated(root)
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "secret" in volume:
            source = _named(docs, "Secret", volume["secret"]["secretName"]).get("stringData", {})
        elif "configMap" in volume:
            source = _named(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        else:
            moved.path(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
            continue
        for key, text in source.items():
            target = moved.path(f"{mount['mountPath']}/{key}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_moved_paths(text, moved))
    return moved


def _moved_paths(text: str, moved: Relocated) -> str:
    for prefix in ("/etc/rungway/", "/var/run/rungway/"):
        text = text.replace(prefix, f"{moved.path(prefix)}/")
    return text


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found
