"""JSON answers through real Envoy with the official SDKs: trips, hops and flags."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from extproc.policy import load_policy
from tests.conftest import KEY_ENV, PRIMARY_KEY, SECONDARY_KEY, SMALL_KEY, EnvoyGuard, Fleet
from tests.stack import Stack, body_of, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


def rungway_headers(headers: object) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-rungway-")}  # type: ignore[attr-defined]


def test_healthy_primary_serves_at_tier_zero(clean: Stack, fleet: Fleet) -> None:
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    completion = raw.parse()
    assert completion.model == "gpt-4o"
    assert (completion.choices[0].message.content or "").startswith("Hello from primary")
    assert rungway_headers(raw.headers) == {
        "x-rungway-served-by": "primary/gpt-4o",
        "x-rungway-tier": "0",
        "x-rungway-degraded": "false",
        "x-rungway-reason": "none",
        "x-rungway-policy-version": load_policy(clean.policy_path).stamp,  # version + content hash
        "x-rungway-attempts": "1",
    }
    sent = fleet.primary.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert sent.path == "/v1/chat/completions"
    assert len(fleet.secondary.requests) == 0


def test_primary_503_is_served_by_second_provider_in_the_clients_dialect(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "claude-fallback"  # the model that actually served
    assert (completion.choices[0].message.content or "").startswith("Hello from secondary (claude-fallback)")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    h = rungway_headers(raw.headers)
    assert h["x-rungway-served-by"] == "secondary/claude-fallback"
    assert (h["x-rungway-tier"], h["x-rungway-degraded"], h["x-rungway-reason"], h["x-rungway-attempts"]) == (
        "1",
        "true",
        "server_error",
        "3",  # a 503 gets the same rung once, then the next rung
    )
    sent = fleet.secondary.requests[-1]
    assert sent.path == "/v1/messages"
    assert body_of(sent)["model"] == "claude-fallback" and body_of(sent)["messages"] == HI
    # The second provider got its own key and nothing of the app's or the primary's.
    assert sent.headers["x-api-key"] == SECONDARY_KEY
    assert "authorization" not in sent.headers
    assert clean.app_key not in str(sent.headers)


def test_two_failing_rungs_walk_to_the_third_with_each_rungs_own_key(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:500")
    fleet.secondary.set_mode("status:529")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().model == "small-model"
    h = rungway_headers(raw.headers)
    assert (h["x-rungway-served-by"], h["x-rungway-tier"], h["x-rungway-attempts"]) == ("small/small-model", "2", "5")
    sent = fleet.small.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {SMALL_KEY}"
    # Headers set for the Anthropic try do not leak into the next one.
    assert "x-api-key" not in sent.headers and "anthropic-version" not in sent.headers
    assert [len(m.requests) for m in (fleet.primary, fleet.secondary, fleet.small)] == [2, 2, 1]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("invalid_json", "schema_error"),
        ("empty", "quality_regression"),
        ("empty_tool", "tool_mismatch"),
        ("status:429:30", "rate_limited"),
        ("status:401", "access_denied"),
    ],
)
def test_a_200_that_breaks_the_contract_or_a_transient_failure_hops(
    clean: Stack, fleet: Fleet, mode: str, reason: str
) -> None:
    fleet.primary.set_mode(mode)
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().model == "claude-fallback"
    assert raw.headers["x-rungway-reason"] == reason
    assert raw.headers["x-rungway-attempts"] == "2"


def test_fewer_tokens_than_the_tasks_minimum_is_a_partial_outage(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("tokens:3")
    raw = clean.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HI, extra_headers={"x-rungway-task": "summarizer"}
    )
    assert raw.headers["x-rungway-reason"] == "quality_regression"
    assert raw.parse().model == "claude-fallback"
    # The same short answer is fine for a task class without that minimum.
    fleet.primary.set_mode("tokens:3")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"


def test_per_try_timeout_moves_to_the_next_rung(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("delay:5")
    started = time.monotonic()
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    elapsed = time.monotonic() - started
    assert raw.parse().model == "claude-fallback"
    assert raw.headers["x-rungway-reason"] == "timeout"
    assert 1.9 < elapsed < 4.5  # the primary's 2 s budget, not its 5 s answer


def test_connection_refused_moves_to_the_next_rung(clean: Stack, fleet: Fleet) -> None:
    raw = clean.openai().chat.completions.with_raw_response.create(model="dead-model", messages=HI)
    assert raw.parse().model == "gpt-after-dead"
    assert raw.headers["x-rungway-reason"] == "connect_error"
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-after-dead"


def test_client_errors_are_never_retried(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:400")
    with pytest.raises(openai.BadRequestError) as info:
        clean.openai().chat.completions.create(model="gpt-4o", messages=HI)
    assert info.value.response.headers["x-rungway-reason"] == "client_error"
    assert len(fleet.primary.requests) == 1
    assert len(fleet.secondary.requests) == 0 and len(fleet.small.requests) == 0


def test_safety_block_is_propagated_not_routed_around(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("safety")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].finish_reason == "content_filter"
    assert raw.headers["x-rungway-reason"] == "safety_block"
    assert len(fleet.secondary.requests) == 0


def test_context_overflow_goes_only_to_a_larger_window(clean: Stack, fleet: Fleet) -> None:
    # primary (8k) overflows; secondary (200k) is larger: hop.
    fleet.primary.set_mode("context_overflow")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.headers["x-rungway-reason"] == "context_overflow"
    assert raw.parse().model == "claude-fallback"


def test_context_overflow_on_the_largest_window_fails_cleanly(clean: Stack, fleet: Fleet) -> None:
    # secondary (200k) overflows; primary (8k) after it is smaller: a clean 400, no hop.
    fleet.secondary.set_mode("context_overflow")
    with pytest.raises(anthropic.BadRequestError) as info:
        clean.anthropic().messages.create(model="claude-sonnet", max_tokens=100, messages=HI)
    assert info.value.response.headers["x-rungway-reason"] == "context_overflow"
    assert "prompt is too long" in str(info.value)
    assert len(fleet.primary.requests) == 0


def test_a_request_too_large_for_a_window_skips_that_rung_before_sending(clean: Stack, fleet: Fleet) -> None:
    big = "word " * 9000  # ~45 KB: over the primary's 8k-token window, under the secondary's
    raw = clean.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": big}]
    )
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "context_overflow"
    assert raw.headers["x-rungway-attempts"] == "1"
    assert len(fleet.primary.requests) == 0


def test_every_rung_failing_ends_in_an_error_in_the_clients_dialect(
    clean: Stack, fleet: Fleet, envoy_guard: EnvoyGuard
) -> None:
    for mock in (fleet.primary, fleet.secondary, fleet.small):
        mock.set_mode("status:503")
    with pytest.raises(openai.InternalServerError) as info:
        clean.openai().chat.completions.create(model="gpt-4o", messages=HI)
    response = info.value.response
    assert response.status_code == 503
    assert response.headers["x-rungway-attempts"] == "5"  # max_attempts tries reached a provider
    assert response.headers["x-rungway-served-by"] == "small/small-model"
    body = response.json()
    assert "error" in body and body["error"]["message"]


def test_anthropic_client_is_served_by_an_openai_rung(clean: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("status:529")
    raw = clean.anthropic().messages.with_raw_response.create(model="claude-sonnet", max_tokens=200, messages=HI)
    message = raw.parse()
    assert message.type == "message" and message.model == "gpt-fallback"
    assert message.content[0].text.startswith("Hello from primary (gpt-fallback)")  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-fallback"
    sent = fleet.primary.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert "x-api-key" not in sent.headers


def test_a_hop_from_a_translated_rung_sends_the_clients_own_body_and_length(fleet: Fleet, tmp_path: Path) -> None:
    # The OpenAI client's first rung speaks Anthropic (its body rewritten: a new, longer
    # content-length); the next speaks OpenAI with the model asked for, so the client's body goes
    # unchanged, with the client's own length (header mutations carry over between tries).
    fleet.reset()
    ladders = {"mixed": [{"provider": "secondary", "model": "claude-first"}, {"provider": "primary"}]}
    policy = fleet.policy(tmp_path, ladders=ladders, models=[{"match": "gpt-*", "ladder": "mixed"}])
    fleet.secondary.set_mode("invalid_json")
    try:
        with running(policy, env=KEY_ENV) as stack:
            raw = stack.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
            assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
            assert (raw.parse().choices[0].message.content or "").endswith(" w12")
            sent = fleet.primary.requests[-1]
            assert int(sent.headers["content-length"]) == len(sent.body)
            assert len(fleet.secondary.requests[-1].body) > len(sent.body)
    finally:
        fleet.reset()


def test_tool_calls_survive_translation_both_ways(clean: Stack, fleet: Fleet) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode("tool")
    completion = clean.openai().chat.completions.create(model="gpt-4o", messages=HI, tools=tools)  # type: ignore[arg-type]
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}' or call.function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    sent = body_of(fleet.secondary.requests[-1])
    assert sent["tools"][0]["name"] == "get_weather" and sent["tools"][0]["input_schema"]["required"] == ["city"]


def test_short_retry_after_is_waited_out_on_the_same_rung(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:429:1", times=1)
    started = time.monotonic()
    raw = clean.openai().chat.completions.with_raw_response.create(model="retry-model", messages=HI)
    elapsed = time.monotonic() - started
    assert raw.headers["x-rungway-served-by"] == "primary/retry-model"
    assert raw.headers["x-rungway-attempts"] == "2"
    assert len(fleet.primary.requests) == 2 and len(fleet.small.requests) == 0
    assert elapsed >= 0.9  # Retry-After: 1 honoured before the second try


def test_long_retry_after_moves_on_without_waiting(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:429:30", times=1)
    started = time.monotonic()
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert time.monotonic() - started < 1.0
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "rate_limited"
