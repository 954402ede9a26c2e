"""Stream rescue through real Envoy (issue 10): a stream its provider cuts or abandons after the
first token is completed from the next rung, as one well-formed stream in the client's dialect,
with the official SDKs as clients and Envoy's crash check on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import Stack, body_of, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
FULL = "Hello from primary (gpt-4o): " + " ".join(f"w{i}" for i in range(1, 13))
FULL_60 = "Hello from primary (gpt-4o): " + " ".join(f"w{i}" for i in range(1, 61))


@pytest.fixture(scope="module")
def rescuing(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    key_dir = tmp_path_factory.mktemp("rescue")
    policy = fleet.policy(key_dir, tasks={"default": {"min_output_tokens": 1, "rescue": True}})
    policy["providers"]["secondary"]["capabilities"] = ["tools", "json_mode", "streaming", "prefill"]
    policy["stream_stall_s"] = 1.0
    with running(policy, env=KEY_ENV) as stack:
        yield stack


@pytest.fixture
def rescue(fleet: Fleet, rescuing: Stack) -> Iterator[Stack]:
    fleet.reset()
    rescuing.envoy_trouble()
    yield rescuing
    fleet.reset()
    trouble = rescuing.envoy_trouble()
    assert not trouble, f"Envoy reported bugs or crashed: {trouble}"


def openai_stream(stack: Stack, **extra: Any) -> tuple[str, list[str], list[Any], set[str]]:
    text, finishes, usages, ids = "", [], [], set()
    with stack.openai().chat.completions.create(
        model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True}, **extra
    ) as stream:
        for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage is not None:
                usages.append(chunk.usage)
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
    return text, finishes, usages, ids


def test_a_stream_cut_after_40_of_60_tokens_is_completed_by_continuation(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:40:60")
    fleet.secondary.set_mode("tokens:60")  # continues a prefill up to word 60
    started = time.monotonic()
    text, finishes, usages, ids = openai_stream(rescue)
    took = time.monotonic() - started
    assert text == FULL_60  # the rest came from the secondary, continuing the delivered text
    assert finishes == ["stop"] and len(ids) == 1 and len(usages) == 1
    assert usages[0].completion_tokens >= 60
    sent = fleet.secondary.requests[-1]
    assert body_of(sent)["messages"][-1]["role"] == "assistant"  # a prefill: the secondary continues
    assert 'rungway_stream_rescues_total{from_rung="0",ladder="main",outcome="rescued",to_rung="1"}' in rescue.metrics()
    paths = rescue.status()["streams"]["rescues"]
    assert any(p["ladder"] == "main" and (p["from_rung"], p["to_rung"]) == (0, 1) and p["rescued"] >= 1 for p in paths)
    deadline = time.monotonic() + 10
    while True:  # the audit trail: written off the request's path
        records = httpx.get(rescue.admin_url + "/audit", params={"since": "10m"}, timeout=10).json()["records"]
        rescued = [r for r in records if r["kind"] == "rescue" and r["detail"].get("outcome") == "rescued"]
        if rescued or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rescued and (rescued[-1]["source"]["rung"], rescued[-1]["target"]["rung"]) == (0, 1)
    print(f"cut rescue: complete in {took:.2f}s")


def test_a_stream_stalled_after_20_of_60_tokens_is_completed(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("stall:20:30:60")
    fleet.secondary.set_mode("tokens:60")
    started = time.monotonic()
    text, finishes, _, ids = openai_stream(rescue)
    took = time.monotonic() - started
    assert text == FULL_60 and finishes == ["stop"] and len(ids) == 1
    assert took < 10  # stall budget 1 s + the rescue, not the provider's 30 s
    print(f"stall rescue: complete in {took:.2f}s")


def test_a_rung_that_refuses_the_prefill_regenerates_and_the_matching_prefix_is_dropped(
    rescue: Stack, fleet: Fleet
) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("mimic:primary:gpt-4o:noprefill")  # 400 to a prefill; the same text anew
    text, finishes, _, ids = openai_stream(rescue)
    assert text == FULL and finishes == ["stop"] and len(ids) == 1
    prefill, regenerate = (body_of(r)["messages"][-1]["role"] for r in fleet.secondary.requests[-2:])
    assert (prefill, regenerate) == ("assistant", "user")


def test_a_regenerated_answer_that_differs_ends_with_one_clean_error(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("noprefill")  # then regenerates its own, different, text
    with pytest.raises(openai.APIError) as caught:
        openai_stream(rescue)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("rungway_reason") == "stream_interrupted"
    assert body.get("rungway_rescue") == "rescue_diverged"


def test_a_rescue_rung_that_fails_never_masks_the_primarys_failure(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("status:500")  # the continuation rung fails before its stream
    with pytest.raises(openai.APIError) as caught:
        openai_stream(rescue)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("rungway_reason") == "stream_interrupted"


def test_a_rescue_rung_that_is_down_ends_with_the_primarys_failure(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("reset")  # the rescue call's connection is reset before any answer
    with pytest.raises(openai.APIError) as caught:
        openai_stream(rescue)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("rungway_reason") == "stream_interrupted"
    assert body.get("rungway_rescue")  # why the rescue did not complete, beside the primary's failure


def test_an_anthropic_client_is_rescued_in_its_own_dialect(rescue: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("cut:6")  # claude-* starts on the secondary; the primary rescues
    fleet.primary.set_mode("mimic:secondary:claude-x")
    text, stops = "", []
    with rescue.anthropic().messages.stream(model="claude-x", max_tokens=200, messages=HI) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            if event.type == "message_delta" and event.delta.stop_reason:
                stops.append(event.delta.stop_reason)
    assert text == "Hello from secondary (claude-x): " + " ".join(f"w{i}" for i in range(1, 13))
    assert stops == ["end_turn"]


def test_rescue_is_off_unless_the_task_class_asks(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    with running(fleet.policy(tmp_path), env=KEY_ENV) as stack:
        fleet.primary.set_mode("cut:8")
        with pytest.raises(openai.APIError):
            openai_stream(stack)
        assert not fleet.secondary.requests


def test_a_slow_rescue_rung_still_completes_the_stream(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("first_delay:0.5")
    text, finishes, _, _ = openai_stream(rescue)
    assert text == FULL and finishes == ["stop"]


def test_a_rescue_rung_that_stalls_ends_with_one_clean_error_in_its_stall_budget(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("cut:8")
    fleet.secondary.set_mode("stall:2:30")
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        openai_stream(rescue)
    assert time.monotonic() - started < 10  # the rescue's own stall budget (1 s), not 30 s
    body = caught.value.body
    assert isinstance(body, dict) and body.get("rungway_rescue") == "rescue_stalled"


def test_a_stream_reset_after_40_of_60_tokens_is_completed(rescue: Stack, fleet: Fleet) -> None:
    # The provider resets its connection mid-stream: the reset shield ends the try cleanly (Envoy
    # alone could only reset the client's stream) and the next rung continues it.
    fleet.primary.set_mode("reset_after:40:60")
    fleet.secondary.set_mode("tokens:60")
    started = time.monotonic()
    text, finishes, usages, ids = openai_stream(rescue)
    took = time.monotonic() - started
    assert text == FULL_60 and finishes == ["stop"] and len(ids) == 1 and len(usages) == 1
    assert body_of(fleet.secondary.requests[-1])["messages"][-1]["role"] == "assistant"
    metrics = rescue.metrics()
    assert 'rungway_stream_resets_total{outcome="shielded",provider="primary"}' in metrics
    assert 'rungway_stream_rescues_total{from_rung="0",ladder="main",outcome="rescued",to_rung="1"}' in metrics
    print(f"reset rescue: complete in {took:.2f}s")


def test_every_reset_after_the_first_token_is_rescued(rescue: Stack, fleet: Fleet) -> None:
    for after in (1, 4, 11):
        fleet.primary.set_mode(f"reset_after:{after}")
        text, finishes, _, ids = openai_stream(rescue)
        assert text == FULL and finishes == ["stop"] and len(ids) == 1, after


def test_an_anthropic_client_reset_mid_stream_is_rescued_across_dialects(rescue: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("reset_after:5")  # claude-* starts on the secondary; the primary rescues
    fleet.primary.set_mode("mimic:secondary:claude-x")
    text, stops = "", []
    with rescue.anthropic().messages.stream(model="claude-x", max_tokens=200, messages=HI) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            if event.type == "message_delta" and event.delta.stop_reason:
                stops.append(event.delta.stop_reason)
    assert text == "Hello from secondary (claude-x): " + " ".join(f"w{i}" for i in range(1, 13))
    assert stops == ["end_turn"]


def test_a_reset_before_the_first_token_still_falls_back_before_the_stream(rescue: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("reset")
    text, finishes, _, _ = openai_stream(rescue)
    assert text.startswith("Hello from secondary") and finishes == ["stop"]
    assert body_of(fleet.secondary.requests[-1])["messages"][-1]["role"] == "user"  # a fallback, no prefill


def test_a_shielded_tries_failures_are_told_apart_as_without_the_shield(fleet: Fleet, tmp_path: Path) -> None:
    # A rescuable stream's tries pass the worker's reset shield and Envoy's rescue listener: the
    # relay's flags (connect failure, the rung's budget) and the provider's own answer (its
    # status, its retry-after) must still read as they do on the direct path.
    fleet.reset()
    policy = fleet.policy(tmp_path, tasks={"default": {"min_output_tokens": 1, "rescue": True}})
    policy["health"] = {"enabled": False, "probe_interval_s": 0}  # every request starts on its primary
    cases = [
        ("dead-x", None, "primary/gpt-after-dead", "connect_error"),  # nothing listens: UF
        ("gpt-4o", "delay:3", "secondary/claude-fallback", "timeout"),  # past the rung's 2 s: UT
        ("gpt-4o", "status:429:30", "secondary/claude-fallback", "rate_limited"),  # a long retry-after
        ("gpt-4o", "status:503", "secondary/claude-fallback", "server_error"),
    ]
    with running(policy, env=KEY_ENV) as stack:
        try:
            for model, mode, served_by, reason in cases:
                fleet.reset()
                if mode is not None:
                    fleet.primary.set_mode(mode)
                with stack.openai().chat.completions.with_streaming_response.create(
                    model=model, messages=HI, stream=True
                ) as raw:
                    text = "".join(choice.delta.content or "" for chunk in raw.parse() for choice in chunk.choices)
                assert (raw.headers["x-rungway-served-by"], raw.headers["x-rungway-reason"]) == (served_by, reason)
                assert text
        finally:
            fleet.reset()
        assert not stack.envoy_trouble()
