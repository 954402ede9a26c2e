"""The EnvoyFilter for a mesh is `render`'s listeners and clusters, added to the selected proxies."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.xds.bootstrap import EnvoySettings, render
from extproc.xds.istio import envoy_filter
from tests.builders import make_policy

SETTINGS = EnvoySettings(
    listen_port=10000,
    admin_port=9902,
    extproc_sockets=("/var/run/rungway/worker-0.sock",),
    channel_token="t" * 32,
    rescue_socket="/tmp/rungway/rescue.sock",
)


def test_it_adds_every_cluster_then_every_listener_but_the_rescue_one_to_the_selected_proxies():
    bootstrap = render(make_policy(), SETTINGS)
    spec = envoy_filter(bootstrap, name="rungway", selector={"app": "bot"})["spec"]
    assert spec["workloadSelector"] == {"labels": {"app": "bot"}}
    kinds = [p["applyTo"] for p in spec["configPatches"]]
    assert kinds == sorted(kinds)  # CLUSTER patches before LISTENER patches
    values: dict[str, list[dict[str, Any]]] = {"CLUSTER": [], "LISTENER": []}
    for p in spec["configPatches"]:
        assert p["match"] == {"context": "SIDECAR_OUTBOUND"} and p["patch"]["operation"] == "ADD"
        values[p["applyTo"]].append(p["patch"]["value"])
    static = bootstrap["static_resources"]
    assert values["CLUSTER"] == static["clusters"]
    # A mesh worker has no supervisor to call the rescue listener: it is not added.
    assert values["LISTENER"] == [lst for lst in static["listeners"] if lst["name"] != "rungway_rescue"]
    assert len(values["LISTENER"]) == len(static["listeners"]) - 1


def test_it_never_patches_every_proxy():
    with pytest.raises(ValueError, match="workload selector"):
        envoy_filter(render(make_policy(), SETTINGS), name="rungway", selector={})


def test_it_refuses_a_configuration_render_did_not_make():
    with pytest.raises(ValueError, match="rungway_relay"):
        envoy_filter({"static_resources": {"listeners": [], "clusters": []}}, name="rungway", selector={"a": "b"})
