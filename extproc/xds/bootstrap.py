"""Render the whole Envoy bootstrap from a policy: a pure function, policy + settings → dict.

Shape (every piece verified on Envoy 1.40, see README "Envoy behaviours we rely on"):
listener → [json_to_metadata, ext_proc "decide", router]. json_to_metadata lifts the request's
model / stream / JSON-mode fields into metadata so `decide` usually needs only the headers
message. `decide` marks the request routed (dynamic metadata, which a client cannot forge) and
names the aggregate cluster in x-rungway-cluster; the ladder route matches only routed requests.
Each aggregate cluster is one ordering of a ladder's rungs over per-rung child clusters, and
carries the upstream ext_proc "attempt" filter, which runs once per try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ..core import Failure, RungAddress
from ..core.names import (
    ANTHROPIC_MESSAGES_PATH,
    CHANNEL_TOKEN_KEY,
    CLUSTER_HEADER,
    FILTER_ROLE_KEY,
    INVALID,
    META_DECISION,
    META_REQUEST,
    META_TRIP,
    MISSING,
    PEER_ATTRIBUTE,
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
from ..policy import Ejection, Policy, Provider
from ..policy.schema import MAX_APPROVAL_WAIT_S
from ..routing.hold import ENVOY_MARGIN_S
from ..routing.ladder import orderings

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Envoy 1.40.0 segfaults when an upstream ext_proc buffers a response over ~1 MiB unless the
# ext_proc gRPC cluster's buffer limit is above the largest body (README, Envoy notes).
EXTPROC_BUFFER_LIMIT = 32 * 1024 * 1024

_ANY = "type.googleapis.com/"
ADMIN_SOCKET_MODE = 0o600
EXTPROC_CLUSTER = "rungway_extproc"
LISTENER_ROUTES = "rungway"  # the client listener's route table
RELAY_ROUTES = "relay"  # the relay listener's: one route per rung


@dataclass(frozen=True)
class EnvoySettings:
    listen_port: int
    admin_port: int
    # The sidecar workers' Unix sockets (0600, in a 0700 directory): no TCP port, so no
    # process without the sidecar's user can open an ext_proc stream.
    extproc_sockets: tuple[str, ...]
    # Sent by Envoy on every ext_proc stream; a stream without it is refused (a second lock,
    # for a neighbour that runs as the same user).
    channel_token: str
    listen_address: str = "127.0.0.1"
    admin_address: str = "127.0.0.1"
    # Where the sidecar calls a rescue rung (a stream cut after its first token): a Unix socket
    # (0600) listener without ext_proc that routes by x-rungway-cluster to a provider. None: no
    # rescue listener (rescues then fail cleanly with an in-band error).
    rescue_socket: str | None = None
    # The sidecar workers' reset shields (runtime/shield.py, Unix sockets 0600): a rescuable
    # stream's try reaches its provider through one (and the rescue listener), so a provider
    # reset after the first token ends the try cleanly instead of resetting the client. Empty
    # (or no rescue listener): tries go straight to the provider.
    shield_sockets: tuple[str, ...] = ()
    # When set, Envoy's admin (no authentication: /logging, /config_dump, /quitquitquit...) binds
    # this Unix socket instead of admin_address:admin_port, chmod 0600 by Envoy right after bind
    # (Pipe.mode; 0 would leave the umask's bits). `rungway up` puts it in its 0700 run
    # directory, so no other user's process can reach it; standalone renders keep TCP loopback.
    admin_socket: str | None = None
    message_timeout_s: float = 1.0
    access_log_path: str = "/dev/stdout"
    extra_ca_files: dict[str, Path] = field(default_factory=dict)
    # Envoy's overload manager (_overload_manager): connections it accepts at all, and the heap
    # past which it sheds load itself. Envoy with Rungway's buffers (ext_proc bodies up to
    # EXTPROC_BUFFER_LIMIT per connection) stays far below 1 GiB in normal operation.
    max_downstream_connections: int = 50_000
    max_heap_bytes: int = 1024 * 1024 * 1024

    @property
    def shielded(self) -> bool:
        return bool(self.shield_sockets) and self.rescue_socket is not None

    def admin_bind(self) -> dict[str, Any]:
        """Envoy's admin address: the private Unix socket when there is one, else TCP loopback."""
        if self.admin_socket is not None:
            return {"pipe": {"path": self.admin_socket, "mode": ADMIN_SOCKET_MODE}}
        return _addr(self.admin_address, self.admin_port)


