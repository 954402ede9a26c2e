"""Bad input gets a clear error in the client's dialect and loses nothing; the sidecar never
crashes on it."""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import pytest

from tests.conftest import Fleet
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not a valid JSON object"),
        (b'{"messages": []}', "'model'"),
        (b"[1, 2, 3]", "'model'"),
        (b"\xff\xfe\x00garbage", "not a valid JSON object"),
        (b"", "'model'"),
    ],
)
def test_malformed_requests_get_a_400_in_the_openai_dialect(clean: Stack, body: bytes, needle: str) -> None:
    response = clean.post("/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert response.headers["x-rungway-reason"] == "client_error"
    assert response.headers["x-rungway-served-by"] == "rungway"


def test_malformed_requests_get_a_400_in_the_anthropic_dialect(clean: Stack) -> None:
    response = clean.post("/v1/messages", b"{oops", headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_refused_clearly(clean: Stack, fleet: Fleet) -> None:
    response = clean.post("/v1/chat/completions", {"model": "mystery-9", "messages": []})
    assert response.status_code == 400
    assert "mystery-9" in response.json()["error"]["message"]
    assert not fleet.primary.requests


def test_a_body_that_cannot_be_translated_is_a_400_not_a_crash(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503", times=1)
    response = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": "not a list"})
    assert response.status_code == 400
    assert response.headers["x-rungway-reason"] == "client_error"
    assert "messages" in response.json()["error"]["message"]
    # The sidecar is still serving.
    ok = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


def test_an_oversized_body_is_a_413_in_the_clients_dialect(clean: Stack) -> None:
    huge = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * (17 * 1024 * 1024) + b'"}]}'
    response = clean.post("/v1/chat/completions", huge)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = clean.post("/v1/messages", huge)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_a_non_json_content_type_is_refused(clean: Stack) -> None:
    response = clean.post("/v1/chat/completions", b"model=gpt-4o", headers={"content-type": "text/plain"})
    assert response.status_code == 400


def sidecar_errors(stack: Stack) -> float:
    total = 0.0
    for line in stack.metrics().splitlines():
        if line.startswith("rungway_sidecar_errors_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


DEEP = (
    b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "metadata": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}"
)
DEEP_TOOLS = (
    b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
    b'"function": {"name": "f", "parameters": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}}]}"
)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b'{"model": "gpt-4o", "max_tokens": "nan", "messages": []}'),
        ("/v1/chat/completions", b'{"model": "gpt-4o", "max_tokens": 1e999, "messages": []}'),
        ("/v1/chat/completions", b'{"model": "gpt-4o", "max_tokens": -5, "messages": []}'),
        ("/v1/messages", b'{"model": "claude-x", "max_tokens": "nan", "messages": []}'),
        ("/v1/chat/completions", DEEP),
        ("/v1/messages", DEEP.replace(b"gpt-4o", b"claude-x")),
        ("/v1/chat/completions", DEEP_TOOLS),
    ],
    ids=[
        "max_tokens_nan",
        "max_tokens_1e999",
        "max_tokens_negative",
        "anthropic_nan",
        "deep",
        "deep_anthropic",
        "deep_tools",
    ],
)
def test_hostile_payloads_are_a_400_in_the_clients_dialect_and_charge_no_rung(
    clean: Stack, fleet: Fleet, path: str, body: bytes
) -> None:
    errors_before = sidecar_errors(clean)
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    response = clean.post(path, body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["x-rungway-reason"] == "client_error"
    parsed = response.json()
    if path == "/v1/messages":
        assert parsed["type"] == "error" and parsed["error"]["type"] == "invalid_request_error"
    else:
        assert parsed["error"]["type"] == "invalid_request_error"
    assert not fleet.primary.requests and not fleet.secondary.requests and not fleet.small.requests
    assert sidecar_errors(clean) == errors_before


def test_a_non_ascii_probe_header_is_refused_not_a_crash(clean: Stack, fleet: Fleet) -> None:
    errors_before = sidecar_errors(clean)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {clean.app_key}".encode()),
        (b"x-rungway-probe", "tökén main 0".encode()),
    ]
    with httpx.Client(timeout=30) as client:
        response = client.post(clean.base_url + "/v1/chat/completions", content=json.dumps(body), headers=headers)
    # A probe's token is its credential: a wrong one is an unknown caller, even with a key.
    assert response.status_code == 401
    assert response.json()["error"]["rungway_reason"] == "unauthenticated"
    assert not fleet.primary.requests
    assert sidecar_errors(clean) == errors_before


def test_a_catastrophic_regex_in_the_clients_schema_is_checked_in_bounded_time(clean: Stack, fleet: Fleet) -> None:
    # A nested quantifier that must fail at the end of a ~60-character answer: exponential time in
    # Python's re. The answer must still come, and the worker must keep serving.
    fleet.primary.set_mode("json")
    evil = r"^([\w\s():-]+)+!$"
    schema = {"type": "object", "properties": {"answer": {"type": "string", "pattern": evil}}, "required": ["answer"]}
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }
    errors_before = sidecar_errors(clean)
    started = time.monotonic()
    response = clean.post("/v1/chat/completions", body)
    assert time.monotonic() - started < 10
    assert response.status_code in (200, 502)
    assert sidecar_errors(clean) == errors_before
    # The worker still serves at once.
    fleet.primary.set_mode("ok")
    ok = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-envoy-retriable-status-codes", "400"),  # retry family
        ("x-envoy-retry-on", "retriable-4xx,4xx"),
        ("x-envoy-max-retries", "5"),
        ("x-envoy-upstream-rq-timeout-ms", "1"),  # timeout family
        ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
        ("x-envoy-hedge-on-per-try-timeout", "true"),  # hedging
        ("x-envoy-internal", "true"),  # internal markers
        ("x-envoy-original-path", "/v1/admin"),  # forwarding markers a provider or its logs would trust
        ("x-envoy-decorator-operation", "spoofed"),  # tracing
        ("x-envoy-anything-else", "1"),
    ],
)
def test_client_x_envoy_headers_do_not_steer_envoy(clean: Stack, fleet: Fleet, header: str, value: str) -> None:
    fleet.primary.set_mode("status:400", times=1)  # a client error: never retried
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    response = clean.post("/v1/chat/completions", body, headers={header: value})
    assert response.status_code == 400
    assert len(fleet.primary.requests) == 1
    assert not fleet.secondary.requests and not fleet.small.requests
    # Stripped at the listener: nothing the client sent under x-envoy-* reaches a provider.
    assert all(request.headers.get(header) != value for request in fleet.primary.requests)
    ok = clean.post("/v1/chat/completions", body, headers={header: value})
    assert ok.status_code == 200  # a 1 ms timeout from the client is not Envoy's either
