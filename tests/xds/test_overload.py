"""Envoy's overload manager as rendered: the heap and connection monitors, the actions on heap
pressure, and (on the real binary) that they load and fire."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import httpx2 as httpx

from extproc.runtime.supervisor import envoy_binary, free_port
from extproc.xds.bootstrap import EnvoySettings, render
from tests.builders import make_policy

SETTINGS = EnvoySettings(listen_port=10000, admin_port=9902, extproc_sockets=("/run/w0.sock",), channel_token="t" * 32)


def test_heap_pressure_shrinks_the_heap_then_drops_keepalive_then_stops_accepting_requests() -> None:
    manager = render(make_policy(), SETTINGS)["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in manager["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 1024**3
    assert (
        monitors["envoy.resource_monitors.global_downstream_max_connections"]["max_active_downstream_connections"]
        == 50_000
    )
    actions = {
        a["name"].removeprefix("envoy.overload_actions."): (t["name"], t["threshold"]["value"])
        for a in manager["actions"]
        for t in a["triggers"]
    }
    heap = "envoy.resource_monitors.fixed_heap"
    assert actions == {
        "shrink_heap": (heap, 0.90),
        "disable_http_keepalive": (heap, 0.95),
        "stop_accepting_requests": (heap, 0.98),
    }


def test_envoy_over_its_heap_limit_answers_503_in_the_clients_dialect(tmp_path: Path) -> None:
    # A heap limit Envoy is over from the start: the actions must load on Envoy 1.40 and fire.
    admin, listen = free_port(), free_port()
    settings = EnvoySettings(
        listen_port=listen,
        admin_port=admin,
        extproc_sockets=(str(tmp_path / "nobody.sock"),),
        channel_token="t" * 32,
        max_heap_bytes=1024 * 1024,
        access_log_path="/dev/null",
    )
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(render(make_policy(), settings)))
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--log-level", "error", "--disable-hot-restart"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stats = ""
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=5) as client:
            while "stop_accepting_requests.active: 1" not in stats and time.monotonic() < deadline:
                time.sleep(0.1)
                with contextlib.suppress(httpx.HTTPError):
                    stats = client.get(f"http://127.0.0.1:{admin}/stats?filter=overload_actions").text
            assert "stop_accepting_requests.active: 1" in stats, stats
            assert "shrink_heap.active: 1" in stats
            response = client.post(
                f"http://127.0.0.1:{listen}/v1/messages", json={"model": "claude-sonnet"}, headers={"x-api-key": "k"}
            )
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded_error"  # Anthropic's, by the local-reply mapper
