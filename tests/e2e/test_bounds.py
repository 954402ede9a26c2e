"""Providers that would make the sidecar buffer without bound, through real Envoy: an endless SSE
line, megabytes of token-less events before the first token. Each ends its try as a malformed
stream (schema_error) — a hop before the first token, an in-band error after it — and never
crashes Envoy."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.conftest import Fleet
from tests.e2e.test_streaming import collect, raw_events
from tests.stack import Stack

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("mode", ["endless_line:0", "junk_head:6000000"])
def test_a_provider_flooding_before_its_first_token_hops_to_the_next_rung(
    clean: Stack, fleet: Fleet, mode: str
) -> None:
    fleet.primary.set_mode(mode)
    started = time.monotonic()
    with clean.openai().chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HI, stream=True
    ) as raw:
        assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
        assert raw.headers["x-rungway-reason"] == "schema_error"
        text, finishes, _ = collect(raw.parse())
    assert text.startswith("Hello from secondary (claude-fallback)") and finishes == ["stop"]
    assert time.monotonic() - started < 10
    time.sleep(1.5)  # the flooding provider's side ends (reset or abandoned) while the stack runs


def test_an_endless_line_after_the_first_token_ends_with_an_in_band_error(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("endless_line:3")
    stream = clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    assert text == "Hello from primary (gpt-4o): w1 w2 w3"
    fleet.primary.set_mode("endless_line:3")
    _response, events = raw_events(clean, {"model": "gpt-4o", "messages": HI, "stream": True})
    assert "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "schema_error"
    time.sleep(1.5)
