from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.core import Failure
from extproc.translate import (
    AnthropicStreamReader,
    AnthropicStreamWriter,
    Delta,
    Done,
    Finish,
    FinishReason,
    MessageStart,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    SseEvent,
    SseParser,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
    classify_stream_error,
)

Reader = OpenAIStreamReader | AnthropicStreamReader
Writer = OpenAIStreamWriter | AnthropicStreamWriter


def read_all(reader: Reader, raw: bytes) -> list[Delta]:
    return [d for ev in SseParser().feed(raw) for d in reader.read(ev)]


def write_all(writer: Writer, deltas: list[Delta]) -> bytes:
    return b"".join(writer.write(d) for d in deltas)


def events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(ev.data) for ev in SseParser().feed(raw) if ev.data != "[DONE]"]


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> SseEvent:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return SseEvent(json.dumps({"id": "c1", "model": "gpt", "choices": [choice]}))


def anthropic_event(payload: dict[str, Any]) -> SseEvent:
    return SseEvent(json.dumps(payload), event=payload["type"])


# --- readers ---


def test_openai_reader_starts_the_message_on_the_first_chunk_only() -> None:
    reader = OpenAIStreamReader()
    assert reader.read(openai_chunk({"role": "assistant", "content": ""})) == [MessageStart(id="c1", model="gpt")]
    assert reader.read(openai_chunk({"content": "hi"})) == [TextDelta("hi")]


def test_openai_reader_numbers_tool_calls_by_order_of_appearance() -> None:
    reader = OpenAIStreamReader()
    reader.read(openai_chunk({}))
    first = {"index": 3, "id": "a", "function": {"name": "f", "arguments": "{"}}
    second = {"index": 5, "id": "b", "function": {"name": "g", "arguments": ""}}
    assert reader.read(openai_chunk({"tool_calls": [first, second]})) == [
        ToolCallStart(0, "a", "f"),
        ToolCallArgs(0, "{"),
        ToolCallStart(1, "b", "g"),
    ]
    more = {"index": 3, "function": {"arguments": "}"}}
    assert reader.read(openai_chunk({"tool_calls": [more]})) == [ToolCallArgs(0, "}")]


def test_openai_reader_follows_tool_calls_without_an_index_by_id() -> None:
    reader = OpenAIStreamReader()
    reader.read(openai_chunk({}))
    start = {"id": "a", "function": {"name": "f", "arguments": "{}"}}
    assert reader.read(openai_chunk({"tool_calls": [start]})) == [
        ToolCallStart(0, "a", "f"),
        ToolCallArgs(0, "{}"),
    ]
    assert reader.read(openai_chunk({"tool_calls": [{"function": {"arguments": " "}}]})) == [ToolCallArgs(0, " ")]
    second = {"id": "b", "function": {"name": "g"}}
    assert reader.read(openai_chunk({"tool_calls": [second]})) == [ToolCallStart(1, "b", "g")]


def test_openai_reader_reads_finish_usage_done_and_errors() -> None:
    reader = OpenAIStreamReader()
    reader.read(openai_chunk({}))
    assert reader.read(openai_chunk({}, "length")) == [Finish(FinishReason.LENGTH)]
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert reader.read(SseEvent(json.dumps(usage))) == [Usage(3, 4)]
    assert reader.read(SseEvent("[DONE]")) == [Done()]
    error = {"error": {"message": "boom", "type": "server_error"}}
    assert reader.read(SseEvent(json.dumps(error))) == [StreamError("server_error", "boom")]


def test_readers_turn_invalid_json_into_a_stream_error() -> None:
    for reader in (OpenAIStreamReader(), AnthropicStreamReader()):
        (delta,) = reader.read(SseEvent("{not json"))
        assert isinstance(delta, StreamError)


def test_anthropic_reader_numbers_tool_calls_apart_from_text_blocks() -> None:
    reader = AnthropicStreamReader()
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    start = {"type": "content_block_start", "index": 1, "content_block": tool}
    delta = {"type": "input_json_delta", "partial_json": "{}"}
    assert reader.read(anthropic_event(start)) == [ToolCallStart(0, "t", "f")]
    payload = {"type": "content_block_delta", "index": 1, "delta": delta}
    assert reader.read(anthropic_event(payload)) == [ToolCallArgs(0, "{}")]


