"""The official SDKs, over an in-memory transport, accept what the translators and writers produce."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from extproc.core import CLIENT_STATUS, Failure
from extproc.translate import (
    AnthropicStreamReader,
    AnthropicStreamWriter,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    SseEvent,
    SseParser,
    TextDelta,
    anthropic_to_openai,
    openai_to_anthropic,
    render_error,
)

MESSAGES: list[Any] = [{"role": "user", "content": "weather?"}]


def transport(status: int, body: bytes, content_type: str) -> httpx2.Client:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": content_type}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(answer))


def openai_client(status: int, body: bytes, content_type: str = "application/json") -> openai.OpenAI:
    http = transport(status, body, content_type)
    return openai.OpenAI(api_key="k", base_url="http://test/v1", http_client=http, max_retries=0)


def anthropic_client(status: int, body: bytes, content_type: str = "application/json") -> anthropic.Anthropic:
    http = transport(status, body, content_type)
    return anthropic.Anthropic(api_key="k", base_url="http://test", http_client=http, max_retries=0)


def sse(events: Iterable[tuple[str | None, dict[str, Any] | str]]) -> bytes:
    return b"".join(
        SseEvent(data if isinstance(data, str) else json.dumps(data), name).encode() for name, data in events
    )


def anthropic_provider_stream() -> bytes:
    usage = {"input_tokens": 12, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_p",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}

    def delta(index: int, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload}

    return sse(
        [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
            delta(0, {"type": "text_delta", "text": "Let me "}),
            delta(0, {"type": "text_delta", "text": "check."}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool}),
            delta(1, {"type": "input_json_delta", "partial_json": ""}),
            delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Pa'}),
            delta(1, {"type": "input_json_delta", "partial_json": 'ris"}'}),
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 30},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )


def openai_provider_stream() -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return None, {
            "id": "chatcmpl-p",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt",
            "choices": [choice],
        }

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    return sse(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me "}),
            chunk({"content": "check."}),
            chunk(call(0, id="call_1", type="function", function={"name": "get_weather", "arguments": ""})),
            chunk(call(0, function={"arguments": '{"city": "Pa'})),
            chunk(call(0, function={"arguments": 'ris"}'})),
            chunk(call(1, id="call_2", type="function", function={"name": "get_time", "arguments": "{}"})),
            chunk({}, "tool_calls"),
            (
                None,
                {
                    "id": "chatcmpl-p",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "gpt",
                    "choices": [],
                    "usage": usage,
                },
            ),
            (None, "[DONE]"),
        ]
    )


def relay(
    raw: bytes, reader: OpenAIStreamReader | AnthropicStreamReader, writer: OpenAIStreamWriter | AnthropicStreamWriter
) -> bytes:
    return b"".join(writer.write(d) for ev in SseParser().feed(raw) for d in reader.read(ev))


def openai_client_stream() -> bytes:
    writer = OpenAIStreamWriter(id="chatcmpl-r", model="served", created=7, include_usage=True)
    return relay(anthropic_provider_stream(), AnthropicStreamReader(), writer)


def anthropic_client_stream() -> bytes:
    writer = AnthropicStreamWriter(id="msg_r", model="served")
    return relay(openai_provider_stream(), OpenAIStreamReader(), writer)


# --- openai SDK ---


def test_openai_sdk_accumulates_a_stream_translated_from_anthropic() -> None:
    client = openai_client(200, openai_client_stream(), "text/event-stream")
    with client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    assert completion.model == "served"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.name) == ("toolu_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 30)


def test_openai_sdk_reads_every_chunk_of_a_translated_stream() -> None:
    client = openai_client(200, openai_client_stream(), "text/event-stream")
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 42


def test_openai_sdk_raises_on_the_in_band_error_event() -> None:
    writer = OpenAIStreamWriter(id="c", model="served", created=0, include_usage=False)
    raw = writer.write(TextDelta("partial ")) + writer.error(Failure.SERVER_ERROR, "the provider went away")
    client = openai_client(200, raw, "text/event-stream")
    with pytest.raises(openai.APIError, match="the provider went away") as caught:
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert caught.value.code == "server_error"


def test_openai_sdk_raises_on_a_provider_error_relayed_mid_stream() -> None:
    raw = anthropic_provider_stream().split(b"event: content_block_stop")[0]
    raw += sse([("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})])
    writer = OpenAIStreamWriter(id="c", model="served", created=0, include_usage=False)
    client = openai_client(200, relay(raw, AnthropicStreamReader(), writer), "text/event-stream")
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))


def test_openai_sdk_parses_a_response_translated_from_anthropic() -> None:
    message = {
        "id": "msg_p",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    body = openai_to_anthropic.response(message, "served", created=5)
    completion = openai_client(200, json.dumps(body).encode()).chat.completions.create(model="m", messages=MESSAGES)
    assert completion.model == "served"
    assert completion.choices[0].message.content == "Hi"
    assert completion.choices[0].finish_reason == "tool_calls"
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert json.loads(call.function.arguments) == {"a": 1}


@pytest.mark.parametrize("failure", list(Failure))
def test_openai_sdk_reads_the_rungway_reason_from_an_error_body(failure: Failure) -> None:
    body = render_error("openai", failure, "nope")
    client = openai_client(CLIENT_STATUS[failure], body)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == CLIENT_STATUS[failure]
    assert caught.value.code == failure.value
    assert caught.value.body == json.loads(body)["error"]


# --- anthropic SDK ---


def test_anthropic_sdk_accumulates_a_stream_translated_from_openai() -> None:
    client = anthropic_client(200, anthropic_client_stream(), "text/event-stream")
    with client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "Let me check."
    assert message.model == "served"
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    tools = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert tools == [("call_1", "get_weather", {"city": "Paris"}), ("call_2", "get_time", {})]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 30)


def test_anthropic_sdk_reads_every_event_of_a_translated_stream() -> None:
    client = anthropic_client(200, anthropic_client_stream(), "text/event-stream")
    events = list(client.messages.create(model="m", max_tokens=100, messages=MESSAGES, stream=True))
    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"


def test_anthropic_sdk_raises_on_the_error_event() -> None:
    writer = AnthropicStreamWriter(id="msg_r", model="served")
    raw = relay(openai_provider_stream().split(b'data: {"id":"chatcmpl-p"')[0], OpenAIStreamReader(), writer)
    raw += writer.error(Failure.STREAM_INTERRUPTED, "the provider went away")
    client = anthropic_client(200, raw, "text/event-stream")
    with (
        pytest.raises(anthropic.APIStatusError, match="the provider went away"),
        client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream,
    ):
        stream.until_done()


def test_anthropic_sdk_parses_a_response_translated_from_openai() -> None:
    completion = {
        "id": "chatcmpl-p",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    body = anthropic_to_openai.response(completion, "served")
    message = anthropic_client(200, json.dumps(body).encode()).messages.create(
        model="m", max_tokens=10, messages=MESSAGES
    )
    assert message.model == "served"
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.input == {"a": 1}


@pytest.mark.parametrize("failure", list(Failure))
def test_anthropic_sdk_reads_an_error_body(failure: Failure) -> None:
    body = render_error("anthropic", failure, "nope")
    client = anthropic_client(CLIENT_STATUS[failure], body)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=10, messages=MESSAGES)
    assert caught.value.status_code == CLIENT_STATUS[failure]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["rungway_reason"] == failure.value
