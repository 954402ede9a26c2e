"""Providers that would make the sidecar buffer without bound, through real Envoy: an endless SSE
line, megabytes of token-less events before the first token. Each ends its try as a malformed
stream (schema_error) — a hop before the first token, an in-band error after it — and never
crashes Envoy."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import httpx2 as httpx
import openai
import pytest

from bench.procs import envoy_admin
from tests.conftest import Fleet
from tests.e2e.test_streaming import collect
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
    stream.close()
    assert text == "Hello from primary (gpt-4o): w1 w2 w3"
    fleet.primary.set_mode("endless_line:3")
    events = events_until_reset(clean)
    assert "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "schema_error"
    assert_providers_let_go(clean)


def events_until_reset(stack: Stack) -> list[str]:
    """A raw client's SSE events: what arrived before the response ended, cleanly or by a reset
    (a provider that keeps sending after the client's last event is reset through Envoy)."""
    data = b""
    body = {"model": "gpt-4o", "messages": HI, "stream": True}
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            stack.base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {stack.app_key}"},
        ) as response,
    ):
        assert response.status_code == 200
        with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
            for piece in response.iter_bytes():
                data += piece
    return [e for e in data.decode().split("\n\n") if e.strip()]


def assert_providers_let_go(stack: Stack, within_s: float = 5.0) -> None:
    """No request to a provider is left open in Envoy: a flooding provider is reset in bounded
    time, not pinned until it gives up."""
    deadline = time.monotonic() + within_s
    active = ["?"]
    while time.monotonic() < deadline:
        stats = envoy_admin(stack.envoy_admin_socket, "/stats?filter=upstream_rq_active$").text
        active = [line for line in stats.splitlines() if not line.endswith(": 0") and "extproc" not in line]
        if not active:
            return
        time.sleep(0.1)
    raise AssertionError(f"requests still open after {within_s}s: {active}")


@pytest.mark.parametrize("mode", ["endless_line:3", "junk_tail:3"])
def test_providers_flooding_after_the_first_token_are_cut_off_again_and_again_without_crashing_envoy(
    clean: Stack, fleet: Fleet, mode: str
) -> None:
    """Envoy 1.40 regression: in FULL_DUPLEX_STREAMED every byte a provider sends crosses to the
    sidecar, and once the ext_proc stream passed its write watermark, a try torn down or just
    started (UpstreamCodecFilter's watermark callback on a null upstream) crashed Envoy. Several
    floods overlap here, with a new try starting while others are being cut off."""
    fleet.primary.set_mode(mode)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(3):
                results.append(events_until_reset(clean))
        except BaseException as exc:  # reported below, with the thread's result
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 9
    for events in results:
        tokens = "".join(
            choice["delta"].get("content") or ""
            for e in events
            if "error" not in (data := json.loads(e.removeprefix("data: ")))
            for choice in data["choices"]
        )
        assert tokens == "Hello from primary (gpt-4o): w1 w2 w3"
        errors_seen = [e for e in events if '"error"' in e]
        assert len(errors_seen) == 1 and events[-1] == errors_seen[0]
        assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "schema_error"
    assert_providers_let_go(clean)
