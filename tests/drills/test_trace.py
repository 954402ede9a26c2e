from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from extproc.drills import Trace, error_message, read_answer, rungway_flags


def _openai_chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_a_whole_openai_answer_gives_text_and_usage() -> None:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello w1"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }
    answer = read_answer("openai", False, json.dumps(body).encode())
    assert (answer.text, answer.input_tokens, answer.output_tokens, answer.problem) == ("Hello w1", 7, 2, None)


def test_a_whole_anthropic_tool_answer_gives_the_call_and_its_arguments() -> None:
    body = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 9, "output_tokens": 3},
    }
    answer = read_answer("anthropic", False, json.dumps(body).encode())
    assert answer.tool_calls == (("get_weather", {"city": "Paris"}),)
    assert (answer.input_tokens, answer.output_tokens) == (9, 3)


def test_an_openai_stream_is_put_back_together() -> None:
    stream = (
        _openai_chunk({"role": "assistant", "content": "Hel"})
        + _openai_chunk({"content": "lo"})
        + _openai_chunk({}, "stop")
        + b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n'
        + b"data: [DONE]\n\n"
    )
    answer = read_answer("openai", True, stream)
    assert (answer.text, answer.output_tokens, answer.problem) == ("Hello", 2, None)


def test_a_stream_without_its_end_is_a_problem() -> None:
    answer = read_answer("openai", True, _openai_chunk({"content": "Hel"}))
    assert answer.text == "Hel" and answer.problem == "the stream ended without its end event"


def test_a_stream_carrying_an_error_is_a_problem() -> None:
    answer = read_answer("openai", True, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    assert answer.problem is not None and "overloaded" in answer.problem


def test_an_anthropic_stream_with_a_tool_call_is_put_back_together() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 5, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    stream = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
    answer = read_answer("anthropic", True, stream)
    assert answer.tool_calls == (("get_weather", {"city": "Paris"}),)
    assert answer.problem is None and answer.output_tokens == 2


@given(body=st.binary(max_size=300), dialect=st.sampled_from(["openai", "anthropic"]), stream=st.booleans())
def test_reading_any_bytes_never_raises(body: bytes, dialect: str, stream: bool) -> None:
    read_answer(dialect, stream, body)
    error_message(body)


def test_an_error_body_gives_its_message_in_either_dialect() -> None:
    assert error_message(b'{"error": {"message": "no rung", "type": "x"}}') == "no rung"
    assert error_message(b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}') == "busy"
    assert error_message(b"<html>") == "<html>"


def test_the_flags_are_read_from_the_x_rungway_headers() -> None:
    flags = rungway_flags({"X-Rungway-Tier": "1", "X-Rungway-Degraded": "true", "X-Rungway-Attempts": "3", "Date": "x"})
    trace = Trace(200, flags, read_answer("openai", False, b"{}"), 0.5)
    assert (trace.tier, trace.degraded, trace.attempts, trace.served_by) == (1, True, 3, None)
    assert Trace(503, {"x-rungway-tier": "none"}, trace.answer, 0.1).tier is None
