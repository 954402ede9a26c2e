"""Fast tests of Rungway's pure core: no Envoy process, no sockets, an injected clock.

Builders shared by several test modules live here, because this package holds only its
`__init__` and test modules: policies (a fixed one and a Hypothesis strategy), ext_proc
messages as Envoy sends them, and provider SSE streams.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import json_format, struct_pb2, text_format
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from extproc.core import Capability, Decision, Dialect, FakeClock, Impact, ToolMode
from extproc.core.names import META_DECISION, META_REQUEST
from extproc.filters.wire import ATTRIBUTES_KEY
from extproc.identity import ID_BYTES, SECRET_BYTES, KeyStore, issue
from extproc.policy import Policy, parse_policy
from extproc.routing.ladder import RequestFeatures
from extproc.runtime.metrics import Metrics
from extproc.runtime.sidecar import Sidecar
from extproc.translate import SseEvent

# ---- policies ----------------------------------------------------------------------------------

PRIMARY_KEY = "sk-primary-secret"
SECONDARY_KEY = "sk-ant-secondary-secret"


def policy_data(**overrides: Any) -> dict[str, Any]:
    """An OpenAI primary, an Anthropic second provider over TLS, a small self-hosted model
    without tools or JSON mode; ladders shaped like the end-to-end tests' (tests/conftest.py)."""
    data: dict[str, Any] = {
        "version": "unit-2026.1",
        "clients": {"key_store": "unit-keys.json"},  # make_sidecar holds CLIENT_STORE instead
        "stream_stall_s": 15,
        "stream_finish_grace_s": 1,
        "providers": {
            "primary": {
                "base_url": "http://primary.test:8001",
                "dialect": "openai",
                "credential": {"env": "RW_UNIT_PRIMARY"},
                "allow_plaintext_credential": True,  # a plain-http provider with a key, on purpose
                "context_window": 8000,
                "headers": {"OpenAI-Project": "proj_rungway"},
            },
            "secondary": {
                "base_url": "https://api.secondary.test",
                "dialect": "anthropic",
                "credential": {"env": "RW_UNIT_SECONDARY"},
                "context_window": 200000,
            },
            "small": {
                "base_url": "http://10.0.0.7:8000/v1",
                "dialect": "openai_compatible",
                "capabilities": ["streaming"],
                "context_window": 4000,
            },
        },
        "tasks": {"default": {"min_output_tokens": 1}, "summarizer": {"min_output_tokens": 10}},
        "ladders": {
            "main": [
                {"provider": "primary", "timeout_s": 2},
                {"provider": "secondary", "model": "claude-fallback"},
                {"provider": "small", "model": "small-model", "strip_tools": True},
            ],
            "claude": [
                {"provider": "secondary", "timeout_s": 5},
                {"provider": "primary", "model": "gpt-fallback"},
            ],
            "retry_same": [
                {"provider": "primary", "attempts": 2},
                {"provider": "small", "model": "small-model", "strip_tools": True},
            ],
            "tool_check": [{"provider": "primary"}, {"provider": "small", "model": "small-model"}],
            "summary": [{"provider": "secondary"}, {"provider": "primary", "model": "gpt-summary"}],
        },
        "models": [
            {"match": "gpt-*", "ladder": "main", "tasks": {"summarizer": "summary"}},
            {"match": "claude-*", "ladder": "claude"},
            {"match": "retry-*", "ladder": "retry_same"},
            {"match": "tools-*", "ladder": "tool_check"},
        ],
    }
    data.update(overrides)
    return data


def make_policy(**overrides: Any) -> Policy:
    return parse_policy(policy_data(**overrides))


KEYS = {"primary": SecretStr(PRIMARY_KEY), "secondary": SecretStr(SECONDARY_KEY), "small": None}
# The app's Rungway key (tenant acme), and a second tenant's.
CLIENT_KEY, _ACME = issue("acme", 0.0, bytes(ID_BYTES + SECRET_BYTES))
OTHER_KEY, _BLUE = issue("blue", 0.0, bytes(range(1, ID_BYTES + SECRET_BYTES + 1)))
CLIENT_STORE = KeyStore((_ACME, _BLUE))


def routed(**changes: Any) -> Decision:
    """A Decision as decide makes it for a healthy OpenAI request on the unit policy's ladder
    main, with `changes`."""
    base = Decision(
        policy=make_policy().stamp,
        ladder="main",
        rungs=(0, 1, 2),
        cluster="rw.main.7",
        tries=3,
        tenant="acme",
        task="default",
        impact=Impact.CUSTOMER_FACING,
        dialect=Dialect.OPENAI,
        model="gpt-4o",
        stream=False,
        include_usage=False,
        body_bytes=400,
        skip=None,
        decided_ms=FakeClock().now() * 1000,  # decide's time on the unit tests' clock
    )
    return dataclasses.replace(base, **changes)


