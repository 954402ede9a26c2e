"""The mock providers, over real HTTP on 127.0.0.1, as aiohttp and the official SDKs see them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
import pytest_asyncio

from extproc.demo import mock_provider
from extproc.demo.mock_provider import DEFAULT_TOKENS, MockFleet, MockProvider, parse_mode
from tests.tlsca import make_test_ca

INTERVAL = 0.002
USER: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
]


def words(name: str, model: str, count: int = DEFAULT_TOKENS) -> str:
    return f"Hello from {name} ({model}): " + " ".join(f"w{i}" for i in range(1, count + 1))


@pytest_asyncio.fixture
async def openai_mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider("primary", "openai", token_interval=INTERVAL)
    await provider.start()
    yield provider
    await provider.stop()


@pytest_asyncio.fixture
async def anthropic_mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider("Backup", "anthropic", token_interval=INTERVAL)
    await provider.start()
    yield provider
    await provider.stop()


@pytest_asyncio.fixture
async def openai_client(openai_mock: MockProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=openai_mock.url + "/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def anthropic_client(anthropic_mock: MockProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=anthropic_mock.url, api_key="x", max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "messages": USER, **extra}


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 64, "messages": USER, **extra}


async def post(
    http: aiohttp.ClientSession, provider: MockProvider, body: Any, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    path = "/v1/chat/completions" if provider.dialect == "openai" else "/v1/messages"
    async with http.post(provider.url + path, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


def sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for every event in an SSE body."""
    events: list[tuple[str | None, str]] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        events.append((name, "\n".join(data)))
    return events


async def timed_events(
    http: aiohttp.ClientSession, provider: MockProvider, body: Any
) -> tuple[float, list[tuple[float, bytes]]]:
    """Time to headers, and (arrival time, raw chunk) for every chunk of a stream."""
    path = "/v1/chat/completions" if provider.dialect == "openai" else "/v1/messages"
    start = time.monotonic()
    async with http.post(provider.url + path, json=body) as response:
        headers_at = time.monotonic() - start
        chunks = [(time.monotonic() - start, chunk) async for chunk in response.content.iter_any()]
    return headers_at, chunks


# ---------------------------------------------------------------------------------------------
# Mode grammar


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("ok", {"kind": "ok"}),
        ("tokens:3", {"kind": "tokens", "count": 3}),
        ("status:429:1.5", {"kind": "status", "status": 429, "retry_after": "1.5"}),
        ("status:503", {"kind": "status", "status": 503, "retry_after": None}),
        ("delay:0.25", {"kind": "delay", "seconds": 0.25}),
        ("stall:4:2", {"kind": "stall", "count": 4, "seconds": 2.0}),
        ("big:1000", {"kind": "big", "count": 1000}),
        (" reset_after:0 ", {"kind": "reset_after", "count": 0, "text": "reset_after:0"}),
        ("badevent:10", {"kind": "badevent", "count": 10, "numbers": (40.0,)}),
        ("stall_close:20:1.5:30", {"kind": "stall_close", "count": 20, "seconds": 1.5, "numbers": (30.0,)}),
        ("pause:3:2", {"kind": "pause", "count": 3, "seconds": 2.0}),
        ("no_done_n:7", {"kind": "no_done_n", "numbers": (7.0,)}),
    ],
)
def test_parse_mode_reads_the_grammar(text: str, fields: dict[str, Any]) -> None:
    mode = parse_mode(text)
    assert {key: getattr(mode, key) for key in fields} == fields


@pytest.mark.parametrize(
    "text",
    ["", "nope", "ok:1", "tokens", "tokens:-1", "status:200", "status:503:x", "delay:-1",
     "delay:nan", "stall:3", "big:0", "cut:a", "badevent", "badevent:0", "badevent:10:5", "stall_end:3",
     "pause:1:x"],
)  # fmt: skip
def test_parse_mode_rejects_bad_values_and_echoes_them(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text.strip()).replace("(", r"\(")):
        parse_mode(text)


def test_constructor_and_set_mode_validate_eagerly() -> None:
    with pytest.raises(ValueError, match="'bad name'"):
        MockProvider("bad name", "openai")
    with pytest.raises(ValueError, match="'gemini'"):
        MockProvider("p", "gemini")  # type: ignore[arg-type]
    provider = MockProvider("p", "openai")
    with pytest.raises(ValueError, match="'warp:9'"):
        provider.set_mode("warp:9")
    with pytest.raises(ValueError, match="but was 0"):
        provider.set_mode("reset", times=0)
    with pytest.raises(ValueError, match=r"but was -0\.1"):
        MockProvider("p", "openai", jitter=-0.1)
    assert provider.mode == "ok"