def render(policy: Policy, settings: EnvoySettings) -> dict[str, Any]:
    clusters: list[dict[str, Any]] = [_extproc_cluster(settings)]
    for ladder, rungs in policy.ladders.items():
        for i, rung in enumerate(rungs):
            clusters.append(_rung_cluster(ladder, i, rung.attempts, policy.envoy_ejection))
    for name, provider in policy.providers.items():
        clusters.append(_provider_cluster(direct_cluster(name), provider))
    for ladder, order in orderings(policy):
        for stream in (False, True):
            clusters.append(_aggregate_cluster(ladder, order, stream, settings))
    if settings.shielded:
        clusters.append(_shield_cluster(settings.shield_sockets))
    return {
        "node": {"id": "rungway", "cluster": "rungway"},
        "admin": {"address": settings.admin_bind()},
        "overload_manager": _overload_manager(settings),
        "static_resources": {"listeners": _listeners(policy, settings), "clusters": clusters},
        # An admin layer lets an operator (or a test) flip a runtime guard on the running Envoy,
        # e.g. envoy.reloadable_features.abort_when_accessing_dead_decoder. Admin is private (see above).
        "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": _ANY + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
            }
        ],
    }


def _overload_manager(settings: EnvoySettings) -> dict[str, Any]:
    """Envoy's own last line against overload (the sidecar sheds first, per worker: decide's 503).
    Past max_heap_bytes of heap, Envoy frees what it can, then stops keep-alive (clients spread to
    other replicas), then answers new requests 503 itself (the local-reply mapper renders that in
    the client's dialect) rather than be OOM-killed with every stream in it."""
    monitors: list[dict[str, Any]] = [
        {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": _ANY
                + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": settings.max_downstream_connections,
            },
        },
        {
            "name": "envoy.resource_monitors.fixed_heap",
            "typed_config": {
                "@type": _ANY + "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": settings.max_heap_bytes,
            },
        },
    ]

    def on_heap(action: str, at: float) -> dict[str, Any]:
        trigger = {"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": at}}
        return {"name": f"envoy.overload_actions.{action}", "triggers": [trigger]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": monitors,
        "actions": [
            on_heap("shrink_heap", 0.90),
            on_heap("disable_http_keepalive", 0.95),
            on_heap("stop_accepting_requests", 0.98),
        ],
    }


def _listeners(policy: Policy, settings: EnvoySettings) -> list[dict[str, Any]]:
    listeners = [_listener(policy, settings), _relay_listener(policy, shielded=settings.shielded)]
    if settings.rescue_socket is not None:
        listeners.append(_rescue_listener(settings.rescue_socket))
    return listeners


