"""Streams through real Envoy: chunk-by-chunk delivery, fallback before the first token, and
honest endings after it (never a stream that looks complete but is truncated)."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.conftest import EnvoyGuard, Fleet
from tests.stack import Stack, body_of

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


def collect(stream: openai.Stream) -> tuple[str, list[str], list[object]]:  # type: ignore[type-arg]
    text, finishes, usages = "", [], []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return text, finishes, usages


def raw_events(
    stack: Stack, body: dict[str, object], path: str = "/v1/chat/completions"
) -> tuple[httpx.Response, list[str]]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", stack.base_url + path, json=body, headers={"authorization": f"Bearer {stack.app_key}"}
        ) as response,
    ):
        data = b"".join(response.iter_bytes())
    return response, [e for e in data.decode().split("\n\n") if e.strip()]


def test_a_healthy_stream_passes_through_chunk_by_chunk(clean: Stack, fleet: Fleet) -> None:
    with clean.openai().chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True}
    ) as raw:
        assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
        assert raw.headers["x-rungway-degraded"] == "false"
        arrivals = []
        text = ""
        for chunk in raw.parse():
            arrivals.append(time.monotonic())
            for choice in chunk.choices:
                text += choice.delta.content or ""
    assert text.startswith("Hello from primary (gpt-4o)") and text.rstrip().endswith("w12")
    # One token per event, 10 ms apart at the mock: the client sees them spread out, not in one burst.
    assert arrivals[-1] - arrivals[0] > 0.05


def test_usage_and_done_arrive(clean: Stack) -> None:
    response, events = raw_events(
        clean, {"model": "gpt-4o", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("mode", "reason"), [("sse_error", "server_error"), ("first_delay:5", "timeout"), ("status:503", "server_error")]
)
def test_a_stream_that_fails_before_its_first_token_falls_back(
    clean: Stack, fleet: Fleet, mode: str, reason: str
) -> None:
    fleet.primary.set_mode(mode)
    with clean.openai().chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HI, stream=True
    ) as raw:
        assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
        assert raw.headers["x-rungway-reason"] == reason
        text, finishes, _ = collect(raw.parse())
    # Anthropic's stream translated into OpenAI chunks.
    assert text.startswith("Hello from secondary (claude-fallback)")
    assert finishes == ["stop"]


def test_a_cut_after_the_first_token_ends_with_an_error_event_not_a_silent_truncation(
    clean: Stack, fleet: Fleet
) -> None:
    fleet.primary.set_mode("cut:4")
    stream = clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    assert text  # the first tokens arrived before the cut
    assert "stream" in str(info.value.message).lower()
    _response, events = raw_events(clean, {"model": "gpt-4o", "messages": HI, "stream": True})
    assert "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "stream_interrupted"


def test_a_stall_after_the_first_token_is_ended_by_the_watchdog(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("stall:3:20")
    started = time.monotonic()
    stream = clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    # The policy's stream_stall_s is 1.5 s; the provider would have stayed silent for 20 s.
    assert time.monotonic() - started < 6


def test_a_stream_missing_done_is_finalised_with_usage(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("no_done")
    _response, events = raw_events(
        clean, {"model": "gpt-4o", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "data: [DONE]"
    assert any('"usage"' in e for e in events)
    fleet.primary.set_mode("no_done")
    _text, finishes, usages = collect(
        clean.openai().chat.completions.create(
            model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert finishes == ["stop"] and len(usages) == 1


def test_a_stream_whose_terminal_marker_hangs_is_finalised_promptly(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("finish_hang:20")
    started = time.monotonic()
    body = {"model": "gpt-4o", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    data, done_at = b"", None
    # The finalised tail reaches the client at once, but the HTTP response may not end before the
    # provider's does (Envoy 1.40 crashes when an upstream filter ends it early): a provider that
    # stays open is reset through Envoy after stream_abandon_s (1 s here).
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            clean.base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {clean.app_key}"},
        ) as response,
    ):
        for piece in response.iter_bytes():
            data += piece
            if done_at is None and b"data: [DONE]\n\n" in data:
                done_at = time.monotonic()
    events = [e for e in data.decode().split("\n\n") if e.strip()]
    # The policy's stream_finish_grace_s is 0.5 s; the provider would send [DONE] after 20 s.
    assert done_at is not None and done_at - started < 5
    assert time.monotonic() - done_at < 5
    assert events[-1] == "data: [DONE]" and '"usage"' in events[-2]
    assert events.count("data: [DONE]") == 1


def test_a_broken_event_mid_stream_is_skipped_and_the_answer_completes(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("badevent:5:20")
    text, finishes, _ = collect(clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    assert text.startswith("Hello from primary (gpt-4o)") and text.endswith(" w20")
    assert finishes == ["stop"]


@pytest.mark.parametrize("mode", ["stall_close:4:3:20", "stall_end:4:3:20", "stall_reset:4:3:20", "pause:4:3:20"])
def test_a_stall_ended_by_the_watchdog_survives_whatever_the_provider_does_next(
    clean: Stack, fleet: Fleet, mode: str
) -> None:
    # The watchdog (1.5 s) fires while the provider is still open; 3 s in, the provider closes,
    # ends, resets or resumes. Envoy 1.40 used to crash on each (use after free).
    fleet.primary.set_mode(mode)
    with pytest.raises(openai.APIError, match="stopped sending"):
        for _ in clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True):
            pass
    time.sleep(2.0)  # let the provider act after the client is done


def test_a_reset_after_the_first_token_is_an_error_for_the_client(
    clean: Stack, fleet: Fleet, envoy_guard: EnvoyGuard
) -> None:
    fleet.primary.set_mode("reset_after:3")
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in clean.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True):
            pass


def test_anthropic_stream_same_dialect_and_translated(clean: Stack, fleet: Fleet) -> None:
    client = clean.anthropic()
    with client.messages.stream(model="claude-sonnet", max_tokens=100, messages=HI) as stream:
        message = stream.get_final_message()
    assert message.content[0].text.startswith("Hello from secondary (claude-sonnet)")  # type: ignore[union-attr]
    fleet.secondary.set_mode("sse_error")
    with client.messages.stream(model="claude-sonnet", max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text.startswith("Hello from primary (gpt-fallback)")
    assert message.model == "gpt-fallback" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    sent = body_of(fleet.primary.requests[-1])
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_anthropic_stream_cut_raises_in_the_sdk(clean: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("cut:3")
    with (
        pytest.raises(anthropic.APIError),
        clean.anthropic().messages.stream(model="claude-sonnet", max_tokens=100, messages=HI) as stream,
    ):
        for _ in stream.text_stream:
            pass
