"""Envoy's configuration split for hot reload: a static bootstrap, and the clusters and route
tables of every revision the workers keep, served from watched files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given, settings

from extproc.core.names import RELAY_LISTENER, RUNG_HEADER, rung_cluster
from extproc.policy import KEEP_PREVIOUS, History, Policy
from extproc.xds.bootstrap import (
    EXTPROC_CLUSTER,
    LISTENER_ROUTES,
    RELAY_ROUTES,
    SHIELDED_SUFFIX,
    relay_route_name,
    render,
)
from extproc.xds.resources import CLUSTER_TYPE, ROUTE_TYPE, XdsFiles, render_bootstrap, render_resources
from tests.builders import make_policy, policies, policy_data
from tests.xds.test_bootstrap import SETTINGS, clusters, hcm, walk

FILES = XdsFiles(Path("/run/rw/xds"))


def swapped_rung_one(version: str = "unit-2026.2") -> Policy:
    """The unit policy with ladder main's rung 1 on another provider, and rung 0 given 3 slots."""
    ladders = policy_data()["ladders"]
    ladders["main"][1] = {"provider": "small", "model": "small-model"}
    ladders["main"][0] = {**ladders["main"][0], "attempts": 3}
    return make_policy(version=version, ladders=ladders)


def relay_table(history: History) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = render_resources(history, SETTINGS).routes[RELAY_ROUTES]["virtual_hosts"][0][
        "routes"
    ]
    return routes


def test_the_bootstrap_keeps_only_what_never_changes_and_points_at_the_files() -> None:
    config = render_bootstrap(make_policy(), SETTINGS, FILES)
    assert [c["name"] for c in config["static_resources"]["clusters"]] == [EXTPROC_CLUSTER]
    assert config["dynamic_resources"]["cds_config"] == {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": "/run/rw/xds/cds/clusters.json",
            "watched_directory": {"path": "/run/rw/xds/cds"},
        },
    }
    for listener, table in (("rungway", LISTENER_ROUTES), (RELAY_LISTENER, RELAY_ROUTES)):
        rds = hcm(config, listener)["rds"]
        assert "route_config" not in hcm(config, listener)
        assert rds["route_config_name"] == table
        # One watched directory per file: a rename in a shared one reloads every file in it.
        source = rds["config_source"]["path_config_source"]
        assert source["watched_directory"]["path"] == str(Path(source["path"]).parent)
    watched = [v["path"] for k, v in walk(config) if k == "watched_directory"]
    assert len(watched) == len(set(watched)) == 3
    # The rescue listener routes by header to a provider's cluster: nothing in it follows the policy.
    with_rescue = render_bootstrap(make_policy(), replace(SETTINGS, rescue_socket="/run/rw/rescue.sock"), FILES)
    assert hcm(with_rescue, "rungway_rescue")["route_config"]["name"] == "rescue"


def test_the_bootstrap_does_not_change_with_what_a_reload_may_change() -> None:
    assert render_bootstrap(swapped_rung_one(), SETTINGS, FILES) == render_bootstrap(make_policy(), SETTINGS, FILES)


def test_one_revisions_resources_are_the_full_renders_moved_to_files() -> None:
    policy = make_policy()
    full = render(policy, SETTINGS)
    resources = render_resources(History(policy), SETTINGS)
    assert {c["name"]: c for c in resources.clusters} == {
        name: c for name, c in clusters(full).items() if name != EXTPROC_CLUSTER
    }
    assert resources.routes[LISTENER_ROUTES] == hcm(full)["route_config"]
    assert resources.routes[RELAY_ROUTES] == hcm(full, RELAY_LISTENER)["route_config"]


def test_each_file_is_a_discovery_response_of_its_own_type() -> None:
    files = render_resources(History(make_policy()), SETTINGS).files(FILES)
    assert [(name, str(path)) for name, path, _ in files] == [
        ("clusters", "/run/rw/xds/cds/clusters.json"),
        (LISTENER_ROUTES, f"/run/rw/xds/rds-{LISTENER_ROUTES}/routes.json"),
        (RELAY_ROUTES, f"/run/rw/xds/rds-{RELAY_ROUTES}/routes.json"),
    ]
    types = {name: {r["@type"] for r in content["resources"]} for name, _, content in files}
    assert types == {"clusters": {CLUSTER_TYPE}, LISTENER_ROUTES: {ROUTE_TYPE}, RELAY_ROUTES: {ROUTE_TYPE}}