def make_sidecar(policy: Policy | None = None, clock: FakeClock | None = None) -> Sidecar:
    """A sidecar with its own metrics registry (never the process-wide default)."""
    sidecar = Sidecar(policy or make_policy(), dict(KEYS), Metrics(CollectorRegistry()), clock or FakeClock())
    sidecar.key_store = CLIENT_STORE
    return sidecar


def sample(sidecar: Sidecar, name: str, **labels: str) -> float:
    """The current value of one counter series of the sidecar's metrics (0 when absent)."""
    for counter in vars(sidecar.metrics).values():
        if not hasattr(counter, "collect"):
            continue
        for metric in counter.collect():
            for s in metric.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
    return 0.0


_URLS = ("http://{n}.test:8000", "https://{n}.test", "http://10.0.0.9:9000/v1", "https://{n}.test/gateway/v1")


@st.composite
def policies(draw: st.DrawFn, max_rungs: int = 4, max_ladders: int = 3) -> Policy:
    """Random valid policies: 1-4 providers of any dialect and capabilities, 1-3 ladders."""
    providers: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 4))):
        name = f"p{i}"
        providers[name] = {
            "base_url": draw(st.sampled_from(_URLS)).format(n=name),
            "dialect": draw(st.sampled_from(list(Dialect))).value,
            "capabilities": sorted(c.value for c in draw(st.sets(st.sampled_from(list(Capability))))),
            "context_window": draw(st.sampled_from([1000, 8000, 128_000, 200_000])),
        }
    rung = st.fixed_dictionaries(
        {
            "provider": st.sampled_from(sorted(providers)),
            "attempts": st.integers(1, 3),
            "timeout_s": st.sampled_from([1.0, 2.5, 30.0]),
            "strip_tools": st.booleans(),
        },
        optional={
            "tier": st.integers(0, 3),
            "model": st.sampled_from(["alt-model", "$requested"]),
            "tool_mode": st.sampled_from([m.value for m in ToolMode]),
        },
    )
    ladders = {
        f"l{j}": draw(st.lists(rung, min_size=1, max_size=max_rungs)) for j in range(draw(st.integers(1, max_ladders)))
    }
    names = sorted(ladders)
    models = [
        {"match": f"model-{j}", "ladder": name, "tasks": {"batch": draw(st.sampled_from(names))}}
        for j, name in enumerate(names)
    ]
    models.append({"match": "model-*", "ladder": draw(st.sampled_from(names))})
    return parse_policy(
        {
            "version": "hypothesis",
            "clients": {"key_store": "unit-keys.json"},
            "max_attempts": draw(st.integers(1, 10)),
            "providers": providers,
            "tasks": {"default": {}, "batch": {}},
            "ladders": ladders,
            "models": models,
            "tools": {
                "write": draw(st.sets(st.sampled_from(["issue_refund", "send_email"]))),
                "write_lowest_tier": draw(st.integers(0, 3)),
                "retrieval": ["search_kb"],  # a retrieval_only rung keeps it
            },
            "context": {"trim": draw(st.booleans())},
            "capability_matrix": draw(
                st.dictionaries(
                    st.sampled_from(["default", "batch"]),
                    st.dictionaries(
                        st.sampled_from(["alt-model", "model-*", "model-0"]),
                        st.sampled_from(["allowed", "forbidden", "degraded_only"]),
                        max_size=2,
                    ),
                    max_size=2,
                )
            ),
        }
    )


@st.composite
def request_features(draw: st.DrawFn, policy: Policy) -> RequestFeatures:
    """Random request features for a policy: mapped models (and one that is not), any shape."""
    models = [route.match.replace("*", "x") for route in policy.models] + ["unmapped"]
    return RequestFeatures(
        dialect=draw(st.sampled_from(list(Dialect))),
        model=draw(st.sampled_from(models)),
        stream=draw(st.booleans()),
        json_mode=draw(st.booleans()),
        max_tokens=draw(st.none() | st.integers(1, 100_000)),
        body_bytes=draw(st.none() | st.integers(0, 1_000_000)),
        tenant="t",
        task=draw(st.sampled_from(["default", "batch"])),
        impact=draw(st.sampled_from(list(Impact))),
        has_tools=draw(st.none() | st.booleans()),
    )