def test_anthropic_reader_counts_cached_prompt_tokens_as_input() -> None:
    reader = AnthropicStreamReader()
    usage = {"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}
    message = {"id": "m", "model": "claude", "usage": usage}
    assert reader.read(anthropic_event({"type": "message_start", "message": message})) == [MessageStart("m", "claude")]
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
    assert reader.read(anthropic_event(delta)) == [Finish(FinishReason.STOP), Usage(112, 9)]


def test_anthropic_reader_skips_thinking_and_pings() -> None:
    reader = AnthropicStreamReader()
    thinking = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta"}}
    assert reader.read(anthropic_event(thinking)) == []
    assert reader.read(anthropic_event(delta)) == []
    assert reader.read(anthropic_event({"type": "ping"})) == []


# --- writers ---


def test_openai_writer_sends_the_role_once_and_the_usage_chunk_before_done() -> None:
    writer = OpenAIStreamWriter(id="chatcmpl-x", model="served", created=9, include_usage=True)
    raw = write_all(
        writer,
        [
            MessageStart("p", "provider-model"),
            TextDelta("a"),
            TextDelta("b"),
            Finish(FinishReason.STOP),
            Usage(2, 3),
            Done(),
        ],
    )
    chunks = events(raw)
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "a"},
        {"content": "b"},
    ]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert {c["model"] for c in chunks} == {"served"}
    assert raw.endswith(b"data: [DONE]\n\n")


def test_openai_writer_sends_no_usage_chunk_unless_asked() -> None:
    writer = OpenAIStreamWriter(id="c", model="m", created=0, include_usage=False)
    raw = write_all(writer, [TextDelta("a"), Finish(FinishReason.STOP), Usage(1, 1), Done()])
    assert all("usage" not in chunk for chunk in events(raw))


def test_openai_writer_error_ends_the_stream() -> None:
    writer = OpenAIStreamWriter(id="c", model="m", created=0, include_usage=False)
    raw = writer.error(Failure.TIMEOUT, "too slow")
    assert json.loads(raw.removeprefix(b"data: "))["error"]["code"] == "timeout"
    assert writer.write(Done()) == b""


def test_anthropic_writer_holds_the_finish_until_usage_arrives() -> None:
    writer = AnthropicStreamWriter(id="msg_1", model="m")
    assert b"message_start" in writer.write(TextDelta("x"))
    assert writer.write(Finish(FinishReason.LENGTH)) == b""
    out = events(writer.write(Usage(5, 6)))
    assert [e["type"] for e in out] == ["content_block_stop", "message_delta"]
    assert out[1]["delta"]["stop_reason"] == "max_tokens"
    assert out[1]["usage"] == {"input_tokens": 5, "output_tokens": 6}
    assert [e["type"] for e in events(writer.write(Done()))] == ["message_stop"]


def test_anthropic_writer_finishes_on_done_without_usage() -> None:
    writer = AnthropicStreamWriter(id="msg_1", model="m")
    out = events(write_all(writer, [Finish(FinishReason.STOP), Done()]))
    assert [e["type"] for e in out] == ["message_start", "message_delta", "message_stop"]
    assert out[1]["usage"] == {"output_tokens": 0}


