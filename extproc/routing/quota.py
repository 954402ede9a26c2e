"""Quota signals in providers' rate-limit headers (H4): hop before the 429 comes (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

# OpenAI: remaining count + a reset duration like "1s", "6m0s", "120ms", "1h2m3.5s".
# Anthropic: remaining count + an RFC 3339 reset time.
_PAIRS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", "tokens"),
)
HEADERS = frozenset(name for pair in _PAIRS for name in pair[:2])
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?")


def exhausted_until(headers: Mapping[str, str], now_wall: float, floor_requests: int) -> float | None:
    """When the provider's quota has (next to) nothing left: the wall time it resets; else None."""
    until: float | None = None
    for remaining_name, reset_name, kind in _PAIRS:
        remaining = headers.get(remaining_name)
        if remaining is None:
            continue
        try:
            left = int(float(remaining))
        except (ValueError, OverflowError):
            continue
        if left > (floor_requests if kind == "requests" else 0):
            continue
        reset = _reset_at(headers.get(reset_name), now_wall)
        if reset is not None and reset > now_wall:
            until = reset if until is None else max(until, reset)
    return until


def _reset_at(value: str | None, now_wall: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    match = _DURATION.fullmatch(value)
    if match and any(match.groups()):
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s + ms / 1000
        # Nothing resets further ahead than a day; a longer value is a provider's quirk.
        return now_wall + min(seconds, 86_400.0)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