# ---- ext_proc messages, as Envoy sends them ----------------------------------------------------


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def host_metadata_text(ladder: str, rung: int, slot: int = 0) -> str:
    """`xds.upstream_host_metadata` as Envoy sends it: a text-format envoy.config.core.v3.Metadata."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[META_DECISION].CopyFrom(struct({"ladder": ladder, "rung": rung, "slot": slot}))
    return text_format.MessageToString(metadata)


def _header_map(headers: Mapping[str, str]) -> ep.HttpHeaders:
    http = ep.HttpHeaders()
    for key, value in headers.items():
        http.headers.headers.add(key=key, raw_value=value.encode())
    return http


def request_headers(
    headers: Mapping[str, str],
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    attributes: Mapping[str, Any] | None = None,
    end_of_stream: bool = False,
) -> ep.ProcessingRequest:
    request = ep.ProcessingRequest(request_headers=_header_map(headers))
    request.request_headers.end_of_stream = end_of_stream
    for ns, values in (metadata or {}).items():
        request.metadata_context.filter_metadata[ns].CopyFrom(struct(values))
    if attributes is not None:
        request.attributes[ATTRIBUTES_KEY].CopyFrom(struct(attributes))
    return request


def request_body(body: bytes | dict[str, Any], end_of_stream: bool = True) -> ep.ProcessingRequest:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=data, end_of_stream=end_of_stream))


def response_headers(
    status: int, headers: Mapping[str, str] | None = None, end_of_stream: bool = False
) -> ep.ProcessingRequest:
    request = ep.ProcessingRequest(response_headers=_header_map({":status": str(status), **(headers or {})}))
    request.response_headers.end_of_stream = end_of_stream
    return request


def response_body(body: bytes | dict[str, Any], end_of_stream: bool = True) -> ep.ProcessingRequest:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=data, end_of_stream=end_of_stream))


def response_trailers() -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_trailers=ep.HttpTrailers())


def decide_fields(**fields: Any) -> dict[str, Any]:
    """What json_to_metadata writes in the 'rungway.req' namespace for a request body."""
    return {META_REQUEST: fields}


# ---- reading ProcessingResponses --------------------------------------------------------------


def common_of(response: ep.ProcessingResponse) -> ep.CommonResponse:
    kind = response.WhichOneof("response")
    assert kind in ("request_headers", "request_body", "response_headers", "response_body"), kind
    common: ep.CommonResponse = getattr(response, kind).response
    return common


def set_headers(response: ep.ProcessingResponse) -> dict[str, str]:
    mutation = common_of(response).header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def removed_headers(response: ep.ProcessingResponse) -> list[str]:
    return list(common_of(response).header_mutation.remove_headers)


def body_of(response: ep.ProcessingResponse) -> bytes | None:
    common = common_of(response)
    if not common.HasField("body_mutation"):
        return None
    mutation = common.body_mutation
    if mutation.WhichOneof("mutation") == "streamed_response":
        data: bytes = mutation.streamed_response.body
        return data
    body: bytes = mutation.body
    return body


def dynamic_metadata(response: ep.ProcessingResponse, ns: str) -> dict[str, Any]:
    values = json_format.MessageToDict(response.dynamic_metadata)
    found: dict[str, Any] = values.get(ns, {})
    return found


def immediate_headers(response: ep.ProcessingResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in response.immediate_response.headers.set_headers}


# ---- provider SSE streams ---------------------------------------------------------------------


def sse(events: Iterable[tuple[str | None, dict[str, Any] | str]]) -> bytes:
    return b"".join(SseEvent(d if isinstance(d, str) else json.dumps(d), name).encode() for name, d in events)


def openai_events(
    texts: Iterable[str],
    *,
    finish: str | None = "stop",
    usage: bool = True,
    done: bool = True,
    model: str = "gpt-4o",
) -> list[tuple[str | None, dict[str, Any] | str]]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> tuple[str | None, dict[str, Any]]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return None, {
            "id": "chatcmpl-p",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [choice],
        }

    events: list[tuple[str | None, dict[str, Any] | str]] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text}) for text in texts]
    if finish is not None:
        events.append(chunk({}, finish))
    if usage:
        counts = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        events.append(
            (
                None,
                {
                    "id": "chatcmpl-p",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": counts,
                },
            )
        )
    if done:
        events.append((None, "[DONE]"))
    return events


def anthropic_events(
    texts: Iterable[str],
    *,
    stop_reason: str | None = "end_turn",
    stop: bool = True,
    model: str = "claude-fallback",
) -> list[tuple[str | None, dict[str, Any] | str]]:
    message: dict[str, Any] = {
        "id": "msg_p",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
        for t in texts
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if stop_reason is not None:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 7},
        }
        events.append(("message_delta", delta))
    if stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return events


OPENAI_ERROR_EVENT: tuple[str | None, dict[str, Any]] = (
    None,
    {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
)
ANTHROPIC_ERROR_EVENT: tuple[str | None, dict[str, Any]] = (
    "error",
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
)