def test_anthropic_writer_reports_tool_use_when_a_server_says_stop_after_tool_calls() -> None:
    writer = AnthropicStreamWriter(id="msg_1", model="m")
    out = events(write_all(writer, [ToolCallStart(0, "t", "f"), Finish(FinishReason.STOP), Done()]))
    assert out[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_writer_numbers_blocks_across_text_and_tools() -> None:
    writer = AnthropicStreamWriter(id="msg_1", model="m")
    deltas: list[Delta] = [
        TextDelta("a"),
        ToolCallStart(0, "t0", "f"),
        ToolCallArgs(0, "{}"),
        ToolCallStart(1, "t1", "g"),
        ToolCallArgs(0, ""),
        ToolCallArgs(1, "{}"),
        Done(),
    ]
    out = events(write_all(writer, deltas))
    starts = [e["index"] for e in out if e["type"] == "content_block_start"]
    stops = [e["index"] for e in out if e["type"] == "content_block_stop"]
    json_deltas = [e["index"] for e in out if e["type"] == "content_block_delta"][1:]
    assert starts == stops == [0, 1, 2]
    assert json_deltas == [1, 2]


def test_writers_turn_a_provider_stream_error_into_their_error_event() -> None:
    anthropic_writer = AnthropicStreamWriter(id="msg_1", model="m")
    raw = anthropic_writer.write(StreamError("overloaded_error", "Overloaded"))
    error = SseParser().feed(raw)[-1]
    assert error.event == "error"
    assert json.loads(error.data)["error"] == {
        "type": "api_error",
        "message": "Overloaded",
        "rungway_reason": "server_error",
    }
    openai_writer = OpenAIStreamWriter(id="c", model="m", created=0, include_usage=False)
    raw = openai_writer.write(StreamError("rate_limit_error", "slow down"))
    assert events(raw)[0]["error"]["code"] == "rate_limited"


def test_stream_errors_are_classified_by_their_type() -> None:
    assert classify_stream_error(StreamError("overloaded_error", "")) is Failure.SERVER_ERROR
    assert classify_stream_error(StreamError("timeout_error", "")) is Failure.TIMEOUT
    assert classify_stream_error(StreamError("invalid_event", "")) is Failure.STREAM_INTERRUPTED


def test_writers_escape_a_lone_surrogate_instead_of_raising() -> None:
    writer = OpenAIStreamWriter(id="c", model="m", created=0, include_usage=False)
    raw = writer.write(TextDelta("\ud83d"))
    assert events(raw)[0]["choices"][0]["delta"]["content"] == "\ud83d"


# --- round trips ---


@dataclass
class Summary:
    text: str = ""
    tools: list[list[str]] = field(default_factory=list)
    finish: FinishReason | None = None
    usage: Usage | None = None
    done: bool = False


def summarize(deltas: list[Delta]) -> Summary:
    summary = Summary()
    for d in deltas:
        match d:
            case TextDelta(text=text):
                summary.text += text
            case ToolCallStart(index=index, id=call_id, name=name):
                assert index == len(summary.tools)
                summary.tools.append([call_id, name, ""])
            case ToolCallArgs(index=index, fragment=fragment):
                summary.tools[index][2] += fragment
            case Finish(reason=reason):
                summary.finish = reason
            case Usage():
                summary.usage = d
            case Done():
                summary.done = True
    return summary


# The first draw of full-Unicode text builds Hypothesis's character tables (about a second on a
# fresh checkout), which its too_slow health check would otherwise blame on the test.
lenient = settings(suppress_health_check=[HealthCheck.too_slow])
_texts = st.text(min_size=1, max_size=20)
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@st.composite
def scripts(draw: st.DrawFn) -> list[Delta]:
    deltas: list[Delta] = [MessageStart(draw(_names), draw(_names))]
    tools = 0
    for segment in draw(st.lists(st.booleans(), max_size=6)):
        if segment:
            deltas += [TextDelta(t) for t in draw(st.lists(_texts, min_size=1, max_size=4))]
        else:
            deltas.append(ToolCallStart(tools, draw(_names), draw(_names)))
            deltas += [ToolCallArgs(tools, f) for f in draw(st.lists(_texts, max_size=4))]
            tools += 1
    counts = st.integers(min_value=0, max_value=10**6)
    deltas += [Finish(draw(st.sampled_from(FinishReason))), Usage(draw(counts), draw(counts)), Done()]
    return deltas


@lenient
@given(scripts())
def test_openai_writer_output_reads_back_as_the_same_answer(deltas: list[Delta]) -> None:
    writer = OpenAIStreamWriter(id="chatcmpl-1", model="m", created=1, include_usage=True)
    assert summarize(read_all(OpenAIStreamReader(), write_all(writer, deltas))) == summarize(deltas)


@lenient
@given(scripts())
def test_anthropic_writer_output_reads_back_as_the_same_answer(deltas: list[Delta]) -> None:
    writer = AnthropicStreamWriter(id="msg_1", model="m")
    expected = summarize(deltas)
    if expected.tools and expected.finish is FinishReason.STOP:
        expected.finish = FinishReason.TOOL_CALLS  # see the writer: Anthropic clients need tool_use
    assert summarize(read_all(AnthropicStreamReader(), write_all(writer, deltas))) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
_event_types = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "other",
    ]
)
_event_payloads = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"type": _event_types},
        optional={
            "index": st.integers(-1, 3) | _json,
            "message": _json,
            "content_block": _json,
            "delta": _json,
            "usage": _json,
            "error": _json,
            "choices": _json,
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "id": _json,
            "model": _json,
            "usage": _json,
            "error": _json,
            "choices": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"index": st.just(0) | _json, "delta": _json, "finish_reason": _json}
                )
            ),
        },
    ),
)


@lenient
@given(st.lists(st.tuples(_event_payloads, st.none() | _event_types), max_size=8))
def test_readers_and_writers_never_raise_on_arbitrary_provider_events(
    script: list[tuple[Any, str | None]],
) -> None:
    pairs: list[tuple[Reader, Writer]] = [
        (OpenAIStreamReader(), AnthropicStreamWriter(id="m", model="m")),
        (AnthropicStreamReader(), OpenAIStreamWriter(id="c", model="m", created=0, include_usage=True)),
    ]
    for reader, writer in pairs:
        for payload, name in script:
            for d in reader.read(SseEvent(json.dumps(payload), name)):
                writer.write(d)
