"""envoy_config.render: the Envoy bootstrap as a pure rendering of the policy."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.names import (
    CHANNEL_TOKEN_KEY,
    CLUSTER_HEADER,
    FILTER_ROLE_KEY,
    INVALID,
    META_DECISION,
    META_REQUEST,
    META_TRIP,
    MISSING,
    RELAY_FLAGS_HEADER,
    RELAY_LISTENER,
    RETRY_HEADER,
    RUNG_HEADER,
    SHIELD_CLUSTER,
    SHIELD_HEADER,
    SKIP_HEADER,
    SKIP_STATUS,
    SKIPPED_HEADER,
    cluster_name,
    direct_cluster,
    rung_cluster,
)
from extproc.policy import Policy
from extproc.routing.ladder import Route, choose, orderings
from extproc.runtime.supervisor import envoy_binary
from extproc.xds.bootstrap import (
    EXTPROC_BUFFER_LIMIT,
    PROVIDER_PACE_KIBPS,
    SHIELDED_SUFFIX,
    EnvoySettings,
    relay_route_name,
    render,
)
from tests.builders import make_policy, policies, policy_data, request_features
from tests.tlsca import make_test_ca

TOKEN = "channel-token-0123456789abcdef"
SETTINGS = EnvoySettings(
    listen_port=10000, admin_port=10001, extproc_sockets=("/run/rw/w0.sock", "/run/rw/w1.sock"), channel_token=TOKEN
)


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def listener(config: dict[str, Any], name: str = "rungway") -> dict[str, Any]:
    found: list[dict[str, Any]] = [x for x in config["static_resources"]["listeners"] if x["name"] == name]
    (one,) = found
    return one


def hcm(config: dict[str, Any], name: str = "rungway") -> dict[str, Any]:
    typed: dict[str, Any] = listener(config, name)["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def relay_routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (vhost,) = hcm(config, RELAY_LISTENER)["route_config"]["virtual_hosts"]
    return {r["name"]: r for r in vhost["routes"]}


def routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (vhost,) = hcm(config)["route_config"]["virtual_hosts"]
    return {r["name"]: r for r in vhost["routes"]}


def http_filters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f["typed_config"] for f in hcm(config)["http_filters"]}


def upstream_filters(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    filters: list[dict[str, Any]] = options["http_filters"]
    return filters


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def envoy_path(route: dict[str, Any], path: str) -> str | None:
    """The upstream path Envoy sends for `path` on this route (None: the route does not match).

    prefix_rewrite swaps the matched prefix (or path) for its value; regex_rewrite substitutes
    over the path with RE2 `\\1` group references."""
    match = route["match"]
    if "path" in match:
        if path != match["path"]:
            return None
        matched = match["path"]
    else:
        if not path.startswith(match["prefix"]):
            return None
        matched = match["prefix"]
    action = route["route"]
    if "prefix_rewrite" in action:
        return str(action["prefix_rewrite"]) + path[len(matched) :]
    if "regex_rewrite" in action:
        rewrite = action["regex_rewrite"]
        substitution = re.sub(r"\\(\d)", r"\\g<\1>", rewrite["substitution"])
        return re.sub(rewrite["pattern"]["regex"], substitution, path)
    return path


# ---- clusters -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_every_cluster_a_choice_can_name_is_rendered(data: st.DataObject) -> None:
    policy: Policy = data.draw(policies(max_rungs=4))
    rendered = clusters(render(policy, SETTINGS))
    for ladder, order in orderings(policy):
        for stream in (False, True):
            assert cluster_name(ladder, order, stream) in rendered
    for _ in range(5):
        result = choose(policy, data.draw(request_features(policy)))
        if isinstance(result, Route):
            assert result.cluster in rendered
            aggregate = rendered[result.cluster]["cluster_type"]["typed_config"]["clusters"]
            assert aggregate == [rung_cluster(result.ladder, i) for i in result.rungs]


@settings(max_examples=20, deadline=None)
@given(policies(max_rungs=3))
def test_every_cluster_a_config_refers_to_exists(policy: Policy) -> None:
    config = render(policy, SETTINGS)
    names = set(clusters(config))
    every_route = [*routes(config).values(), *relay_routes(config).values()]
    referenced = {r["route"]["cluster"] for r in every_route if "cluster" in r.get("route", {})}
    for cluster in config["static_resources"]["clusters"]:
        if "cluster_type" in cluster:
            referenced |= set(cluster["cluster_type"]["typed_config"]["clusters"])
    referenced |= {value["cluster_name"] for key, value in walk(config) if key == "envoy_grpc"}
    assert referenced <= names
    assert len(names) == len(config["static_resources"]["clusters"])  # no duplicates


def test_rung_cluster_has_one_priority_per_attempt_slot_with_endpoint_metadata() -> None:
    rung = clusters(render(make_policy(), SETTINGS))[rung_cluster("retry_same", 0)]
    priorities = rung["load_assignment"]["endpoints"]
    assert [p["priority"] for p in priorities] == [0, 1]
    for slot, priority in enumerate(priorities):
        (endpoint,) = priority["lb_endpoints"]
        assert endpoint["metadata"] == {
            "filter_metadata": {META_DECISION: {"ladder": "retry_same", "rung": 0, "slot": slot}}
        }
        # Every try reaches its provider through the relay listener (per-rung budget, skips).
        assert endpoint["endpoint"]["address"] == {"envoy_internal_address": {"server_listener_name": RELAY_LISTENER}}


def test_the_relay_gives_each_rung_its_own_budget_and_provider_and_skips_at_once() -> None:
    relay = relay_routes(render(make_policy(), SETTINGS))
    skip = relay["skip"]
    assert skip["match"]["headers"] == [{"name": SKIP_HEADER, "present_match": True}]
    assert skip["direct_response"]["status"] == SKIP_STATUS == 421
    assert skip["response_headers_to_add"] == [
        {"header": {"key": SKIPPED_HEADER, "value": "1"}},
        {"header": {"key": RETRY_HEADER, "value": "1"}},
    ]
    key = make_policy().relay_routes[("main", 0)]
    assert key.startswith("main/0~")  # the rung's content hash: a changed rung is another route
    primary = relay[relay_route_name(key)]
    assert primary["match"]["headers"] == [{"name": RUNG_HEADER, "string_match": {"exact": key}}]
    assert primary["route"]["cluster"] == direct_cluster("primary")
    assert primary["route"]["retry_policy"] == {"num_retries": 0, "per_try_timeout": "2.000s"}  # rung main/0 timeout_s
    assert (
        relay[relay_route_name(make_policy().relay_routes[("main", 1)])]["route"]["retry_policy"]["per_try_timeout"]
        == "30.000s"
    )
    assert primary["request_headers_to_remove"] == [RUNG_HEADER, SKIP_HEADER, SHIELD_HEADER]
    assert next(iter(relay)) == "skip" and list(relay)[-1] == "unknown_rung"
    # Without a shield (no rescue listener, or standalone renders) no try can ask for one.
    assert not any(name.endswith(SHIELDED_SUFFIX) for name in relay)
    assert SHIELD_CLUSTER not in clusters(render(make_policy(), SETTINGS))


SHIELDED = dataclasses.replace(
    SETTINGS, rescue_socket="/run/rw/rescue.sock", shield_sockets=("/run/rw/w0.shield", "/run/rw/w1.shield")
)


def test_a_try_that_asks_for_the_shield_reaches_its_provider_through_it() -> None:
    policy = make_policy()
    config = render(policy, SHIELDED)
    relay = relay_routes(config)
    names = list(relay)
    for (ladder, index), key in policy.relay_routes.items():
        plain, shielded = relay[relay_route_name(key)], relay[relay_route_name(key) + SHIELDED_SUFFIX]
        # First match wins: the shielded route must come before the rung's own.
        assert names.index(relay_route_name(key) + SHIELDED_SUFFIX) == names.index(relay_route_name(key)) - 1
        assert shielded["match"]["headers"] == [
            {"name": RUNG_HEADER, "string_match": {"exact": key}},
            {"name": SHIELD_HEADER, "present_match": True},
        ]
        assert shielded["route"]["cluster"] == SHIELD_CLUSTER
        assert shielded["route"]["retry_policy"] == plain["route"]["retry_policy"]  # the rung's own budget
        provider = policy.ladders[ladder][index].provider
        assert shielded["request_headers_to_add"] == [
            {
                "header": {"key": CLUSTER_HEADER, "value": direct_cluster(provider)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        assert SHIELD_HEADER in shielded["request_headers_to_remove"]
        # The rescue listener's flags (passed on by the shield) win over the relay's "-".
        assert shielded["response_headers_to_add"][0]["append_action"] == "ADD_IF_ABSENT"
    shield = clusters(config)[SHIELD_CLUSTER]
    endpoints = shield["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["pipe"]["path"] for e in endpoints] == list(SHIELDED.shield_sockets)
    rescue = hcm(config, "rungway_rescue")
    assert rescue["delayed_close_timeout"] == "0s"  # a provider's reset reaches the shield at once
    (route,) = rescue["route_config"]["virtual_hosts"][0]["routes"]
    assert route["response_headers_to_add"][0]["header"] == {"key": RELAY_FLAGS_HEADER, "value": "%RESPONSE_FLAGS%"}


def test_single_attempt_rung_has_a_single_priority() -> None:
    ladders = policy_data()["ladders"]
    ladders["main"][2]["attempts"] = 1
    rung = clusters(render(make_policy(ladders=ladders), SETTINGS))[rung_cluster("main", 2)]
    (priority,) = rung["load_assignment"]["endpoints"]
    assert priority["lb_endpoints"][0]["metadata"]["filter_metadata"][META_DECISION] == {
        "ladder": "main",
        "rung": 2,
        "slot": 0,
    }


def test_direct_clusters_carry_no_rung_metadata_and_no_ejection() -> None:
    direct = clusters(render(make_policy(), SETTINGS))[direct_cluster("primary")]
    (priority,) = direct["load_assignment"]["endpoints"]
    assert "metadata" not in priority["lb_endpoints"][0]
    assert "outlier_detection" not in direct


def test_https_provider_gets_tls_with_sni_and_san_check() -> None:
    rendered = clusters(render(make_policy(), SETTINGS))
    tls = rendered[direct_cluster("secondary")]["transport_socket"]
    assert tls["name"] == "envoy.transport_sockets.tls"
    context = tls["typed_config"]
    assert context["sni"] == "api.secondary.test"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.secondary.test"}}
    ]
    assert rendered[direct_cluster("secondary")]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"
    ] == {"socket_address": {"address": "api.secondary.test", "port_value": 443}}
    assert "transport_socket" not in rendered[direct_cluster("primary")]


def test_private_ca_and_ip_san_for_an_https_provider_on_an_ip(tmp_path: Path) -> None:
    providers = policy_data()["providers"]
    providers["small"].update(base_url="https://10.0.0.7:8443", ca_file=str(tmp_path / "ca.pem"))
    rendered = clusters(render(make_policy(providers=providers), SETTINGS))
    small = rendered[direct_cluster("small")]
    assert small["type"] == "STATIC"
    assert "dns_lookup_family" not in small
    validation = small["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(tmp_path / "ca.pem")}
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}]
    assert rendered[direct_cluster("primary")]["type"] == "STRICT_DNS"


def test_outlier_detection_follows_the_policy() -> None:
    on = clusters(render(make_policy(envoy_ejection={"consecutive_5xx": 3, "base_ejection_s": 20}), SETTINGS))
    assert on[rung_cluster("main", 0)]["outlier_detection"] == {
        "consecutive_5xx": 3,
        "interval": "1s",
        "base_ejection_time": "20.000s",
        "max_ejection_percent": 100,
        "consecutive_gateway_failure": 3,
    }
    off = clusters(render(make_policy(envoy_ejection=None), SETTINGS))
    assert "outlier_detection" not in off[rung_cluster("main", 0)]


def test_extproc_cluster_has_the_32_mib_buffer_limit() -> None:
    extproc = clusters(render(make_policy(), SETTINGS))["rungway_extproc"]
    assert extproc["per_connection_buffer_limit_bytes"] == EXTPROC_BUFFER_LIMIT == 32 * 1024 * 1024
    (locality,) = extproc["load_assignment"]["endpoints"]
    # Unix sockets only: no TCP port another local process could open an ext_proc stream on.
    assert [e["endpoint"]["address"] for e in locality["lb_endpoints"]] == [
        {"pipe": {"path": "/run/rw/w0.sock"}},
        {"pipe": {"path": "/run/rw/w1.sock"}},
    ]
    assert "http2_protocol_options" in json.dumps(extproc)


def test_reuse_port_is_off_on_every_listener() -> None:
    config = render(make_policy(), SETTINGS)
    for found in config["static_resources"]["listeners"]:
        assert "internal_listener" in found or found["enable_reuse_port"] is False
    assert all(value is False for key, value in walk(config) if key == "enable_reuse_port")


def test_listener_buffers_the_largest_allowed_body() -> None:
    config = render(make_policy(max_body_bytes=2 * 1024 * 1024), SETTINGS)
    main = listener(config)
    assert main["per_connection_buffer_limit_bytes"] == 2 * 1024 * 1024
    assert main["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 10000}}


# ---- filters ------------------------------------------------------------------------------------


def test_downstream_filter_order_is_strip_json_to_metadata_decide_router() -> None:
    names = [f["name"] for f in hcm(render(make_policy(), SETTINGS))["http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.json_to_metadata",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]


def test_json_to_metadata_marks_a_missing_or_invalid_model() -> None:
    rules = http_filters(render(make_policy(), SETTINGS))["envoy.filters.http.json_to_metadata"]["request_rules"][
        "rules"
    ]
    model = rules[0]
    assert model["selectors"] == [{"key": "model"}]
    assert model["on_missing"] == {"metadata_namespace": META_REQUEST, "key": "model", "value": MISSING}
    assert model["on_error"] == {"metadata_namespace": META_REQUEST, "key": "model", "value": INVALID}
    keys = [r["on_present"]["key"] for r in rules]
    assert keys == ["model", "stream", "response_format", "max_tokens", "max_completion_tokens", "include_usage"]


def test_decide_fails_closed_with_503() -> None:
    decide = http_filters(render(make_policy(), SETTINGS))["envoy.filters.http.ext_proc"]
    assert decide["failure_mode_allow"] is False
    assert decide["status_on_error"] == {"code": 503}


def test_decide_asks_for_the_peer_address_only_when_peers_may_name_tenants() -> None:
    keys = http_filters(render(make_policy(), SETTINGS))["envoy.filters.http.ext_proc"]
    assert "request_attributes" not in keys
    mesh = make_policy(clients={"auth": "trusted_header", "trusted_peers": ["127.0.0.6/32"]})
    trusted = http_filters(render(mesh, SETTINGS))["envoy.filters.http.ext_proc"]
    assert trusted["request_attributes"] == ["source.address"]


def test_decide_filter_sees_the_request_fields_and_writes_the_decision() -> None:
    decide = http_filters(render(make_policy(), SETTINGS))["envoy.filters.http.ext_proc"]
    assert decide["grpc_service"]["initial_metadata"] == [
        {"key": FILTER_ROLE_KEY, "value": "decide"},
        {"key": CHANNEL_TOKEN_KEY, "value": TOKEN},
    ]
    assert decide["metadata_options"] == {
        "forwarding_namespaces": {"untyped": [META_REQUEST]},
        "receiving_namespaces": {"untyped": [META_DECISION]},
    }
    assert decide["processing_mode"]["request_body_mode"] == "NONE"
    assert decide["allow_mode_override"] is True
    assert decide["route_cache_action"] == "CLEAR"
    assert decide["mutation_rules"] == {"allow_envoy": True}
    assert decide["message_timeout"] == "1.000s"


@pytest.mark.parametrize(("stream", "body_mode"), [(False, "BUFFERED"), (True, "FULL_DUPLEX_STREAMED")])
def test_attempt_filter_sits_on_every_aggregate_and_fails_closed(stream: bool, body_mode: str) -> None:
    for settings_ in (SETTINGS,):
        cluster = clusters(render(make_policy(), settings_))[cluster_name("main", (0, 2), stream)]
        attempt, codec = upstream_filters(cluster)
        assert codec["name"] == "envoy.filters.http.upstream_codec"
        config = attempt["typed_config"]
        assert config["grpc_service"]["initial_metadata"] == [
            {"key": FILTER_ROLE_KEY, "value": "attempt"},
            {"key": CHANNEL_TOKEN_KEY, "value": TOKEN},
        ]
        assert config["failure_mode_allow"] is False
        assert config["status_on_error"] == {"code": 503}
        assert config["processing_mode"]["response_body_mode"] == body_mode
        assert config["request_attributes"] == ["xds.upstream_host_metadata", "upstream.request_attempt_count"]
        assert config["metadata_options"] == {
            "forwarding_namespaces": {"untyped": [META_DECISION, META_TRIP]},
            "receiving_namespaces": {"untyped": [META_TRIP]},
        }
        assert config["allow_mode_override"] is (not stream)
        assert ("response_trailer_mode" in config["processing_mode"]) is stream


# ---- routes -------------------------------------------------------------------------------------


def test_ladder_route_takes_only_requests_decide_routed() -> None:
    ladder = routes(render(make_policy(), SETTINGS))["ladder"]
    assert ladder["match"]["dynamic_metadata"] == [
        {"filter": META_DECISION, "path": [{"key": "routed"}], "value": {"bool_match": True}}
    ]
    assert ladder["route"]["cluster_header"] == CLUSTER_HEADER
    assert ladder["route"]["auto_host_rewrite"] is True


def test_retry_policy_walks_priorities_and_waits_out_short_retry_after() -> None:
    retry = routes(render(make_policy(max_attempts=4, retry_after_max_s=1.5), SETTINGS))["ladder"]["route"][
        "retry_policy"
    ]
    assert retry["num_retries"] == 3
    # Only answers the attempt filter (or the relay) marks are retried: a final 5xx is final.
    assert retry["retry_on"] == "retriable-headers,reset,connect-failure"
    assert retry["retriable_headers"] == [{"name": RETRY_HEADER, "present_match": True}]
    assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert retry["rate_limited_retry_back_off"]["max_interval"] == "1.500s"
    assert retry["rate_limited_retry_back_off"]["reset_headers"] == [{"name": "retry-after", "format": "SECONDS"}]


def test_route_timeout_follows_the_policy() -> None:
    assert routes(render(make_policy(route_timeout_s=0), SETTINGS))["ladder"]["route"]["timeout"] == "0.000s"


def test_passthrough_route_takes_only_requests_decide_passed_through() -> None:
    route = routes(render(make_policy(), SETTINGS))["passthrough"]
    assert route["match"]["dynamic_metadata"] == [
        {"filter": META_DECISION, "path": [{"key": "passthrough"}], "value": {"bool_match": True}}
    ]
    assert route["route"]["cluster_header"] == CLUSTER_HEADER
    assert "retry_policy" not in route["route"]


def test_no_route_reaches_a_provider_without_decide() -> None:
    rendered = routes(render(make_policy(), SETTINGS))
    assert list(rendered) == ["ladder", "passthrough", "unrouted"]
    assert rendered["unrouted"]["direct_response"]["status"] == 503
    assert all("typed_per_filter_config" not in r for r in rendered.values())


def test_local_replies_are_rendered_in_the_client_dialect_unless_rungway_rendered_them() -> None:
    mappers = hcm(render(make_policy(), SETTINGS))["local_reply_config"]["mappers"]
    assert len(mappers) == 12  # 6 statuses x 2 dialects
    anthropic_503 = next(
        m
        for m in mappers
        if m["filter"]["and_filter"]["filters"][0]["status_code_filter"]["comparison"]["value"]["default_value"] == 503
        and not m["filter"]["and_filter"]["filters"][1]["header_filter"]["header"]["invert_match"]
    )
    assert anthropic_503["body_format_override"]["json_format"]["error"]["type"] == "overloaded_error"
    not_rendered = anthropic_503["filter"]["and_filter"]["filters"][2]["metadata_filter"]
    assert not_rendered["match_if_key_not_found"] is True


# ---- the real binary ------------------------------------------------------------------------------


def test_rendered_config_passes_envoy_validate_mode(tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path, ["10.0.0.7"]).ca_cert
    providers = policy_data()["providers"]
    providers["primary"]["base_url"] = "https://gw.test/openai/v1"
    providers["small"].update(base_url="https://10.0.0.7:8443/v1", ca_file=str(ca))
    policy = make_policy(providers=providers, envoy_ejection={"consecutive_5xx": 2})
    path = tmp_path / "envoy.json"
    mesh = policy.model_copy(
        update={"clients": make_policy(clients={"auth": "trusted_header", "trusted_peers": ["10.0.0.0/8"]}).clients}
    )
    path.write_text(json.dumps(render(mesh, SHIELDED)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_the_relay_paces_what_a_provider_sends_before_it_reaches_the_attempt_filter() -> None:
    # Envoy 1.40's ext_proc watermark crash (docs/ENVOY-DEFECTS.md): a flood must never pile up
    # behind the sidecar's ext_proc stream; the relay's own HCM holds it back.
    pace, router = hcm(render(make_policy(), SETTINGS), RELAY_LISTENER)["http_filters"]
    assert pace["name"] == "envoy.filters.http.bandwidth_limit" and router["name"] == "envoy.filters.http.router"
    assert pace["typed_config"]["enable_mode"] == "RESPONSE"
    assert pace["typed_config"]["limit_kbps"] == PROVIDER_PACE_KIBPS
    assert EXTPROC_BUFFER_LIMIT / (PROVIDER_PACE_KIBPS * 1024) >= 4  # seconds for a flood to fill it