def _rescue_listener(path: str) -> dict[str, Any]:
    """The sidecar's way to a provider for a stream rescue: no ext_proc (the sidecar already set
    the rung's path, key and body), the provider's direct cluster by x-rungway-cluster. Envoy sets
    no key here, so a neighbour that reached the socket would gain nothing."""
    hcm = {
        "@type": _ANY + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rescue",
        "codec_type": "HTTP1",
        # A provider's reset reaches the caller (the reset shield) as a close now, not after
        # Envoy's default 1 s of waiting for the caller to close first.
        "delayed_close_timeout": "0s",
        "route_config": {
            "name": "rescue",
            "virtual_hosts": [
                {
                    "name": "rescue",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]},
                            "route": {
                                "cluster_header": CLUSTER_HEADER,
                                "timeout": "0s",  # the sidecar's rescue budget bounds the call
                                "auto_host_rewrite": True,
                            },
                            "request_headers_to_remove": [CLUSTER_HEADER],
                            # For a shielded try (runtime/shield.py passes them on): Envoy's
                            # own failure (UF, UT, ...) told from the provider's answer ("-").
                            "response_headers_to_add": [_relay_flags("OVERWRITE_IF_EXISTS_OR_ADD")],
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _ANY + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": "rungway_rescue",
        "address": {"pipe": {"path": path, "mode": 0o600}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(policy: Policy, settings: EnvoySettings) -> dict[str, Any]:
    hcm = {
        "@type": _ANY + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rungway",
        "codec_type": "AUTO",
        # The peer is the TCP peer, never what X-Forwarded-For claims: trusted_header auth
        # believes a tenant header only from trusted_peers' real addresses.
        "use_remote_address": True,
        # One spelling of every path and header name: `//v1/chat/completions`, `%2F` or
        # `x_api_key` must not slip past decide's rules as another path or another header.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "access_log": [_access_log(settings.access_log_path)],
        "local_reply_config": _local_reply_config(),
        "route_config": {
            "name": LISTENER_ROUTES,
            "virtual_hosts": [
                {
                    "name": "llm",
                    "domains": ["*"],
                    "routes": _routes(policy),
                    "include_attempt_count_in_response": True,
                }
            ],
        },
        "http_filters": [
            _strip_envoy_headers(),
            _json_to_metadata(),
            _decide_filter(policy, settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _ANY + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": "rungway",
        "address": _addr(settings.listen_address, settings.listen_port),
        # Envoy shares a port silently with another Envoy unless reuse_port is off.
        "enable_reuse_port": False,
        # The router buffers the request body to replay it on the next rung, and the attempt
        # filter buffers JSON responses: this is the largest body either may be.
        "per_connection_buffer_limit_bytes": policy.max_body_bytes,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _access_log(path: str) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "path": "%REQ(:PATH)%",
                    "code": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                    "cluster": "%UPSTREAM_CLUSTER%",
                    "upstream": "%UPSTREAM_HOST%",
                    "served_by": "%RESP(X-RUNGWAY-SERVED-BY)%",
                    "reason": "%RESP(X-RUNGWAY-REASON)%",
                    "decision": f"%DYNAMIC_METADATA({META_DECISION})%",
                    "trip": f"%DYNAMIC_METADATA({META_TRIP})%",
                }
            },
        },
    }


# Errors Envoy itself generates (no route, upstream down, timeouts, body too large, sidecar
# unreachable when failing closed) are rendered in the client's API dialect, like ours.
_LOCAL_ERRORS: list[tuple[int, Failure, str, str]] = [
    # status, failure, openai type, anthropic type
    (413, Failure.CLIENT_ERROR, "invalid_request_error", "request_too_large"),
    (429, Failure.RATE_LIMITED, "rate_limit_error", "rate_limit_error"),
    (500, Failure.SERVER_ERROR, "server_error", "api_error"),
    (502, Failure.SERVER_ERROR, "server_error", "api_error"),
    (503, Failure.SERVER_ERROR, "server_error", "overloaded_error"),
    (504, Failure.TIMEOUT, "timeout", "timeout_error"),
]


def _local_reply_config() -> dict[str, Any]:
    mappers = []
    for status, failure, openai_type, anthropic_type in _LOCAL_ERRORS:
        for anthropic in (True, False):
            body: dict[str, Any]
            if anthropic:
                body = {
                    "type": "error",
                    "error": {"type": anthropic_type, "message": "%LOCAL_REPLY_BODY%", "rungway_reason": failure.value},
                }
            else:
                body = {
                    "error": {
                        "message": "%LOCAL_REPLY_BODY%",
                        "type": openai_type,
                        "code": failure.value,
                        "rungway_reason": failure.value,
                    }
                }
            status_is = {
                "status_code_filter": {
                    "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "rungway.local_reply"}}
                }
            }
            path_is = {
                "header_filter": {
                    "header": {
                        "name": ":path",
                        "string_match": {"prefix": ANTHROPIC_MESSAGES_PATH},
                        "invert_match": not anthropic,
                    }
                }
            }
            mappers.append(
                {
                    "filter": {"and_filter": {"filters": [status_is, path_is, _not_rendered()]}},
                    "body_format_override": {"json_format": body, "content_type": "application/json"},
                }
            )
    return {"mappers": mappers}


def _not_rendered() -> dict[str, Any]:
    # metadata_filter with match_if_key_not_found=True matches requests Rungway did not answer.
    return {
        "metadata_filter": {
            "matcher": {
                "filter": META_DECISION,
                "path": [{"key": "rendered"}],
                "value": {"bool_match": False},
            },
            "match_if_key_not_found": True,
        }
    }


def _strip_envoy_headers() -> dict[str, Any]:
    """Clients may not steer Envoy: every x-envoy-* request header (retry policy, timeouts,
    hedging, internal markers) is removed before any other filter runs. decide then sets the
    retries and per-try timeout it chose."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [{"remove_on_match": {"key_matcher": {"prefix": "x-envoy-"}}}],
            },
        },
    }


def _json_to_metadata() -> dict[str, Any]:
    def rule(keys: list[str], name: str, kind: str, *, sentinels: bool = False) -> dict[str, Any]:
        r: dict[str, Any] = {
            "selectors": [{"key": k} for k in keys],
            "on_present": {"metadata_namespace": META_REQUEST, "key": name, "type": kind},
        }
        if sentinels:
            r["on_missing"] = {"metadata_namespace": META_REQUEST, "key": name, "value": MISSING}
            r["on_error"] = {"metadata_namespace": META_REQUEST, "key": name, "value": INVALID}
        return r

    return {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {
                "rules": [
                    rule(["model"], "model", "STRING", sentinels=True),
                    rule(["stream"], "stream", "PROTOBUF_VALUE"),
                    rule(["response_format", "type"], "response_format", "STRING"),
                    rule(["max_tokens"], "max_tokens", "NUMBER"),
                    rule(["max_completion_tokens"], "max_completion_tokens", "NUMBER"),
                    rule(["stream_options", "include_usage"], "include_usage", "PROTOBUF_VALUE"),
                ],
                # The default allow-list is exactly "application/json"; SDKs add a charset.
                "allow_content_types_regex": {"regex": "^application/json(;.*)?$"},
            },
        },
    }


def _grpc_service(role: str, settings: EnvoySettings) -> dict[str, Any]:
    return {
        "envoy_grpc": {"cluster_name": EXTPROC_CLUSTER},
        "initial_metadata": [
            {"key": FILTER_ROLE_KEY, "value": role},
            {"key": CHANNEL_TOKEN_KEY, "value": settings.channel_token},
        ],
    }


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _decide_filter(policy: Policy, settings: EnvoySettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": _ANY + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": _grpc_service("decide", settings),
        # Fail closed: only the sidecar authenticates callers and holds the providers' keys, so
        # a request it did not see goes nowhere (503 in the client's dialect).
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "processing_mode": {
            "request_header_mode": "SEND",
            "request_body_mode": "NONE",  # asked for per request, only when tools matter
            "response_header_mode": "SKIP",
            "response_body_mode": "NONE",
        },
        "allow_mode_override": True,
        # Re-resolve the route after decide's answer (only acts when the answer also mutates
        # headers, which decide's always does).
        "route_cache_action": "CLEAR",
        # x-envoy-max-retries and the per-try timeout header are Envoy headers: without this
        # Envoy drops decide's mutation of them silently (rejected_header_mutations).
        "mutation_rules": {"allow_envoy": True},
        "message_timeout": _seconds(settings.message_timeout_s),
        # A request held for an operator's approval (routing/hold.py): decide asks Envoy once to
        # wait that long for its answer (override_message_timeout, ignored without this cap).
        "max_message_timeout": _seconds(MAX_APPROVAL_WAIT_S + ENVOY_MARGIN_S),
        "metadata_options": {
            "forwarding_namespaces": {"untyped": [META_REQUEST]},
            "receiving_namespaces": {"untyped": [META_DECISION]},
        },
    }
    if policy.clients.auth == "trusted_header":
        # The peer's address: only named mesh proxies may say who the tenant is.
        config["request_attributes"] = [PEER_ATTRIBUTE]
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def _attempt_filter(stream: bool, settings: EnvoySettings) -> dict[str, Any]:
    mode = {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_header_mode": "SEND",
        "response_body_mode": "FULL_DUPLEX_STREAMED" if stream else "BUFFERED",
    }
    if stream:
        # Required by Envoy for FULL_DUPLEX_STREAMED; lets the sidecar end a stalled stream.
        mode["response_trailer_mode"] = "SEND"
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": _grpc_service("attempt", settings),
            # Fail closed: a request that reached a rung untranslated would carry the app's key
            # to another provider.
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "processing_mode": mode,
            "allow_mode_override": not stream,
            "message_timeout": _seconds(settings.message_timeout_s),
            "max_message_timeout": "30s",
            "request_attributes": ["xds.upstream_host_metadata", "upstream.request_attempt_count"],
            "metadata_options": {
                "forwarding_namespaces": {"untyped": [META_DECISION, META_TRIP]},
                "receiving_namespaces": {"untyped": [META_TRIP]},
            },
            "mutation_rules": {"allow_all_routing": True, "allow_envoy": True},
        },
    }


def _http_options(upstream_filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "@type": _ANY + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": {}},
    }
    if upstream_filters is not None:
        options["http_filters"] = upstream_filters
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}


def _aggregate_cluster(ladder: str, order: tuple[int, ...], stream: bool, settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": cluster_name(ladder, order, stream),
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
        # Retries are counted on the route's cluster, this one. Envoy's default of 3 concurrent
        # retries turns a slow primary under load into failures (retry overflow); Rungway's
        # own fleet-wide retry budget is the limit that matters.
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 65536, "max_pending_requests": 65536, "max_requests": 65536, "max_retries": 65536}
            ]
        },
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": _ANY + "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": [rung_cluster(ladder, i) for i in order],
            },
        },
        # Upstream filters must sit on the aggregate: on the children Envoy ignores them.
        "typed_extension_protocol_options": _http_options(
            [
                _attempt_filter(stream, settings),
                {
                    "name": "envoy.filters.http.upstream_codec",
                    "typed_config": {"@type": _ANY + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
                },
            ]
        ),
    }


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


_CIRCUIT_BREAKERS = {
    "thresholds": [{"max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096, "max_retries": 1024}]
}


def _rung_cluster(ladder: str, index: int, slots: int, ejection: Ejection | None) -> dict[str, Any]:
    """One rung: `attempts` endpoints at successive priorities (Envoy's previous_priorities retry
    walks them before moving on), each the relay listener, carrying the rung's address."""
    priorities = []
    for slot in range(slots):
        endpoint = {
            "endpoint": {"address": {"envoy_internal_address": {"server_listener_name": RELAY_LISTENER}}},
            "metadata": {"filter_metadata": {META_DECISION: RungAddress(ladder, index, slot).encode()}},
        }
        priorities.append({"priority": slot, "lb_endpoints": [endpoint]})
    name = rung_cluster(ladder, index)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": priorities},
        "typed_extension_protocol_options": _http_options(),
        "circuit_breakers": _CIRCUIT_BREAKERS,
    }
    if ejection is not None:
        # Envoy's passive breaker: the fast, dumb first line under Rungway's own health view.
        # Skipped slots answer 421, which it does not count.
        cluster["outlier_detection"] = {
            "consecutive_5xx": ejection.consecutive_5xx,
            "interval": "1s",
            "base_ejection_time": _seconds(ejection.base_ejection_s),
            "max_ejection_percent": 100,
            "consecutive_gateway_failure": ejection.consecutive_5xx,
        }
    return cluster


def _relay_listener(policy: Policy, *, shielded: bool) -> dict[str, Any]:
    """Where every try reaches its provider: one route a rung, with the rung's own per-try
    budget (time to the provider's response headers; the request's deadline caps it), and one
    route that answers a skipped slot at once. `shielded`: before each rung's route, the same
    through the sidecar's reset shield for a try that asks for it (SHIELD_HEADER)."""
    routes: list[dict[str, Any]] = [
        {
            "name": "skip",
            "match": {"prefix": "/", "headers": [{"name": SKIP_HEADER, "present_match": True}]},
            "direct_response": {"status": SKIP_STATUS, "body": {"inline_string": "skipped by the failure rules"}},
            "response_headers_to_add": [
                {"header": {"key": SKIPPED_HEADER, "value": "1"}},
                {"header": {"key": RETRY_HEADER, "value": "1"}},
            ],
        }
    ]
    for ladder, rungs in policy.ladders.items():
        for i, rung in enumerate(rungs):
            key = policy.relay_routes[(ladder, i)]
            rung_match = {"name": RUNG_HEADER, "string_match": {"exact": key}}
            budget = {"num_retries": 0, "per_try_timeout": _seconds(rung.timeout_s)}
            if shielded:
                routes.append(
                    {
                        "name": relay_route_name(key) + SHIELDED_SUFFIX,
                        "match": {
                            "prefix": "/",
                            "headers": [rung_match, {"name": SHIELD_HEADER, "present_match": True}],
                        },
                        "route": {"cluster": SHIELD_CLUSTER, "timeout": "0s", "retry_policy": budget},
                        "request_headers_to_remove": [RUNG_HEADER, SKIP_HEADER, SHIELD_HEADER],
                        "request_headers_to_add": [
                            {
                                "header": {"key": CLUSTER_HEADER, "value": direct_cluster(rung.provider)},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        ],
                        # The rescue listener's flags when the shield passed them on; the
                        # relay's own when the shield itself failed.
                        "response_headers_to_add": [_relay_flags("ADD_IF_ABSENT")],
                    }
                )
            routes.append(
                {
                    "name": relay_route_name(key),
                    "match": {"prefix": "/", "headers": [rung_match]},
                    "route": {
                        "cluster": direct_cluster(rung.provider),
                        "timeout": "0s",  # the whole request's deadline is the outer route's
                        "auto_host_rewrite": True,
                        "retry_policy": budget,
                    },
                    "request_headers_to_remove": [RUNG_HEADER, SKIP_HEADER, SHIELD_HEADER],
                    "response_headers_to_add": [_relay_flags("OVERWRITE_IF_EXISTS_OR_ADD")],
                }
            )
    routes.append(
        {
            "name": "unknown_rung",
            "match": {"prefix": "/"},
            "direct_response": {"status": 502, "body": {"inline_string": "no such rung"}},
        }
    )
    hcm = {
        "@type": _ANY + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "relay",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",  # streams pause; the outer listener and the sidecar time them
        "route_config": {
            "name": RELAY_ROUTES,
            "virtual_hosts": [{"name": "rungs", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            _provider_pace(),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _ANY + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": RELAY_LISTENER,
        "internal_listener": {},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


# What a provider may send one try per second (KiB/s): far above any model's token stream or a
# large JSON answer's, far below what fills the sidecar's ext_proc stream (EXTPROC_BUFFER_LIMIT)
# while a loaded sidecar is a moment behind. A flooding provider (an endless line, token-less
# events) is paced here, by ordinary HTTP flow control on the provider's connection, instead of
# piling up behind the ext_proc stream, whose write watermark on an upstream filter is where
# Envoy 1.40 crashes (docs/ENVOY-DEFECTS.md).
PROVIDER_PACE_KIBPS = 8 * 1024


def _provider_pace() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.bandwidth_limit",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit",
            "stat_prefix": "provider_pace",
            "enable_mode": "RESPONSE",
            "limit_kbps": PROVIDER_PACE_KIBPS,
            "fill_interval": "0.02s",
        },
    }


def _relay_flags(action: str) -> dict[str, Any]:
    return {"header": {"key": RELAY_FLAGS_HEADER, "value": "%RESPONSE_FLAGS%"}, "append_action": action}


def _shield_cluster(sockets: tuple[str, ...]) -> dict[str, Any]:
    """The workers' reset shields, round robin (a dead worker's socket refuses at once: the try
    fails as a connect error and the ladder moves on)."""
    return {
        "name": SHIELD_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": SHIELD_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": p}}}} for p in sockets]}],
        },
        "typed_extension_protocol_options": _http_options(),
        "circuit_breakers": _CIRCUIT_BREAKERS,
    }


