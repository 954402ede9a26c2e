"""One rule per failure class, enforced by the Envoy mechanics (README, "What a failed try
means"): the same rung once, the next rung at once, or never re-sent. One test per row, through
real Envoy with the official SDKs; every test counts the calls each provider got."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


def calls(fleet: Fleet) -> list[int]:
    return [len(m.requests) for m in (fleet.primary, fleet.secondary, fleet.small)]


def ask(stack: Stack, **extra: Any) -> Any:
    return stack.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, **extra)


# ---- the same rung once -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["status:500", "status:502", "status:503", "reset"])
def test_a_single_transient_failure_gets_the_same_rung_once(clean: Stack, fleet: Fleet, mode: str) -> None:
    fleet.primary.set_mode(mode, times=1)
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
    assert raw.headers["x-rungway-attempts"] == "2"
    assert calls(fleet) == [2, 0, 0]


def test_an_anthropic_529_gets_the_same_rung_once(clean: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("status:529", times=1)
    message = clean.anthropic().messages.with_raw_response.create(model="claude-x", max_tokens=50, messages=HI)
    assert message.headers["x-rungway-served-by"] == "secondary/claude-x"
    assert len(fleet.secondary.requests) == 2 and not fleet.primary.requests


@pytest.mark.parametrize(("mode", "reason"), [("status:503", "server_error"), ("reset", "connect_error")])
def test_a_persistent_transient_failure_moves_on_after_the_second_try(
    clean: Stack, fleet: Fleet, mode: str, reason: str
) -> None:
    fleet.primary.set_mode(mode)
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == reason
    assert raw.headers["x-rungway-attempts"] == "3"
    assert calls(fleet) == [2, 1, 0]


def test_a_429_with_a_short_retry_after_is_waited_out_on_the_same_rung(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:429:1", times=1)
    started = time.monotonic()
    raw = ask(clean)
    assert time.monotonic() - started >= 0.9  # the provider's Retry-After, honoured
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
    assert calls(fleet) == [2, 0, 0]


def test_a_persistent_429_moves_to_the_next_rung(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:429:1")
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "rate_limited"
    assert calls(fleet) == [2, 1, 0]


# ---- the next rung at once ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("status:429:30", "rate_limited"),  # a Retry-After longer than retry_after_max_s
        ("status:429", "rate_limited"),  # none at all
        ("invalid_json", "schema_error"),
        ("empty", "quality_regression"),
        ("empty_tool", "tool_mismatch"),
        ("status:401", "access_denied"),
        ("status:403", "access_denied"),
    ],
)
def test_these_failures_go_to_the_next_rung_at_once(clean: Stack, fleet: Fleet, mode: str, reason: str) -> None:
    fleet.primary.set_mode(mode)
    started = time.monotonic()
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == reason
    assert raw.headers["x-rungway-attempts"] == "2"
    assert calls(fleet) == [1, 1, 0]  # the primary's second slot was skipped, not re-sent
    assert time.monotonic() - started < 2.5  # no backoff worth speaking of for the skip


def test_a_silent_rung_is_never_re_sent(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("delay:10")
    started = time.monotonic()
    raw = ask(clean)
    elapsed = time.monotonic() - started
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "timeout"
    assert calls(fleet) == [1, 1, 0]
    assert 1.9 < elapsed < 5.0  # one 2 s budget, not two


def test_a_stream_without_a_first_token_in_budget_is_never_re_sent(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("first_delay:10")
    started = time.monotonic()
    stream = clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("Hello from secondary")
    assert calls(fleet) == [1, 1, 0]
    assert time.monotonic() - started < 6.0


# ---- never re-sent -------------------------------------------------------------------------------


def test_a_context_overflow_goes_only_to_a_larger_window(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("context_overflow")  # primary 8k: secondary's 200k is larger
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "context_overflow"
    assert calls(fleet) == [1, 1, 0]


def test_a_context_overflow_with_no_larger_window_ahead_is_the_answer(clean: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("context_overflow")  # claude ladder: secondary 200k, then primary 8k
    with pytest.raises(anthropic.BadRequestError) as info:
        clean.anthropic().messages.create(model="claude-x", max_tokens=50, messages=HI)
    assert info.value.response.headers["x-rungway-reason"] == "context_overflow"
    assert len(fleet.secondary.requests) == 1 and not fleet.primary.requests


def test_a_safety_block_is_propagated(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("safety")
    raw = ask(clean)
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
    assert raw.headers["x-rungway-reason"] == "safety_block"
    assert calls(fleet) == [1, 0, 0]


def test_a_client_error_is_never_re_sent(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:400")
    with pytest.raises(openai.BadRequestError):
        clean.openai().chat.completions.create(model="gpt-4o", messages=HI)
    assert calls(fleet) == [1, 0, 0]


# ---- each try's budget ---------------------------------------------------------------------------


def test_each_rung_has_its_own_budget_capped_by_the_request_deadline(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    policy = fleet.policy(tmp_path, route_timeout_s=6)
    # primary: 2 s; secondary: 30 s (its default) but the request's 6 s deadline cuts it at ~4 s.
    fleet.primary.set_mode("delay:10")
    fleet.secondary.set_mode("delay:3")
    with running(policy, env=KEY_ENV) as stack:
        started = time.monotonic()
        raw = ask(stack)
        elapsed = time.monotonic() - started
        assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
        assert 4.5 < elapsed < 6.0  # 2 s on the primary, then the secondary's own 3 s answer
        fleet.secondary.set_mode("delay:10")
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            ask(stack)
        assert 5.5 < time.monotonic() - started < 8.0  # the deadline, not the secondary's 30 s
        assert info.value.status_code == 504
    fleet.reset()