def test_a_previous_revisions_rungs_keep_their_relay_routes_before_the_catch_all() -> None:
    old, new = make_policy(), swapped_rung_one()
    table = relay_table(History(old).advance(new))
    names = [r["name"] for r in table]
    assert names[0] == "skip" and names[-1] == "unknown_rung"
    for policy in (old, new):
        key = policy.relay_routes[("main", 1)]
        (route,) = [r for r in table if r["name"] == relay_route_name(key)]
        assert route["match"]["headers"] == [{"name": RUNG_HEADER, "string_match": {"exact": key}}]
    by_key = {r["match"]["headers"][0]["string_match"]["exact"]: r for r in table[1:-1]}
    assert by_key[old.relay_routes[("main", 1)]]["route"]["cluster"] == "rw.direct.secondary"
    assert by_key[new.relay_routes[("main", 1)]]["route"]["cluster"] == "rw.direct.small"
    # An unchanged rung is one route for both revisions; rung 0 changed its slots, rung 1 its provider.
    assert old.relay_routes[("main", 2)] == new.relay_routes[("main", 2)]
    extra = {r["name"] for r in table} - {r["name"] for r in relay_table(History(new))}
    assert extra == {relay_route_name(old.relay_routes[("main", i)]) for i in (0, 1)}


def test_where_revisions_share_a_cluster_name_the_current_ones_config_serves() -> None:
    old, new = make_policy(), swapped_rung_one()
    rendered = {c["name"]: c for c in render_resources(History(old).advance(new), SETTINGS).clusters}
    slots = rendered[rung_cluster("main", 0)]["load_assignment"]["endpoints"]
    assert len(slots) == 3  # the new revision's attempts


def test_a_revision_that_left_the_history_leaves_envoy_too() -> None:
    old = make_policy()
    history = History(old)
    for n in range(KEEP_PREVIOUS + 1):
        history = history.advance(swapped_rung_one(f"unit-2027.{n}"))
    assert old not in history.all()
    keys = {r["match"]["headers"][0]["string_match"]["exact"] for r in relay_table(history)[1:-1]}
    assert swapped_rung_one().relay_routes[("main", 1)] in keys
    assert old.relay_routes[("main", 1)] not in keys


@settings(max_examples=20, deadline=None)
@given(policies(max_rungs=3), policies(max_rungs=3))
def test_every_cluster_a_kept_revision_can_route_to_is_served(old: Policy, new: Policy) -> None:
    resources = render_resources(History(old).advance(new), SETTINGS)
    served = {c["name"] for c in resources.clusters}
    assert len(served) == len(resources.clusters)  # no name twice
    for policy in (old, new):
        assert {c["name"] for c in clusters(render(policy, SETTINGS)).values()} - {EXTPROC_CLUSTER} <= served
        assert set(policy.relay_routes.values()) <= {
            r["match"]["headers"][0]["string_match"]["exact"]
            for r in resources.routes[RELAY_ROUTES]["virtual_hosts"][0]["routes"][1:-1]
        }
    referenced = {v for k, v in walk(resources.routes) if k == "cluster"}
    for cluster in resources.clusters:
        if "cluster_type" in cluster:
            referenced |= set(cluster["cluster_type"]["typed_config"]["clusters"])
    assert referenced <= served


def test_a_previous_revisions_shielded_routes_come_before_its_plain_ones() -> None:
    old, new = make_policy(), swapped_rung_one()
    settings = replace(SETTINGS, rescue_socket="/run/rw/rescue.sock", shield_sockets=("/run/rw/w0.shield",))
    table = render_resources(History(old).advance(new), settings).routes[RELAY_ROUTES]["virtual_hosts"][0]["routes"]
    names = [r["name"] for r in table]
    for policy in (old, new):
        for index in range(len(policy.ladders["main"])):
            plain = relay_route_name(policy.relay_routes[("main", index)])
            assert names.index(plain + SHIELDED_SUFFIX) < names.index(plain)
    assert names[-1] == "unknown_rung"
