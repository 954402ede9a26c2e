"""quota.exhausted_until: providers' rate-limit headers say when a rung is about to 429."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extproc.routing.quota import HEADERS, exhausted_until

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, FakeClock's default wall time
FLOOR = 1  # HealthSettings.quota_floor_requests' default


def openai(remaining: str, reset: str, kind: str = "requests") -> dict[str, str]:
    return {f"x-ratelimit-remaining-{kind}": remaining, f"x-ratelimit-reset-{kind}": reset}


def anthropic(remaining: str, reset: str, kind: str = "requests") -> dict[str, str]:
    return {f"anthropic-ratelimit-{kind}-remaining": remaining, f"anthropic-ratelimit-{kind}-reset": reset}


# ---- OpenAI: a reset duration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("1m", 60.0),
        ("5ms", 0.005),
        ("1.5h", 5400.0),
        ("2m30s250ms", 150.25),
        (" 2s ", 2.0),
    ],
)
def test_openai_reset_duration_is_added_to_now(reset: str, seconds: float) -> None:
    assert exhausted_until(openai("0", reset), NOW, FLOOR) == pytest.approx(NOW + seconds, abs=1e-3)


def test_minutes_are_not_mistaken_for_milliseconds() -> None:
    assert exhausted_until(openai("0", "500ms"), NOW, FLOOR) == pytest.approx(NOW + 0.5, abs=1e-3)
    assert exhausted_until(openai("0", "500m"), NOW, FLOOR) == pytest.approx(NOW + 30_000)


def test_token_quota_counts_too() -> None:
    assert exhausted_until(openai("0", "20s", kind="tokens"), NOW, FLOOR) == pytest.approx(NOW + 20)


# ---- Anthropic: an RFC 3339 reset time ---------------------------------------------------------


@pytest.mark.parametrize(
    "reset",
    ["2026-01-01T00:00:30Z", "2026-01-01T00:00:30+00:00", "2026-01-01T01:00:30+01:00", "2025-12-31T19:00:30-05:00"],
)
def test_anthropic_reset_time_is_read_with_its_offset(reset: str) -> None:
    assert exhausted_until(anthropic("0", reset), NOW, FLOOR) == pytest.approx(NOW + 30)


def test_anthropic_fractional_seconds_are_kept() -> None:
    assert exhausted_until(anthropic("0", "2026-01-01T00:00:30.5Z"), NOW, FLOOR) == pytest.approx(NOW + 30.5)


def test_anthropic_token_quota_counts_too() -> None:
    headers = anthropic("0", "2026-01-01T00:01:00Z", kind="tokens")
    assert exhausted_until(headers, NOW, FLOOR) == pytest.approx(NOW + 60)


# ---- floors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("remaining", "exhausted"), [("0", True), ("1", True), ("2", False), ("500", False)])
def test_requests_left_at_or_below_the_floor_count_as_exhausted(remaining: str, exhausted: bool) -> None:
    until = exhausted_until(openai(remaining, "10s"), NOW, FLOOR)
    assert until == (pytest.approx(NOW + 10) if exhausted else None)


def test_a_zero_floor_waits_for_the_last_request() -> None:
    assert exhausted_until(openai("1", "10s"), NOW, 0) is None
    assert exhausted_until(openai("0", "10s"), NOW, 0) == pytest.approx(NOW + 10)


def test_tokens_count_as_exhausted_only_at_zero_whatever_the_request_floor() -> None:
    assert exhausted_until(openai("1", "10s", kind="tokens"), NOW, 5) is None
    assert exhausted_until(openai("0", "10s", kind="tokens"), NOW, 5) == pytest.approx(NOW + 10)


def test_fractional_remaining_counts_are_truncated() -> None:
    assert exhausted_until(openai("1.9", "10s"), NOW, FLOOR) == pytest.approx(NOW + 10)


def test_the_latest_reset_of_every_exhausted_quota_wins() -> None:
    headers = {
        **openai("0", "10s"),
        **openai("0", "1m", kind="tokens"),
        **anthropic("0", "2026-01-01T00:00:45Z"),
    }
    assert exhausted_until(headers, NOW, FLOOR) == pytest.approx(NOW + 60)


def test_a_quota_with_requests_left_does_not_count_even_when_another_is_exhausted() -> None:
    headers = {**openai("0", "10s"), **openai("90000", "1h", kind="tokens")}
    assert exhausted_until(headers, NOW, FLOOR) == pytest.approx(NOW + 10)


# ---- nothing to act on ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ratelimit-reset-requests": "10s"},  # no remaining count
        {"x-ratelimit-remaining-requests": "0"},  # no reset
        openai("0", ""),
        openai("0", "0s"),  # already reset
        anthropic("0", "2025-12-31T23:59:59Z"),  # in the past
        anthropic("0", "2026-01-01T00:00:00Z"),  # exactly now
        {"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "10s"},  # Envoy lower-cases
        {"retry-after": "10"},  # not a quota header
    ],
)
def test_no_exhausted_quota_with_a_future_reset_means_none(headers: dict[str, str]) -> None:
    assert exhausted_until(headers, NOW, FLOOR) is None


@pytest.mark.parametrize(
    "reset", ["abc", "30", "1.5", "-1s", "s", "ms", "1x", "1s1h", "tomorrow", "2026-13-01T00:00:00Z"]
)
def test_junk_reset_values_are_ignored(reset: str) -> None:
    assert exhausted_until(openai("0", reset), NOW, FLOOR) is None
    assert exhausted_until(anthropic("0", reset), NOW, FLOOR) is None


@pytest.mark.parametrize("remaining", ["", "abc", "nan", "0x0", "zero"])
def test_junk_remaining_counts_are_ignored(remaining: str) -> None:
    assert exhausted_until(openai(remaining, "10s"), NOW, FLOOR) is None


@pytest.mark.parametrize("remaining", ["inf", "-inf", "Infinity", "1e400"])
def test_infinite_remaining_counts_are_ignored_not_raised(remaining: str) -> None:
    # A provider (or anything in between) that sends "inf" must not crash the attempt filter.
    assert exhausted_until(openai(remaining, "10s"), NOW, FLOOR) is None


def test_header_names_are_the_four_pairs() -> None:
    assert (
        frozenset(
            {
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            }
        )
        == HEADERS
    )


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(HEADERS)), st.text(max_size=24)), st.integers(0, 10))
@example({"x-ratelimit-remaining-requests": "1e999", "x-ratelimit-reset-requests": "1s"}, 1)
@example({"anthropic-ratelimit-tokens-remaining": "-inf", "anthropic-ratelimit-tokens-reset": "1s"}, 0)
def test_any_header_values_give_none_or_a_future_time(headers: dict[str, str], floor: int) -> None:
    until = exhausted_until(headers, NOW, floor)
    assert until is None or until > NOW
