"""What the benchmark sends and what its fast upstream answers, plus the Envoy configs and the
Rungway policy.

The fast upstream is an Envoy serving `direct_response` bodies (no Python on that side):
  POST /v1/chat/completions              → an OpenAI chat.completion
  POST /v1/messages                      → an Anthropic message
  same, with `x-bench-body: sse`         → the provider's event stream (ANSWER_TOKENS text events)
It reads the whole request body first (buffer filter): a direct_response sent before the body
is read makes Envoy close the upstream connection after every request (see the envoy-lab notes).
"""

from __future__ import annotations

import json
from typing import Any

ANSWER_TOKENS = 18
MODEL = "gpt-bench"
ANTHROPIC_MODEL = "claude-bench"
BODY_HEADER = "x-bench-body"  # "sse" selects the streamed answer at the fast upstream
UPSTREAM_HEADER = "x-bench-up"  # "mock" sends a plain-Envoy request to the Python mock

# Client-facing model names: each selects one Rungway ladder (see policy()).
MODELS = {
    "pass": "gpt-bench",  # OpenAI client → OpenAI upstream, model unchanged
    "xlat": "gpt-bench-xlat",  # OpenAI client → Anthropic upstream: request and answer translated
    "mock-pass": "gpt-bench-mock",
    "mock-xlat": "gpt-bench-mock-xlat",
}

_ANSWER = (
    "Orders ship within two business days, and you can track the parcel from the link in your "
    "confirmation email once it leaves us."
)
_WORDS = _ANSWER.split(" ")
ANSWER_PIECES = tuple((w if i == 0 else " " + w) for i, w in enumerate(_WORDS[:ANSWER_TOKENS]))
ANSWER_TEXT = "".join(ANSWER_PIECES)

_SYSTEM = (
    "You are the customer support assistant of an online bookshop. Answer in two sentences at most, "
    "be friendly and precise, never invent order numbers, and refer the customer to a human agent "
    "when the question is about a refund over 200 EUR. "
) * 4
_USER = (
    "Hi! I ordered three paperbacks last Tuesday (order placed from my phone, paid by card) and the "
    "confirmation email said it would ship soon. I have not received any tracking information yet. "
    "How long does shipping usually take, and where can I see the status of the parcel? "
) * 3


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def request_body(model: str, *, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _USER},
            {"role": "assistant", "content": "Thanks for reaching out! Let me check that for you."},
            {"role": "user", "content": "Thanks, and can I change the delivery address?"},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return _dumps(body).encode()


def openai_json() -> str:
    return _dumps(
        {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER_TEXT, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 512, "completion_tokens": ANSWER_TOKENS, "total_tokens": 512 + ANSWER_TOKENS},
            "system_fingerprint": "fp_bench",
        }
    )


def anthropic_json() -> str:
    return _dumps(
        {
            "id": "msg_bench0001",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [{"type": "text", "text": ANSWER_TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 512, "output_tokens": ANSWER_TOKENS},
        }
    )


def openai_sse() -> tuple[str, int]:
    """The stream and its number of events (role chunk, one per token, finish chunk, [DONE])."""
    base = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return "data: " + _dumps(body) + "\n\n"

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in ANSWER_PIECES]
    events.append(chunk({}, "stop"))
    events.append("data: [DONE]\n\n")
    return "".join(events), len(events)


def anthropic_sse() -> tuple[str, int]:
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {_dumps(data)}\n\n"

    message: dict[str, Any] = {
        "id": "msg_bench0001",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 512, "output_tokens": 1},
    }
    events = [
        event("message_start", {"type": "message_start", "message": message}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        event("ping", {"type": "ping"}),
    ]
    events += [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in ANSWER_PIECES
    ]
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": ANSWER_TOKENS},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return "".join(events), len(events)


# Events per upstream stream, by upstream dialect (also what the Python mock sends for
# `x-mock-mode: tokens:ANSWER_TOKENS`).
SSE_EVENTS = {"openai": openai_sse()[1], "anthropic": anthropic_sse()[1]}
MOCK_MODE = f"tokens:{ANSWER_TOKENS}"

# ---- Envoy configs ------------------------------------------------------------------------------

_ANY = "type.googleapis.com/"


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _ANY + "envoy.extensions.filters.http.router.v3.Router"},
    }


