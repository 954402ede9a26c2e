from __future__ import annotations

import json

import pytest

from extproc.core import Failure
from extproc.translate import ProviderError, classify, parse_provider_error, render_error


def openai_error(message: str, type: str | None = None, code: str | None = None) -> ProviderError:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    parsed = parse_provider_error("openai", json.dumps(body).encode())
    assert parsed is not None
    return parsed


def anthropic_error(type: str, message: str) -> ProviderError:
    body = {"type": "error", "error": {"type": type, "message": message}}
    parsed = parse_provider_error("anthropic", json.dumps(body).encode())
    assert parsed is not None
    return parsed


def test_render_error_openai_body_carries_the_reason_as_code() -> None:
    body = json.loads(render_error("openai", Failure.CONTEXT_OVERFLOW, "too long"))
    assert body == {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": None,
            "code": "context_overflow",
            "rungway_reason": "context_overflow",
        }
    }


def test_render_error_anthropic_body_carries_the_reason_beside_the_type() -> None:
    body = json.loads(render_error("anthropic", Failure.RATE_LIMITED, "slow down"))
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down", "rungway_reason": "rate_limited"},
    }


@pytest.mark.parametrize(
    ("failure", "openai_type", "anthropic_type"),
    [
        (Failure.TIMEOUT, "timeout", "timeout_error"),
        (Failure.BUDGET_EXCEEDED, "insufficient_quota", "rate_limit_error"),
        (Failure.SAFETY_BLOCK, "invalid_request_error", "invalid_request_error"),
        (Failure.CLIENT_ERROR, "invalid_request_error", "invalid_request_error"),
        (Failure.SERVER_ERROR, "server_error", "api_error"),
        (Failure.SCHEMA_ERROR, "server_error", "api_error"),
        (Failure.ACCESS_DENIED, "server_error", "api_error"),
    ],
)
def test_render_error_uses_the_providers_own_type_strings(
    failure: Failure, openai_type: str, anthropic_type: str
) -> None:
    assert json.loads(render_error("openai", failure, "m"))["error"]["type"] == openai_type
    assert json.loads(render_error("anthropic", failure, "m"))["error"]["type"] == anthropic_type


def test_render_error_refuses_an_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="'gemini'"):
        render_error("gemini", Failure.TIMEOUT, "m")


def test_parse_provider_error_reads_both_official_shapes() -> None:
    assert openai_error("bad", "invalid_request_error", "context_length_exceeded") == ProviderError(
        type="invalid_request_error", code="context_length_exceeded", message="bad"
    )
    assert anthropic_error("overloaded_error", "Overloaded") == ProviderError(
        type="overloaded_error", code=None, message="Overloaded"
    )


def test_parse_provider_error_reads_the_shapes_of_compatible_servers() -> None:
    vllm = b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}'
    assert parse_provider_error("openai", vllm) == ProviderError("BadRequestError", "400", "too long")
    assert parse_provider_error("openai", b'{"error": "plain"}') == ProviderError(None, None, "plain")


@pytest.mark.parametrize("body", [b"", b"<html>502</html>", b"[1]", b'{"ok": true}', b"\xff"])
def test_parse_provider_error_gives_none_for_bodies_without_an_error(body: bytes) -> None:
    assert parse_provider_error("openai", body) is None


@pytest.mark.parametrize("status", [200, 201, 204])
def test_classify_success_is_not_a_failure(status: int) -> None:
    assert classify("openai", status, None) is None


@pytest.mark.parametrize(
    ("dialect", "status", "error", "expected"),
    [
        ("openai", 408, None, Failure.TIMEOUT),
        ("openai", 504, None, Failure.TIMEOUT),
        ("anthropic", 504, anthropic_error("timeout_error", "t"), Failure.TIMEOUT),
        ("openai", 429, openai_error("slow", "requests", "rate_limit_exceeded"), Failure.RATE_LIMITED),
        ("openai", 429, openai_error("quota", "insufficient_quota", "insufficient_quota"), Failure.BUDGET_EXCEEDED),
        ("anthropic", 429, anthropic_error("rate_limit_error", "slow"), Failure.RATE_LIMITED),
        ("openai", 500, None, Failure.SERVER_ERROR),
        ("openai", 503, openai_error("down", "server_error"), Failure.SERVER_ERROR),
        ("anthropic", 529, anthropic_error("overloaded_error", "Overloaded"), Failure.SERVER_ERROR),
        ("openai", 401, openai_error("key", "invalid_request_error", "invalid_api_key"), Failure.ACCESS_DENIED),
        ("anthropic", 403, anthropic_error("permission_error", "no"), Failure.ACCESS_DENIED),
        ("anthropic", 413, anthropic_error("request_too_large", "big"), Failure.CLIENT_ERROR),
        (
            "openai",
            400,
            openai_error("x", "invalid_request_error", "context_length_exceeded"),
            Failure.CONTEXT_OVERFLOW,
        ),
        ("openai", 400, openai_error("This model's maximum context length is 8192 tokens."), Failure.CONTEXT_OVERFLOW),
        (
            "anthropic",
            400,
            anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            Failure.CONTEXT_OVERFLOW,
        ),
        (
            "anthropic",
            400,
            anthropic_error(
                "invalid_request_error", "input length and `max_tokens` exceed context limit: 197626 + 21333 > 200000"
            ),
            Failure.CONTEXT_OVERFLOW,
        ),
        (
            "openai",
            400,
            openai_error("flagged", "invalid_request_error", "content_policy_violation"),
            Failure.SAFETY_BLOCK,
        ),
        ("openai", 400, openai_error("filtered", None, "content_filter"), Failure.SAFETY_BLOCK),
        ("openai", 400, openai_error("bad field", "invalid_request_error"), Failure.CLIENT_ERROR),
        ("openai", 404, openai_error("no model", "invalid_request_error", "model_not_found"), Failure.CLIENT_ERROR),
        ("anthropic", 402, anthropic_error("billing_error", "pay up"), Failure.BUDGET_EXCEEDED),
        (
            "anthropic",
            400,
            anthropic_error("invalid_request_error", "Your credit balance is too low to access the API."),
            Failure.BUDGET_EXCEEDED,
        ),
        ("openai", 400, None, Failure.CLIENT_ERROR),
        ("openai", 302, None, Failure.SERVER_ERROR),
    ],
)
def test_classify_maps_status_and_error_to_the_taxonomy(
    dialect: str, status: int, error: ProviderError | None, expected: Failure
) -> None:
    assert classify(dialect, status, error) is expected
