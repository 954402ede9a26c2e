"""Bad input gets a clear error in the client's dialect and loses nothing; the sidecar never
crashes on it."""

from __future__ import annotations

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