def _listener(name: str, route_config: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    hcm = {
        "@type": _ANY + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [*filters, _router()],
    }
    return {
        "name": name,
        "address": _addr(0),
        "enable_reuse_port": False,  # never share a port with another Envoy on this machine
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
        "circuit_breakers": {
            "thresholds": [{"max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096}]
        },
    }


def _bootstrap(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "admin": {"address": _addr(0)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def upstream_config() -> dict[str, Any]:
    openai_stream, _ = openai_sse()
    anthropic_stream, _ = anthropic_sse()

    def route(path: str, body: str, content_type: str, sse: bool) -> dict[str, Any]:
        match: dict[str, Any] = {"path": path}
        if sse:
            match["headers"] = [{"name": BODY_HEADER, "string_match": {"exact": "sse"}}]
        return {
            "match": match,
            "direct_response": {"status": 200, "body": {"inline_string": body}},
            "response_headers_to_add": [
                {
                    "header": {"key": "content-type", "value": content_type},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }

    routes = [
        route("/v1/chat/completions", openai_stream, "text/event-stream; charset=utf-8", True),
        route("/v1/messages", anthropic_stream, "text/event-stream; charset=utf-8", True),
        route("/v1/chat/completions", openai_json(), "application/json", False),
        route("/v1/messages", anthropic_json(), "application/json", False),
        {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "not found"}}},
    ]
    route_config = {
        "name": "upstream",
        "max_direct_response_body_size_bytes": 1024 * 1024,
        "virtual_hosts": [{"name": "upstream", "domains": ["*"], "routes": routes}],
    }
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": _ANY + "envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 4 * 1024 * 1024,
        },
    }
    return _bootstrap(_listener("upstream", route_config, [buffer]), [])


def plain_config(upstream_port: int, mock_port: int | None) -> dict[str, Any]:
    """The baseline: listener → router → the same fast upstream (or the mock, by header)."""
    routes: list[dict[str, Any]] = []
    clusters = [_cluster("upstream", upstream_port)]
    if mock_port is not None:
        clusters.append(_cluster("mock", mock_port))
        routes.append(
            {
                "match": {"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": "mock"}}]},
                "route": {"cluster": "mock", "timeout": "60s"},
            }
        )
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "60s"}})
    route_config = {"name": "plain", "virtual_hosts": [{"name": "plain", "domains": ["*"], "routes": routes}]}
    return _bootstrap(_listener("plain", route_config, []), clusters)


def policy(upstream_port: int, mock_openai_port: int | None, mock_anthropic_port: int | None) -> dict[str, Any]:
    """Two-rung ladders as a real deployment has them; the benchmark is the happy path, so only
    rung 0 is ever tried."""
    up = f"http://127.0.0.1:{upstream_port}"
    providers: dict[str, Any] = {
        "fast-openai": {"base_url": up, "dialect": "openai"},
        "fast-anthropic": {"base_url": up, "dialect": "anthropic"},
    }
    ladders: dict[str, Any] = {
        "pass": [{"provider": "fast-openai"}, {"provider": "fast-anthropic", "model": ANTHROPIC_MODEL}],
        "xlat": [{"provider": "fast-anthropic", "model": ANTHROPIC_MODEL}, {"provider": "fast-openai", "model": MODEL}],
    }
    models = [{"match": MODELS["pass"], "ladder": "pass"}, {"match": MODELS["xlat"], "ladder": "xlat"}]
    if mock_openai_port is not None and mock_anthropic_port is not None:
        providers["mock-openai"] = {"base_url": f"http://127.0.0.1:{mock_openai_port}", "dialect": "openai"}
        providers["mock-anthropic"] = {"base_url": f"http://127.0.0.1:{mock_anthropic_port}", "dialect": "anthropic"}
        ladders["mock-pass"] = [{"provider": "mock-openai"}, {"provider": "mock-anthropic", "model": ANTHROPIC_MODEL}]
        ladders["mock-xlat"] = [{"provider": "mock-anthropic", "model": ANTHROPIC_MODEL}, {"provider": "mock-openai"}]
        models += [
            {"match": MODELS["mock-pass"], "ladder": "mock-pass"},
            {"match": MODELS["mock-xlat"], "ladder": "mock-xlat"},
        ]
    return {
        "version": "bench-1",
        "providers": providers,
        "ladders": ladders,
        "models": models,
        "passthrough": {"openai": "fast-openai", "anthropic": "fast-anthropic"},
    }