SHIELDED_SUFFIX = "_shielded"


def relay_route_name(key: str) -> str:
    """The relay route of a rung's key (`<ladder>/<index>~<hash>`)."""
    return "rung_" + key.replace("/", "_").replace("~", "_")


def _provider_cluster(name: str, provider: Provider) -> dict[str, Any]:
    """A provider reached directly: from the relay (every try), fail-open and pass-through."""
    endpoint: dict[str, Any] = {
        "endpoint": {"address": _addr(provider.host, provider.port), "hostname": provider.authority},
    }
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(provider.host) else "STRICT_DNS",
        "connect_timeout": _seconds(provider.connect_timeout_s),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        "typed_extension_protocol_options": _http_options(),
        "circuit_breakers": _CIRCUIT_BREAKERS,
    }
    if not _is_ip(provider.host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if provider.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _ANY + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": provider.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": str(provider.ca_file or SYSTEM_CA_BUNDLE)},
                        "match_typed_subject_alt_names": [
                            {
                                "san_type": "IP_ADDRESS" if _is_ip(provider.host) else "DNS",
                                "matcher": {"exact": provider.host},
                            }
                        ],
                    }
                },
            },
        }
    return cluster


def _extproc_cluster(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": EXTPROC_BUFFER_LIMIT,
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"pipe": {"path": path}}}} for path in settings.extproc_sockets
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _ANY + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
                },
            }
        },
        "circuit_breakers": {
            "thresholds": [{"max_connections": 1024, "max_pending_requests": 65536, "max_requests": 65536}]
        },
        # A worker that stops answering is taken out of the round robin within a second or two.
        "health_checks": [
            {
                "timeout": "0.5s",
                "interval": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
    }


def _routes(policy: Policy) -> list[dict[str, Any]]:
    retry_policy = {
        # Only what the attempt filter (or the relay, for a skipped slot) marks for a retry is
        # retried: a final answer is final whatever its status (5xx included).
        "retry_on": "retriable-headers,reset,connect-failure",
        "retriable_headers": [{"name": RETRY_HEADER, "present_match": True}],
        # Overridden per request by decide (x-envoy-max-retries): the ladder's slots, capped.
        "num_retries": policy.max_attempts - 1,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": _ANY + "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        },
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
        # A short Retry-After on a 429 is waited out before the next try; a long one is not
        # (the attempt filter turns it into an immediate hop).
        "rate_limited_retry_back_off": {
            "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
            "max_interval": _seconds(max(policy.retry_after_max_s, 0.001)),
        },
    }
    routes: list[dict[str, Any]] = [
        {
            "name": "ladder",
            "match": {
                "prefix": "/",
                "dynamic_metadata": [
                    {"filter": META_DECISION, "path": [{"key": "routed"}], "value": {"bool_match": True}}
                ],
            },
            "route": {
                "cluster_header": CLUSTER_HEADER,
                "timeout": _seconds(policy.route_timeout_s),
                "auto_host_rewrite": True,
                "retry_policy": retry_policy,
            },
        }
    ]
    routes.append(
        {
            # decide authenticated the caller, chose the provider by the dialect of the
            # caller's key, set that provider's key and path, and scrubbed every other credential.
            "name": "passthrough",
            "match": {
                "prefix": "/",
                "dynamic_metadata": [
                    {"filter": META_DECISION, "path": [{"key": "passthrough"}], "value": {"bool_match": True}}
                ],
            },
            "route": {
                "cluster_header": CLUSTER_HEADER,
                "timeout": _seconds(policy.route_timeout_s),
                "auto_host_rewrite": True,
            },
            # Nothing of Rungway's own routing reaches the provider.
            "request_headers_to_remove": [CLUSTER_HEADER, "x-envoy-original-host", "x-envoy-expected-rq-timeout-ms"],
        }
    )
    # Every request meets decide first, which routes it, passes it through or answers it.
    # Reaching this route means none of that happened: it never goes to a provider.
    routes.append(
        {
            "name": "unrouted",
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": "the request was not routed"}},
        }
    )
    return routes