def test_jitter_spreads_a_timed_mode_lognormally_around_it_as_the_p95() -> None:
    assert MockProvider("p", "openai")._spread(2.1) == 2.1
    jittery = MockProvider("p", "openai", jitter=0.45, seed=7)
    spread = sorted(jittery._spread(2.1) for _ in range(4000))
    assert spread[int(0.95 * len(spread))] == pytest.approx(2.1, rel=0.05)
    assert spread[len(spread) // 2] == pytest.approx(1.0, rel=0.05)  # p95 / median = e^(1.645 x 0.45)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ["ok", "tokens:0", "json", "empty", "safety", "big:40"])
def test_pre_encoded_answers_match_the_plain_json_rendering(dialect: str, mode: str) -> None:
    wire = mock_provider._WIRES[dialect]
    payload = {"model": 'odd "model" \u00e9\u2028', "messages": [], "max_tokens": 5}
    reply = mock_provider._build_reply("p", parse_mode(mode), payload, 123)
    fast = wire.completion(reply, "id-1", 1700000000)
    assert json.loads(fast) == json.loads(wire._dict_completion(reply, "id-1", 1700000000))


# ---------------------------------------------------------------------------------------------
# OpenAI dialect through the official SDK


async def test_openai_sdk_parses_a_completion_with_known_text_and_usage(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    completion = await openai_client.chat.completions.create(model="gpt-x", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-x"
    choice = completion.choices[0]
    assert choice.message.content == words("primary", "gpt-x")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == DEFAULT_TOKENS
    [recorded] = openai_mock.requests
    assert completion.usage.prompt_tokens == len(recorded.body) // 4
    assert recorded.method == "POST"
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.json is not None and recorded.json["model"] == "gpt-x"


async def test_openai_sdk_streams_one_token_per_chunk_then_usage(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    openai_mock.set_mode("tokens:5")
    stream = await openai_client.chat.completions.create(
        model="gpt-x", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 5
    assert "".join(content) == words("primary", "gpt-x", 5)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert all(c.model == "gpt-x" and c.object == "chat.completion.chunk" for c in chunks)


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    openai_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    status, headers, raw = await post(http, openai_mock, openai_body(stream=True))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [data for _, data in sse(raw)]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(data) for data in events[:-1])
    assert len(events) == 1 + DEFAULT_TOKENS + 1 + 1  # role, tokens, finish, [DONE]


async def test_openai_tool_mode_answers_one_call_to_the_first_tool(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    openai_mock.set_mode("tool")
    completion = await openai_client.chat.completions.create(model="gpt-x", messages=USER, tools=OPENAI_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    stream = await openai_client.chat.completions.create(model="gpt-x", messages=USER, tools=OPENAI_TOOLS, stream=True)
    name, arguments, finish = "", "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        for tool_call in delta.tool_calls or []:
            assert tool_call.index == 0
            if tool_call.function is not None:
                name += tool_call.function.name or ""
                arguments += tool_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


async def test_tool_mode_without_tools_in_the_request_answers_text(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    openai_mock.set_mode("tool")
    completion = await openai_client.chat.completions.create(model="gpt-x", messages=USER)
    assert completion.choices[0].message.content == words("primary", "gpt-x")


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [
        ("status:429:2", openai.RateLimitError, "rate_limit_exceeded"),
        ("status:503", openai.InternalServerError, None),
        ("status:401", openai.AuthenticationError, "invalid_api_key"),
        ("context_overflow", openai.BadRequestError, "context_length_exceeded"),
    ],
)
async def test_openai_error_modes_raise_the_sdk_exception(
    openai_mock: MockProvider,
    openai_client: openai.AsyncOpenAI,
    mode: str,
    error: type[openai.APIStatusError],
    code: str | None,
) -> None:
    openai_mock.set_mode(mode)
    with pytest.raises(error) as caught:
        await openai_client.chat.completions.create(model="gpt-x", messages=USER)
    assert caught.value.code == code
    assert isinstance(caught.value.body, dict) and {"message", "type"} <= caught.value.body.keys()
    if mode == "status:429:2":
        assert caught.value.response.headers["retry-after"] == "2"


async def test_openai_json_empty_safety_and_empty_tool_modes(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    openai_mock.set_mode("json")
    content = (await openai_client.chat.completions.create(model="gpt-x", messages=USER)).choices[0]
    assert json.loads(content.message.content or "") == {"answer": words("primary", "gpt-x"), "provider": "primary"}

    openai_mock.set_mode("empty")
    empty = (await openai_client.chat.completions.create(model="gpt-x", messages=USER)).choices[0]
    assert (empty.message.content, empty.message.tool_calls, empty.finish_reason) == ("", None, "stop")

    openai_mock.set_mode("safety")
    refused = (await openai_client.chat.completions.create(model="gpt-x", messages=USER)).choices[0]
    assert (refused.message.content, refused.finish_reason) == ("", "content_filter")

    openai_mock.set_mode("empty_tool")
    blank = (await openai_client.chat.completions.create(model="gpt-x", messages=USER)).choices[0]
    [call] = blank.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, call.function.arguments, blank.finish_reason) == ("", "", "tool_calls")


async def test_openai_stream_modes_for_json_safety_and_empty_tool(
    openai_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("json")
    _, _, raw = await post(http, openai_mock, openai_body(stream=True))
    chunks = [json.loads(data) for _, data in sse(raw)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert json.loads(text)["provider"] == "primary"

    openai_mock.set_mode("safety")
    _, _, raw = await post(http, openai_mock, openai_body(stream=True))
    chunks = [json.loads(data) for _, data in sse(raw)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"

    openai_mock.set_mode("empty_tool")
    _, _, raw = await post(http, openai_mock, openai_body(stream=True))
    chunks = [json.loads(data) for _, data in sse(raw)[:-1]]
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "", "arguments": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# ---------------------------------------------------------------------------------------------
# Anthropic dialect through the official SDK


async def test_anthropic_sdk_parses_a_message_with_known_text_and_usage(
    anthropic_mock: MockProvider, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    message = await anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=USER)
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-x")
    [block] = message.content
    assert block.type == "text" and block.text == words("Backup", "claude-x")
    assert message.stop_reason == "end_turn"
    [recorded] = anthropic_mock.requests
    assert message.usage.input_tokens == len(recorded.body) // 4
    assert message.usage.output_tokens == DEFAULT_TOKENS
    # anthropic 2.16 sends the key as a bearer token, not x-api-key.
    assert recorded.headers["authorization"] == "Bearer x"


async def test_anthropic_sdk_streams_every_event_type(
    anthropic_mock: MockProvider, anthropic_client: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    anthropic_mock.set_mode("tokens:4")
    async with anthropic_client.messages.stream(model="claude-x", max_tokens=64, messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == 4
    assert "".join(texts) == words("Backup", "claude-x", 4)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4

    _, headers, raw = await post(http, anthropic_mock, anthropic_body(stream=True))
    names = [name for name, _ in sse(raw)]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(json.loads(data)["type"] == name for name, data in sse(raw))
    assert headers["Content-Type"].startswith("text/event-stream")


async def test_anthropic_tool_mode_answers_tool_use_in_json_and_stream(
    anthropic_mock: MockProvider, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    anthropic_mock.set_mode("tool")
    message = await anthropic_client.messages.create(
        model="claude-x", max_tokens=64, messages=USER, tools=ANTHROPIC_TOOLS
    )
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"

    async with anthropic_client.messages.stream(
        model="claude-x", max_tokens=64, messages=USER, tools=ANTHROPIC_TOOLS
    ) as stream:
        final = await stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use"
    assert (block.name, block.input, final.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")


@pytest.mark.parametrize(
    ("mode", "error", "error_type"),
    [
        ("status:529", anthropic.OverloadedError, "overloaded_error"),
        ("status:429:1", anthropic.RateLimitError, "rate_limit_error"),
        ("status:503", anthropic.ServiceUnavailableError, "api_error"),
        ("status:500", anthropic.InternalServerError, "api_error"),
        ("context_overflow", anthropic.BadRequestError, "invalid_request_error"),
    ],
)
async def test_anthropic_error_modes_raise_the_sdk_exception(
    anthropic_mock: MockProvider,
    anthropic_client: anthropic.AsyncAnthropic,
    mode: str,
    error: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    anthropic_mock.set_mode(mode)
    with pytest.raises(error) as caught:
        await anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=USER)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == error_type
    if mode == "context_overflow":
        assert body["error"]["message"] == "prompt is too long: 250000 tokens > 200000 maximum"
    if mode == "status:429:1":
        assert caught.value.response.headers["retry-after"] == "1"


async def test_anthropic_empty_safety_and_empty_tool_modes(
    anthropic_mock: MockProvider, anthropic_client: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    anthropic_mock.set_mode("empty")
    empty = await anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=USER)
    assert (empty.content, empty.stop_reason) == ([], "end_turn")

    anthropic_mock.set_mode("safety")
    refused = await anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=USER)
    assert (refused.content, refused.stop_reason) == ([], "refusal")
    _, _, raw = await post(http, anthropic_mock, anthropic_body(stream=True))
    deltas = [json.loads(data) for name, data in sse(raw) if name == "message_delta"]
    assert deltas[0]["delta"]["stop_reason"] == "refusal"

    anthropic_mock.set_mode("empty_tool")
    blank = await anthropic_client.messages.create(model="claude-x", max_tokens=64, messages=USER)
    [block] = blank.content
    assert block.type == "tool_use"
    assert (block.name, block.input, blank.stop_reason) == ("", {}, "tool_use")


async def test_anthropic_request_without_max_tokens_is_refused_like_the_real_api(
    anthropic_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    status, _, raw = await post(http, anthropic_mock, {"model": "claude-x", "messages": USER})
    assert status == 400
    assert json.loads(raw)["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


# ---------------------------------------------------------------------------------------------
# Modes that do not depend on the dialect


async def test_header_modes_win_over_set_mode_and_do_not_use_up_times(
    openai_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("status:503", times=2)
    status, _, _ = await post(http, openai_mock, openai_body(), **{"x-mock-mode-primary": "tokens:2"})
    assert status == 200
    assert openai_mock.times_left == 2
    status, _, raw = await post(http, openai_mock, openai_body(), **{"x-mock-mode": "tokens:1"})
    assert json.loads(raw)["usage"]["completion_tokens"] == 1
    # The provider-specific header beats the generic one.
    status, _, _ = await post(
        http, openai_mock, openai_body(), **{"x-mock-mode": "status:500", "X-Mock-Mode-Primary": "ok"}
    )
    assert status == 200
    statuses = [(await post(http, openai_mock, openai_body()))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert openai_mock.mode == "ok" and openai_mock.times_left is None


async def test_a_bad_mode_header_is_a_400_in_the_dialect_format(
    anthropic_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    status, _, raw = await post(http, anthropic_mock, anthropic_body(), **{"x-mock-mode": "warp:9"})
    assert status == 400
    body = json.loads(raw)
    assert body["type"] == "error" and "'warp:9'" in body["error"]["message"]


async def test_delay_holds_the_response_headers(openai_mock: MockProvider, http: aiohttp.ClientSession) -> None:
    openai_mock.set_mode("delay:0.2")
    headers_at, _ = await timed_events(http, openai_mock, openai_body(stream=True))
    assert headers_at >= 0.2
    start = time.monotonic()
    status, _, _ = await post(http, openai_mock, openai_body())
    assert status == 200 and time.monotonic() - start >= 0.2


async def test_reset_drops_the_connection_without_a_response_but_is_recorded(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("reset")
    with pytest.raises(openai.APIConnectionError):
        await openai_client.chat.completions.create(model="gpt-x", messages=USER)
    with pytest.raises(aiohttp.ClientError):
        await post(http, openai_mock, openai_body())
    assert len(openai_mock.requests) == 2
    assert all(r.json is not None and r.json["model"] == "gpt-x" for r in openai_mock.requests)


async def test_reset_sends_a_tcp_rst(openai_mock: MockProvider) -> None:
    openai_mock.set_mode("reset")
    reader, writer = await asyncio.open_connection("127.0.0.1", openai_mock.port)
    body = b'{"model":"m","messages":[]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        with pytest.raises(ConnectionResetError):
            await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_invalid_json_and_big_bodies(openai_mock: MockProvider, http: aiohttp.ClientSession) -> None:
    openai_mock.set_mode("invalid_json")
    status, headers, raw = await post(http, openai_mock, openai_body())
    assert status == 200 and headers["Content-Type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)

    openai_mock.set_mode("big:300000")
    status, _, raw = await post(http, openai_mock, openai_body())
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert 300_000 <= len(content) < 300_010

    _, _, raw = await post(http, openai_mock, openai_body(stream=True))
    chunks = [json.loads(data) for _, data in sse(raw)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == content


async def test_unknown_paths_404_in_the_dialect_format_and_health_answers(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("reset")  # neither /health nor a 404 is subject to the mode
    async with http.post(openai_mock.url + "/v1/messages", json={}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    async with http.get(anthropic_mock.url + "/v1/chat/completions") as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"
    for provider in (openai_mock, anthropic_mock):
        async with http.get(provider.url + "/health") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
    assert openai_mock.mode == "reset"
    assert [r.path for r in openai_mock.requests] == ["/v1/messages", "/health"]


async def test_max_recorded_keeps_the_newest_requests_and_counts_them_all(http: aiohttp.ClientSession) -> None:
    provider = MockProvider("capped", "openai", max_recorded=2)
    await provider.start()
    try:
        for n in range(5):
            await post(http, provider, openai_body(), **{"x-n": str(n)})
    finally:
        await provider.stop()
    assert provider.request_count == 5
    assert 2 <= len(provider.requests) < 4
    assert provider.requests[-1].headers["x-n"] == "4"


async def test_garbage_bodies_get_a_400_not_a_crash(openai_mock: MockProvider, http: aiohttp.ClientSession) -> None:
    for garbage in (b"[" * 100_000, b"\xff\xfe", b"", b"[1, 2]"):
        async with http.post(openai_mock.url + "/v1/chat/completions", data=garbage) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert [r.json for r in openai_mock.requests] == [None, None, None, [1, 2]]


async def test_large_request_bodies_are_read_whole(openai_mock: MockProvider, http: aiohttp.ClientSession) -> None:
    prompt = "word " * 600_000  # 3 MB: past aiohttp's default 1 MiB request limit
    body = io.BytesIO(json.dumps(openai_body(messages=[{"role": "user", "content": prompt}])).encode())
    async with http.post(openai_mock.url + "/v1/chat/completions", data=body) as response:
        assert response.status == 200
        raw = await response.read()
    assert json.loads(raw)["usage"]["prompt_tokens"] == len(openai_mock.requests[0].body) // 4 > 750_000


async def test_reset_clears_mode_and_requests(openai_mock: MockProvider, http: aiohttp.ClientSession) -> None:
    openai_mock.set_mode("status:500")
    await post(http, openai_mock, openai_body())
    openai_mock.reset()
    assert (openai_mock.mode, openai_mock.requests) == ("ok", [])
    assert (await post(http, openai_mock, openai_body()))[0] == 200


# ---------------------------------------------------------------------------------------------
# Stream faults


async def test_sse_error_is_a_200_stream_whose_first_event_is_an_error(
    openai_mock: MockProvider,
    anthropic_mock: MockProvider,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    openai_mock.set_mode("sse_error")
    stream = await openai_client.chat.completions.create(model="gpt-x", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="overloaded"):
        async for _ in stream:
            pass
    assert stream.response.status_code == 200

    anthropic_mock.set_mode("sse_error")
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with anthropic_client.messages.stream(model="claude-x", max_tokens=64, messages=USER) as events:
            async for _ in events:
                pass
    assert caught.value.response.status_code == 200
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_first_delay_sends_headers_at_once_and_the_first_event_later(
    anthropic_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    anthropic_mock.set_mode("first_delay:0.3")
    headers_at, chunks = await timed_events(http, anthropic_mock, anthropic_body(stream=True))
    assert headers_at < 0.2
    assert chunks[0][0] >= 0.3
    assert b"event: message_stop" in chunks[-1][1]


async def test_stall_goes_silent_after_n_tokens_then_finishes(
    openai_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("stall:3:0.3")
    _, chunks = await timed_events(http, openai_mock, openai_body(stream=True))
    raw = b"".join(chunk for _, chunk in chunks)
    assert raw.endswith(b"data: [DONE]\n\n")
    gaps = [(b - a, chunk) for (a, _), (b, chunk) in itertools.pairwise(chunks)]
    long_gaps = [chunk for gap, chunk in gaps if gap >= 0.3]
    assert len(long_gaps) == 1
    assert b" w4" in long_gaps[0]
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for _, d in sse(raw)[:-1])
    assert text == words("primary", "gpt-x")


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_cut_ends_the_response_cleanly_without_finish_or_terminator(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession, dialect: str
) -> None:
    provider = openai_mock if dialect == "openai" else anthropic_mock
    body = openai_body(stream=True) if dialect == "openai" else anthropic_body(stream=True)
    provider.set_mode("cut:4")
    status, _, raw = await post(http, provider, body)  # read() succeeds: a clean end
    assert status == 200
    events = sse(raw)
    if dialect == "openai":
        chunks = [json.loads(data) for _, data in events]
        assert "[DONE]" not in raw.decode()
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
        assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 4
    else:
        names = [name for name, _ in events]
        assert names.count("content_block_delta") == 4
        assert {"message_delta", "message_stop", "content_block_stop"}.isdisjoint(names)


async def test_sdks_see_a_cut_stream_as_silently_truncated(
    openai_mock: MockProvider,
    anthropic_mock: MockProvider,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    # The failure Rungway exists to catch: no exception, only a missing finish.
    anthropic_mock.set_mode("cut:2")
    async with anthropic_client.messages.stream(model="claude-x", max_tokens=64, messages=USER) as events:
        final = await events.get_final_message()
    assert final.stop_reason is None
    openai_mock.set_mode("cut:2")
    stream = await openai_client.chat.completions.create(model="gpt-x", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices[0].finish_reason is None for c in chunks)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_no_done_sends_the_finish_but_not_the_terminator(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession, dialect: str
) -> None:
    provider = openai_mock if dialect == "openai" else anthropic_mock
    if dialect == "openai":
        body = openai_body(stream=True, stream_options={"include_usage": True})
    else:
        body = anthropic_body(stream=True)
    provider.set_mode("no_done")
    status, _, raw = await post(http, provider, body)
    assert status == 200
    events = sse(raw)
    if dialect == "openai":
        chunks = [json.loads(data) for _, data in events]
        assert "[DONE]" not in raw.decode()
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] == DEFAULT_TOKENS
    else:
        names = [name for name, _ in events]
        assert names[-1] == "message_delta" and "message_stop" not in names


async def test_reset_after_aborts_the_connection_mid_stream(
    anthropic_mock: MockProvider, anthropic_client: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    anthropic_mock.set_mode("reset_after:3")
    texts: list[str] = []
    # anthropic 2.16 lets a mid-stream transport error out unwrapped (openai wraps it).
    with pytest.raises(httpx2.ReadError):
        async with anthropic_client.messages.stream(model="claude-x", max_tokens=64, messages=USER) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert len(texts) == 3

    path = anthropic_mock.url + "/v1/messages"
    with pytest.raises(aiohttp.ClientError):
        async with http.post(path, json=anthropic_body(stream=True)) as response:
            assert response.status == 200
            await response.read()


async def test_stream_only_modes_on_a_json_request_take_their_nearest_equivalent(
    openai_mock: MockProvider, http: aiohttp.ClientSession
) -> None:
    openai_mock.set_mode("cut:3")
    status, _, raw = await post(http, openai_mock, openai_body())
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    openai_mock.set_mode("reset_after:1")
    with pytest.raises(aiohttp.ClientError):
        await post(http, openai_mock, openai_body())
    openai_mock.set_mode("stall:1:0.2")
    start = time.monotonic()
    assert (await post(http, openai_mock, openai_body()))[0] == 200
    assert time.monotonic() - start >= 0.2
    openai_mock.set_mode("sse_error")
    assert (await post(http, openai_mock, openai_body()))[0] == 200


async def test_stream_events_are_token_interval_apart(http: aiohttp.ClientSession) -> None:
    provider = MockProvider("slow", "openai", token_interval=0.03)
    await provider.start()
    try:
        provider.set_mode("tokens:5")
        _, chunks = await timed_events(http, provider, openai_body(stream=True))
    finally:
        await provider.stop()
    assert chunks[-1][0] - chunks[0][0] >= 4 * 0.03


# ---------------------------------------------------------------------------------------------
# HTTPS, fleet control API, command line


async def test_https_provider_with_the_test_ca(tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path, ["localhost", "mock.test"])
    assert ca.ca_cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    provider = MockProvider("secure", "openai", ssl_context=ca.server_context())
    port = await provider.start()
    try:
        assert provider.url == f"https://127.0.0.1:{port}"
        async with openai.AsyncOpenAI(
            base_url=f"https://localhost:{port}/v1",
            api_key="x",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=ca.client_context()),
        ) as client:
            completion = await client.chat.completions.create(model="gpt-x", messages=USER)
        assert completion.choices[0].message.content == words("secure", "gpt-x")
        async with aiohttp.ClientSession() as session:
            async with session.get(provider.url + "/health", ssl=ca.client_context()) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(provider.url + "/health")  # the system store does not know it
    finally:
        await provider.stop()


async def test_fleet_control_api_steers_and_reports_providers(http: aiohttp.ClientSession) -> None:
    first = MockProvider("alpha", "openai", token_interval=INTERVAL)
    second = MockProvider("beta", "anthropic", token_interval=INTERVAL)
    fleet = MockFleet([first, second])
    await fleet.start()
    try:
        assert first.started and second.started
        control = fleet.url
        async with http.post(control + "/providers/beta/mode", json={"mode": "status:529", "times": 1}) as r:
            assert r.status == 200
            assert (await r.json())["mode"] == "status:529"
        assert (await post(http, second, anthropic_body()))[0] == 529
        assert (await post(http, second, anthropic_body()))[0] == 200
        await post(http, first, openai_body(), **{"x-trace": "t1"})

        async with http.get(control + "/providers") as r:
            assert await r.json() == {
                "alpha": {"dialect": "openai", "url": first.url, "mode": "ok", "count": 1},
                "beta": {"dialect": "anthropic", "url": second.url, "mode": "ok", "count": 2},
            }
        async with http.get(control + "/providers/alpha/requests") as r:
            [recorded] = await r.json()
        assert set(recorded) == {"method", "path", "headers", "json", "at"}
        assert recorded["headers"]["x-trace"] == "t1"
        assert recorded["json"]["model"] == "gpt-x"
        async with http.post(control + "/providers/alpha/reset") as r:
            assert (await r.json())["count"] == 0

        async with http.post(control + "/providers/gamma/mode", json={"mode": "ok"}) as r:
            assert r.status == 404 and "gamma" in (await r.json())["error"]
        async with http.post(control + "/providers/alpha/mode", json={"mode": "warp"}) as r:
            assert r.status == 400 and "'warp'" in (await r.json())["error"]
        async with http.post(control + "/providers/alpha/mode", json={"mode": "ok", "times": "2"}) as r:
            assert r.status == 400
    finally:
        await fleet.stop()
    assert not first.started and not second.started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cli_serves_providers_until_sigterm(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path)
    tls = ca.client_context()
    openai_port, anthropic_port, control_port = free_port(), free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extproc.demo.mock_provider",
        "--provider",
        f"one=openai:{openai_port}",
        "--provider",
        f"two=anthropic:{anthropic_port}",
        "--control-port",
        str(control_port),
        "--token-interval",
        "0.001",
        "--tls-cert",
        str(ca.server_cert),
        "--tls-key",
        str(ca.server_key),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=10))
        assert ready == {
            "control": f"http://127.0.0.1:{control_port}",
            "providers": {"one": f"https://127.0.0.1:{openai_port}", "two": f"https://127.0.0.1:{anthropic_port}"},
        }
        control = ready["control"]
        async with http.post(control + "/providers/two/mode", json={"mode": "status:529"}) as r:
            assert r.status == 200
        two = f"{ready['providers']['two']}/v1/messages"
        async with http.post(two, json=anthropic_body(), ssl=tls) as r:
            assert r.status == 529
            assert (await r.json())["error"]["type"] == "overloaded_error"
        one = f"{ready['providers']['one']}/v1/chat/completions"
        async with http.post(one, json=openai_body(stream=True), ssl=tls) as r:
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        async with http.get(control + "/providers") as r:
            summary = await r.json()
        assert summary["two"]["mode"] == "status:529" and summary["two"]["count"] == 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_endless_line_sends_tokens_then_a_line_that_never_ends(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession, dialect: str
) -> None:
    provider = openai_mock if dialect == "openai" else anthropic_mock
    body = openai_body(stream=True) if dialect == "openai" else anthropic_body(stream=True)
    provider.set_mode("endless_line:2")
    path = "/v1/chat/completions" if dialect == "openai" else "/v1/messages"
    received = b""
    async with http.post(provider.url + path, json=body) as response:
        async for chunk in response.content.iter_any():
            received += chunk
            if len(received) > 1024 * 1024:
                break  # the reader hangs up; the mock stops writing
    head, _, line = received.rpartition(b"\n\n")
    assert line.startswith(b"data: xxxx") and b"\n" not in line
    tokens = [d for _, d in sse(head + b"\n\n") if "w1" in d or "w2" in d]
    assert len(tokens) == 2


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_junk_head_sends_token_less_events_before_a_normal_answer(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession, dialect: str
) -> None:
    provider = openai_mock if dialect == "openai" else anthropic_mock
    body = openai_body(stream=True) if dialect == "openai" else anthropic_body(stream=True)
    provider.set_mode("junk_head:200000")
    status, _, raw = await post(http, provider, body)
    assert status == 200 and len(raw) >= 190_000
    events = sse(raw)
    junk = [d for _, d in events if '"ping"' in d or '"choices":[]' in d]
    assert len(junk) > 1000
    assert events[-1][1] in ("[DONE]", '{"type":"message_stop"}')


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_junk_tail_sends_tokens_then_token_less_events_without_end(
    openai_mock: MockProvider, anthropic_mock: MockProvider, http: aiohttp.ClientSession, dialect: str
) -> None:
    provider = openai_mock if dialect == "openai" else anthropic_mock
    body = openai_body(stream=True) if dialect == "openai" else anthropic_body(stream=True)
    provider.set_mode("junk_tail:2")
    path = "/v1/chat/completions" if dialect == "openai" else "/v1/messages"
    received = b""
    async with http.post(provider.url + path, json=body) as response:
        async for chunk in response.content.iter_any():
            received += chunk
            if len(received) > 1024 * 1024:
                break  # the reader hangs up; the mock stops writing
    events = sse(received.rpartition(b"\n\n")[0] + b"\n\n")
    tokens = [d for _, d in events if "w1" in d or "w2" in d]
    assert len(tokens) == 2
    assert sum('"ping"' in d or '"choices":[]' in d for _, d in events) > 1000
    assert not any(d in ("[DONE]", '{"type":"message_stop"}') for _, d in events)


# ---- credentials ----------------------------------------------------------------------------------

MOCK_KEY = "sk-proj-mockkey0123456789wxyz"


async def test_bad_key_answers_401_echoing_the_key_masked_as_openai_does(openai_mock: MockProvider) -> None:
    openai_mock.set_mode("bad_key")
    async with openai.AsyncOpenAI(base_url=openai_mock.url + "/v1", api_key=MOCK_KEY, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="gpt-x", messages=USER)
    message = caught.value.response.json()["error"]["message"]
    assert message == "Incorrect API key provided: sk-proj-*****************wxyz."


async def test_bad_key_echoes_an_anthropic_key_too(anthropic_mock: MockProvider) -> None:
    async with anthropic.AsyncAnthropic(base_url=anthropic_mock.url, api_key=MOCK_KEY, max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(
                model="claude-x", max_tokens=8, messages=USER, extra_headers={"x-mock-mode": "bad_key"}
            )
    assert caught.value.response.json()["error"]["message"].endswith("wxyz.")


async def test_recorded_keys_stay_in_memory_and_leave_only_as_fingerprints(openai_mock: MockProvider) -> None:
    async with openai.AsyncOpenAI(base_url=openai_mock.url + "/v1", api_key=MOCK_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="gpt-x", messages=USER)
    [recorded] = openai_mock.requests
    assert recorded.headers["authorization"] == f"Bearer {MOCK_KEY}"  # what tests compare
    shown = json.dumps(recorded.to_json())  # what the control API serves
    assert MOCK_KEY not in shown and "wxyz" not in shown
    assert recorded.to_json()["headers"]["authorization"] == mock_provider.key_fingerprint(f"Bearer {MOCK_KEY}")
    assert MOCK_KEY not in repr(recorded)


async def test_logprobs_are_returned_when_asked_for_and_low_when_unsure(
    openai_mock: MockProvider, openai_client: openai.AsyncOpenAI
) -> None:
    plain = await openai_client.chat.completions.create(model="gpt-x", messages=USER)
    assert plain.choices[0].logprobs is None
    sure = await openai_client.chat.completions.create(model="gpt-x", messages=USER, logprobs=True)
    tokens = sure.choices[0].logprobs.content if sure.choices[0].logprobs else None
    assert tokens and len(tokens) == DEFAULT_TOKENS and all(t.logprob == -0.05 for t in tokens)
    assert "".join(t.token for t in tokens) == sure.choices[0].message.content
    openai_mock.set_mode("unsure")
    unsure = await openai_client.chat.completions.create(model="gpt-x", messages=USER, logprobs=True)
    tokens = unsure.choices[0].logprobs.content if unsure.choices[0].logprobs else None
    assert tokens and all(t.logprob == -2.5 for t in tokens)
    assert unsure.choices[0].message.content == sure.choices[0].message.content  # the same words, less sure
