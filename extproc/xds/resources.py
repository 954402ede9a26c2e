"""Envoy's configuration split for hot reload: a bootstrap that never changes while `rungway up`
runs (listeners, the ext_proc cluster, admin), and the resources a policy reload changes
(clusters over CDS, both listeners' routes over RDS), served from watched files.

Envoy's file-based xDS (path_config_source + watched_directory; one directory per resource, a
file replaced by rename) was chosen over an ADS gRPC server: the lab measured both at about a
millisecond to take effect, and files need no server, no protobuf stubs newer than xds-protos,
and leave what Envoy serves readable on disk (docs/ARCHITECTURE.md, "Hot reload").

The resources are those of every revision the workers keep (policy.History): a request decided
under a previous revision keeps its clusters and its rungs' relay routes (keyed by the rung's
content, Policy.relay_routes) until that revision leaves the history. Names that both revisions
use take the current revision's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..policy import History, Policy
from .bootstrap import EXTPROC_CLUSTER, LISTENER_ROUTES, RELAY_ROUTES, EnvoySettings, render

_ANY = "type.googleapis.com/"
CLUSTER_TYPE = _ANY + "envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = _ANY + "envoy.config.route.v3.RouteConfiguration"


@dataclass(frozen=True)
class XdsFiles:
    """Where each resource's file lives: one watched directory per file (a rename in a shared
    directory makes Envoy reload every file in it)."""

    root: Path

    @property
    def clusters(self) -> Path:
        return self.root / "cds" / "clusters.json"

    def routes(self, name: str) -> Path:
        return self.root / f"rds-{name}" / "routes.json"

    def all(self) -> tuple[Path, ...]:
        return (self.clusters, self.routes(LISTENER_ROUTES), self.routes(RELAY_ROUTES))


def _source(path: Path) -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
    }


def render_bootstrap(policy: Policy, settings: EnvoySettings, files: XdsFiles) -> dict[str, Any]:
    """The static bootstrap: `render`'s, with every cluster but the sidecar's and the two route
    tables that follow the policy moved to the files."""
    config = render(policy, settings)
    static = config["static_resources"]
    static["clusters"] = [c for c in static["clusters"] if c["name"] == EXTPROC_CLUSTER]
    for listener in static["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        name = hcm.get("route_config", {}).get("name")
        if name in (LISTENER_ROUTES, RELAY_ROUTES):
            del hcm["route_config"]
            hcm["rds"] = {"route_config_name": name, "config_source": _source(files.routes(name))}
    config["dynamic_resources"] = {"cds_config": _source(files.clusters)}
    return config


@dataclass(frozen=True)
class Resources:
    clusters: list[dict[str, Any]]
    routes: dict[str, dict[str, Any]]  # route table name -> RouteConfiguration

    def files(self, files: XdsFiles) -> list[tuple[str, Path, dict[str, Any]]]:
        """Each resource's name, file and content: what a management server would send, but
        for the version_info the writer adds."""
        out = [("clusters", files.clusters, _response(CLUSTER_TYPE, self.clusters))]
        for name, table in self.routes.items():
            out.append((name, files.routes(name), _response(ROUTE_TYPE, [table])))
        return out


def _response(type_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resources": [{"@type": type_url, **r} for r in resources]}


def render_resources(
    history: History, settings: EnvoySettings, render_one: Callable[[Policy, EnvoySettings], dict[str, Any]] = render
) -> Resources:
    """Each file's resources for a history: the clusters and relay routes of every revision it
    keeps (the current one's config where names meet), the listener's routes of the current."""
    clusters: dict[str, dict[str, Any]] = {}
    rung_routes: dict[str, dict[str, Any]] = {}
    tables: dict[str, dict[str, Any]] = {}
    for policy in history.all():  # current first: its config wins where names meet
        config = render_one(policy, settings)
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] != EXTPROC_CLUSTER:
                clusters.setdefault(cluster["name"], cluster)
        for listener in config["static_resources"]["listeners"]:
            table = listener["filter_chains"][0]["filters"][0]["typed_config"].get("route_config", {})
            if table.get("name") in (LISTENER_ROUTES, RELAY_ROUTES):
                tables.setdefault(table["name"], table)
            if table.get("name") == RELAY_ROUTES:
                for route in table["virtual_hosts"][0]["routes"]:
                    rung_routes.setdefault(route["name"], route)
    relay = tables[RELAY_ROUTES]
    (host,) = relay["virtual_hosts"]
    current = host["routes"]
    # The current table's order (skip first, the catch-all last), older revisions' rungs before
    # the catch-all.
    older = [r for name, r in rung_routes.items() if name not in {c["name"] for c in current}]
    relay = {**relay, "virtual_hosts": [{**host, "routes": [*current[:-1], *older, current[-1]]}]}
    return Resources(list(clusters.values()), {LISTENER_ROUTES: tables[LISTENER_ROUTES], RELAY_ROUTES: relay})
