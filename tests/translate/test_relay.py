"""relay.StreamRelay: one provider SSE stream to the client, whole events only, plus the facts the
attempt filter acts on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.core import Dialect, Failure
from extproc.translate import AnthropicStreamReader, OpenAIStreamReader, SseParser, StreamError, TextDelta
from extproc.translate.relay import StreamRelay, stream_failure
from tests.builders import ANTHROPIC_ERROR_EVENT, OPENAI_ERROR_EVENT, anthropic_events, openai_events, sse

MESSAGES: list[Any] = [{"role": "user", "content": "capital of France?"}]
OA, AN = Dialect.OPENAI, Dialect.ANTHROPIC


def make_relay(client: Dialect, provider: Dialect, *, include_usage: bool = True) -> StreamRelay:
    return StreamRelay(
        client,
        provider,
        model="served-model",
        stream_id="chatcmpl-rw1" if client.wire is OA else "msg_rw1",
        created=1_767_225_600,
        include_usage=include_usage,
        prompt_tokens=12,
    )


def provider_stream(provider: Dialect, texts: list[str], **shape: Any) -> bytes:
    return sse(anthropic_events(texts, **shape) if provider.wire is AN else openai_events(texts, **shape))


def started_then_cut(provider: Dialect) -> bytes:
    """A stream whose first token went out, then nothing: no finish, no terminal marker."""
    if provider is AN:
        return provider_stream(AN, ["Par"], stop_reason=None, stop=False)
    return provider_stream(OA, ["Par"], finish=None, usage=False, done=False)


def events_of(data: bytes) -> list[Any]:
    parser = SseParser()
    events = parser.feed(data)
    assert parser.pending == b""
    return [(e.event, e.data) for e in events]


def is_whole_events(piece: bytes) -> bool:
    parser = SseParser()
    parser.feed(piece)
    return parser.pending == b""


# ---- the official SDKs as decoders --------------------------------------------------------------


@contextmanager
def openai_sdk(body: bytes) -> Iterator[openai.OpenAI]:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx2.Client(transport=httpx2.MockTransport(answer)) as http:
        yield openai.OpenAI(api_key="k", base_url="http://rungway.test/v1", http_client=http, max_retries=0)


@contextmanager
def anthropic_sdk(body: bytes) -> Iterator[anthropic.Anthropic]:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx2.Client(transport=httpx2.MockTransport(answer)) as http:
        yield anthropic.Anthropic(api_key="k", base_url="http://rungway.test", http_client=http, max_retries=0)


def openai_text(body: bytes) -> tuple[str, str | None, Any]:
    with openai_sdk(body) as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None)
    usage = next((c.usage for c in chunks if c.usage is not None), None)
    return text, finish, usage


def anthropic_message(body: bytes) -> Any:
    with anthropic_sdk(body) as client, client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
        return stream.get_final_message()


# ---- passthrough and translation ------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [OA, AN, Dialect.OPENAI_COMPATIBLE])
def test_same_dialect_stream_passes_through_byte_for_byte(dialect: Dialect) -> None:
    raw = provider_stream(dialect, ["Par", "is."])
    relay = make_relay(dialect, dialect)
    out = relay.feed(raw) + relay.finish()
    assert out == raw
    assert (relay.started, relay.finished, relay.done, relay.error, relay.closed) == (True, True, True, None, True)


def test_keep_alive_comments_are_not_forwarded() -> None:
    raw = provider_stream(OA, ["Hi"])
    relay = make_relay(OA, OA)
    assert relay.feed(b": keep-alive\n\n" + raw) == raw


def test_openai_client_reads_an_anthropic_stream_through_its_sdk() -> None:
    relay = make_relay(OA, AN)
    out = relay.feed(provider_stream(AN, ["The capital ", "is Paris."])) + relay.finish()
    text, finish, usage = openai_text(out)
    assert (text, finish) == ("The capital is Paris.", "stop")
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 7)


def test_anthropic_client_reads_an_openai_stream_through_its_sdk() -> None:
    relay = make_relay(AN, OA)
    out = relay.feed(provider_stream(OA, ["The capital ", "is Paris."])) + relay.finish()
    message = anthropic_message(out)
    assert [b.text for b in message.content if b.type == "text"] == ["The capital is Paris."]
    assert message.stop_reason == "end_turn"
    assert message.model == "served-model"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 7)


def test_anthropic_client_reads_an_openai_compatible_stream_without_usage_or_done() -> None:
    relay = make_relay(AN, Dialect.OPENAI_COMPATIBLE)
    out = relay.feed(provider_stream(OA, ["Paris."], usage=False, done=False))
    assert relay.finished and not relay.done
    out += relay.finish()
    message = anthropic_message(out)
    assert [b.text for b in message.content if b.type == "text"] == ["Paris."]
    assert message.stop_reason == "end_turn"


# ---- error before the first token ----------------------------------------------------------------


@pytest.mark.parametrize("client", [OA, AN])
@pytest.mark.parametrize(
    ("provider", "error_event"), [(OA, OPENAI_ERROR_EVENT), (AN, ANTHROPIC_ERROR_EVENT)], ids=["openai", "anthropic"]
)
def test_error_before_the_first_token_emits_nothing(client: Dialect, provider: Dialect, error_event: Any) -> None:
    head = anthropic_events([])[:3] if provider is AN else openai_events([])[:1]
    relay = make_relay(client, provider)
    assert relay.feed(sse([*head, error_event])) == b""
    assert not relay.started
    assert relay.error is not None
    assert relay.error.message in ("Overloaded", "The server had an error")


def test_an_empty_text_delta_is_not_a_first_token() -> None:
    relay = make_relay(OA, OA)
    relay.feed(sse(openai_events([""], finish=None, usage=False, done=False)))
    assert not relay.started


def test_a_tool_call_is_a_first_token() -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ]
                },
                "finish_reason": None,
            }
        ],
    }
    relay = make_relay(AN, OA)
    relay.feed(sse([(None, chunk)]))
    assert relay.started


@pytest.mark.parametrize("client", [OA, AN])
def test_a_tool_call_without_a_name_before_any_token_fails_the_try_as_a_tool_mismatch(client: Dialect) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": ""}}]},
                "finish_reason": None,
            }
        ],
    }
    relay = make_relay(client, OA)
    assert relay.feed(sse([(None, chunk)])) == b""
    assert not relay.started and relay.closed
    assert relay.error is not None and stream_failure(relay.error, started=False) is Failure.TOOL_MISMATCH


# ---- error after the first token ------------------------------------------------------------------


def test_same_dialect_error_after_the_first_token_is_relayed_and_closes() -> None:
    events = [*anthropic_events(["Par"], stop_reason=None, stop=False), ANTHROPIC_ERROR_EVENT]
    relay = make_relay(AN, AN)
    out = relay.feed(sse(events))
    assert out == sse(events)
    assert relay.closed and relay.started and relay.error is not None
    assert relay.feed(sse(anthropic_events(["is."]))) == b""
    assert relay.finish() == b""


@pytest.mark.parametrize("dialect", [OA, AN], ids=["openai", "anthropic"])
def test_same_dialect_error_event_is_relayed_without_an_echoed_key(dialect: Dialect) -> None:
    name, error = OPENAI_ERROR_EVENT if dialect is OA else ANTHROPIC_ERROR_EVENT
    leaky = {**error, "error": {**error["error"], "message": "key sk-proj-****wxyz was revoked"}}
    head = anthropic_events(["Par"], stop_reason=None, stop=False) if dialect is AN else openai_events(["Par"])[:2]
    out = make_relay(dialect, dialect).feed(sse([*head, (name, leaky)]))
    assert out.startswith(sse(head)) and b"wxyz" not in out
    assert b"key [redacted] was revoked" in out


def test_cross_dialect_error_after_the_first_token_reaches_the_openai_sdk() -> None:
    relay = make_relay(OA, AN)
    out = relay.feed(sse([*anthropic_events(["Par"], stop_reason=None, stop=False), ANTHROPIC_ERROR_EVENT]))
    assert relay.closed
    with pytest.raises(openai.APIError, match="Overloaded"):
        openai_text(out)


# ---- how the stream ends --------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (AN, AN), (OA, AN), (AN, OA)])
def test_finish_after_the_terminal_marker_adds_nothing(client: Dialect, provider: Dialect) -> None:
    relay = make_relay(client, provider)
    relay.feed(provider_stream(provider, ["Hi"]))
    assert relay.done and relay.closed
    assert relay.finish() == b""
    assert relay.finalise() == b""
    assert relay.interrupt("late") == b""


def test_finish_without_done_adds_usage_and_done_when_usage_was_asked_for() -> None:
    relay = make_relay(OA, OA, include_usage=True)
    relay.feed(provider_stream(OA, ["Par", "is."], usage=False, done=False))
    assert relay.finished and not relay.done
    tail = relay.finish()
    usage_chunk, done = events_of(tail)
    assert done == (None, "[DONE]")
    chunk = json.loads(usage_chunk[1])
    assert chunk["choices"] == []
    assert chunk["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert (chunk["id"], chunk["model"]) == ("chatcmpl-p", "gpt-4o")  # the provider's own stream id and model


def test_finish_without_done_adds_only_done_without_include_usage() -> None:
    relay = make_relay(OA, OA, include_usage=False)
    relay.feed(provider_stream(OA, ["Hi"], usage=False, done=False))
    assert relay.finish() == b"data: [DONE]\n\n"


def test_finish_without_done_does_not_repeat_a_usage_chunk_already_sent() -> None:
    relay = make_relay(OA, OA, include_usage=True)
    relay.feed(provider_stream(OA, ["Hi"], usage=True, done=False))
    assert relay.usage_seen
    assert relay.finish() == b"data: [DONE]\n\n"


def test_finish_without_message_stop_completes_an_anthropic_stream() -> None:
    relay = make_relay(AN, AN)
    out = relay.feed(provider_stream(AN, ["Paris."], stop=False))
    out += relay.finish()
    assert anthropic_message(out).stop_reason == "end_turn"


def test_finish_without_done_is_accepted_by_the_openai_sdk_after_translation() -> None:
    relay = make_relay(OA, AN)
    out = relay.feed(provider_stream(AN, ["Paris."], stop=False)) + relay.finish()
    assert openai_text(out)[:2] == ("Paris.", "stop")


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (AN, AN), (OA, AN), (AN, OA)])
def test_finish_after_a_cut_adds_an_error_event(client: Dialect, provider: Dialect) -> None:
    relay = make_relay(client, provider)
    relay.feed(started_then_cut(provider))
    assert relay.started and not relay.finished
    tail = relay.finish()
    ((name, data),) = events_of(tail)
    error = json.loads(data)
    if client is AN:
        assert name == "error"
        assert error["error"]["rungway_reason"] == "stream_interrupted"
    else:
        assert error["error"]["code"] == "stream_interrupted"
    assert relay.finish() == b""


def test_a_cut_reaches_the_openai_sdk_as_an_error_not_a_silent_success() -> None:
    relay = make_relay(OA, OA)
    out = relay.feed(provider_stream(OA, ["Par"], finish=None, usage=False, done=False)) + relay.finish()
    with pytest.raises(openai.APIError, match="before it was complete"):
        openai_text(out)


def test_a_cut_reaches_the_anthropic_sdk_as_an_error() -> None:
    relay = make_relay(AN, OA)
    out = relay.feed(provider_stream(OA, ["Par"], finish=None, usage=False, done=False)) + relay.finish()
    with pytest.raises(anthropic.APIStatusError, match="before it was complete"):
        anthropic_message(out)


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (AN, AN), (OA, AN), (AN, OA)])
def test_interrupt_emits_one_error_event_and_closes(client: Dialect, provider: Dialect) -> None:
    relay = make_relay(client, provider)
    relay.feed(started_then_cut(provider))
    first = relay.interrupt("the provider stopped sending")
    ((_, data),) = events_of(first)
    assert json.loads(data)["error"]["message"] == "the provider stopped sending"
    assert relay.closed
    assert relay.interrupt("again") == b""
    assert relay.finish() == b""
    assert relay.feed(provider_stream(provider, ["is."])) == b""


def test_finalise_ends_a_finished_stream_for_the_client() -> None:
    relay = make_relay(AN, OA)
    out = relay.feed(provider_stream(OA, ["Paris."], usage=False, done=False))
    out += relay.finalise()
    assert anthropic_message(out).stop_reason == "end_turn"
    assert relay.finalise() == b""


# ---- stream error classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "failure"),
    [
        ("rate_limit_error", Failure.RATE_LIMITED),
        ("rate_limit_exceeded", Failure.RATE_LIMITED),
        ("overloaded_error", Failure.SERVER_ERROR),
        ("api_error", Failure.SERVER_ERROR),
        ("server_error", Failure.SERVER_ERROR),
        ("timeout_error", Failure.TIMEOUT),
        ("insufficient_quota", Failure.BUDGET_EXCEEDED),
    ],
)
@pytest.mark.parametrize("started", [False, True])
def test_known_stream_error_kinds_follow_the_taxonomy(kind: str, failure: Failure, started: bool) -> None:
    assert stream_failure(StreamError(type=kind, message="x"), started=started) is failure


@pytest.mark.parametrize("kind", ["invalid_event", "error", "something_new"])
def test_unknown_stream_error_is_a_server_error_before_the_first_token_and_an_interruption_after(kind: str) -> None:
    error = StreamError(type=kind, message="x")
    assert stream_failure(error, started=False) is Failure.SERVER_ERROR
    assert stream_failure(error, started=True) is Failure.STREAM_INTERRUPTED


@pytest.mark.parametrize("client", [OA, AN])
@pytest.mark.parametrize("provider", [OA, AN])
def test_an_event_that_is_not_json_is_skipped_not_the_end_of_the_stream(client: Dialect, provider: Dialect) -> None:
    relay = make_relay(client, provider)
    whole = provider_stream(provider, ["Hello", " world"])
    events = whole.split(b"\n\n")
    bad = b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [{"delta": {"content": \n\n'
    cut = len(b"\n\n".join(events[:3])) + 2
    out = relay.feed(whole[:cut]) + relay.feed(bad) + relay.feed(whole[cut:]) + relay.finish()
    assert relay.skipped == 1 and relay.error is None and (relay.done or relay.finished)
    assert b'"content": \n' not in out
    reference = make_relay(client, provider)
    expected = reference.feed(whole) + reference.finish()
    assert events_of(out) == events_of(expected)


# ---- properties -------------------------------------------------------------------------------------

texts = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=6), max_size=5)


@st.composite
def provider_streams(draw: st.DrawFn) -> tuple[Dialect, Dialect, bytes]:
    client = draw(st.sampled_from([OA, AN]))
    provider = draw(st.sampled_from([OA, AN]))
    words = draw(texts)
    ending = draw(st.sampled_from(["complete", "no-terminal", "error", "cut"]))
    if provider is AN:
        events = anthropic_events(words, stop=ending == "complete", stop_reason=None if ending == "cut" else "end_turn")
        error: Any = ANTHROPIC_ERROR_EVENT
    else:
        events = openai_events(words, done=ending == "complete", finish=None if ending == "cut" else "stop")
        error = OPENAI_ERROR_EVENT
    if ending == "error":
        events.insert(draw(st.integers(1, len(events))), error)
    raw = sse(events)
    if ending == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return client, provider, raw


def run(client: Dialect, provider: Dialect, chunks: list[bytes]) -> tuple[StreamRelay, list[bytes]]:
    relay = make_relay(client, provider)
    pieces = [relay.feed(chunk) for chunk in chunks]
    pieces.append(relay.finish())
    return relay, pieces


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(provider_streams(), st.data())
def test_any_split_of_the_provider_stream_gives_the_client_the_same_whole_events(
    stream: tuple[Dialect, Dialect, bytes], data: st.DataObject
) -> None:
    client, provider, raw = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    whole, whole_pieces = run(client, provider, [raw])
    split, split_pieces = run(client, provider, chunks)
    if whole.error is not None and not whole.started:
        # The attempt filter hops and stops feeding: none of this stream reaches the client.
        assert split.error is not None
        return
    assert (split.started, split.finished, split.done, split.error) == (
        whole.started,
        whole.finished,
        whole.done,
        whole.error,
    )
    assert b"".join(split_pieces) == b"".join(whole_pieces)
    for piece in split_pieces:
        assert is_whole_events(piece)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(OA, AN), (AN, OA)]), texts, st.booleans())
def test_a_translated_stream_is_what_the_client_sdk_reassembles(
    dialects: tuple[Dialect, Dialect], words: list[str], terminal: bool
) -> None:
    client, provider = dialects
    relay = make_relay(client, provider)
    shape = {"stop": terminal} if provider is AN else {"done": terminal}
    out = relay.feed(provider_stream(provider, words, **shape)) + relay.finish()
    if client is OA:
        text, finish, _ = openai_text(out)
        assert (text, finish) == ("".join(words), "stop")
    else:
        message = anthropic_message(out)
        assert "".join(b.text for b in message.content if b.type == "text") == "".join(words)
        assert message.stop_reason == "end_turn"


def capped_relay(client: Dialect, provider: Dialect, **caps: int) -> StreamRelay:
    return StreamRelay(
        client,
        provider,
        model="served-model",
        stream_id="chatcmpl-rw1" if client.wire is OA else "msg_rw1",
        created=1_767_225_600,
        include_usage=False,
        prompt_tokens=12,
        **caps,
    )


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (OA, AN), (AN, AN), (AN, OA)])
def test_an_endless_line_before_the_first_token_is_a_malformed_stream_with_nothing_sent(
    client: Dialect, provider: Dialect
) -> None:
    relay = capped_relay(client, provider, max_event_bytes=4096)
    head = provider_stream(provider, [])[:40]  # an event's start, never ended
    assert relay.feed(head + b"z" * 5000) == b""
    assert relay.closed and not relay.started
    assert relay.error is not None and stream_failure(relay.error, started=False) is Failure.SCHEMA_ERROR
    assert relay.feed(b"\n\n" + provider_stream(provider, ["late"])) == b""


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (OA, AN), (AN, AN), (AN, OA)])
def test_an_endless_line_after_the_first_token_ends_with_an_in_band_error(client: Dialect, provider: Dialect) -> None:
    relay = capped_relay(client, provider, max_event_bytes=4096)
    first = relay.feed(started_then_cut(provider))
    assert relay.started and first
    tail = relay.feed(b"data: " + b"z" * 5000)
    assert relay.closed and relay.error is not None
    assert stream_failure(relay.error, started=True) is Failure.SCHEMA_ERROR
    (last,) = [e for e in SseParser().feed(tail)]
    error = json.loads(last.data)["error"]
    assert (error.get("code") or error.get("type")) in ("schema_error", "api_error")
    assert relay.finish() == b""  # closed: nothing more


def test_megabytes_of_events_without_a_token_are_a_malformed_stream() -> None:
    relay = capped_relay(OA, OA, max_held_bytes=10_000)
    role = sse(openai_events([], finish=None, usage=False, done=False))  # a role chunk: no text yet
    out = b""
    for _ in range(100):
        out += relay.feed(role)
        if relay.closed:
            break
    assert relay.closed and not relay.started
    assert relay.error is not None and stream_failure(relay.error, started=False) is Failure.SCHEMA_ERROR
    assert len(out) <= 10_000 + len(role)


def test_what_is_held_before_the_first_token_stops_counting_once_it_started() -> None:
    relay = capped_relay(OA, OA, max_held_bytes=2_000)
    relay.feed(started_then_cut(OA))
    assert relay.started
    more = relay.feed(sse(openai_events(["more"] * 50, finish=None, usage=False, done=False)))
    assert len(more) > 2_000 and relay.error is None and not relay.closed


# ---- what the client has: Delivered ---------------------------------------------------------------


def client_text(client: Dialect, data: bytes) -> str:
    """The text a client reads from the relay's output, through the reader of its own dialect."""
    reader = AnthropicStreamReader() if client is AN else OpenAIStreamReader()
    parser = SseParser()
    return "".join(d.text for e in parser.feed(data) for d in reader.read(e) if isinstance(d, TextDelta))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(provider_streams(), st.data())
def test_delivered_text_is_exactly_what_the_client_has_after_every_chunk(
    stream: tuple[Dialect, Dialect, bytes], data: st.DataObject
) -> None:
    client, provider, raw = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    relay = make_relay(client, provider)
    sent = b""
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        out = relay.feed(raw[a:b])
        if relay.error is not None and not relay.started:
            return  # the attempt filter hops: none of it reaches the client
        sent += out
        assert relay.delivered.text == client_text(client, sent)


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (AN, AN), (OA, AN), (AN, OA)])
def test_a_cut_stream_is_rescuable_and_says_what_was_delivered(client: Dialect, provider: Dialect) -> None:
    relay = make_relay(client, provider)
    relay.feed(started_then_cut(provider))
    delivered = relay.delivered
    assert (delivered.text, delivered.output_units, delivered.blocked, delivered.rescuable) == ("Par", 1, None, True)
    assert delivered.client is client
    assert delivered.usage.output_tokens == 1


def test_delivered_identity_of_a_passed_through_openai_stream_is_the_providers() -> None:
    events = openai_events(["Par"], finish=None, usage=False, done=False)
    for _, chunk in events:
        assert isinstance(chunk, dict)
        chunk.update(created=1_700_000_000, system_fingerprint="fp_1")
    relay = make_relay(OA, OA)
    relay.feed(sse(events))
    d = relay.delivered
    assert (d.id, d.model, d.created, d.system_fingerprint) == ("chatcmpl-p", "gpt-4o", 1_700_000_000, "fp_1")
    assert (d.input_tokens, d.open_block, d.next_block) == (12, None, 0)


def test_delivered_identity_of_a_translated_stream_is_ours() -> None:
    relay = make_relay(OA, AN)
    relay.feed(started_then_cut(AN))
    d = relay.delivered
    assert (d.id, d.model, d.created, d.system_fingerprint) == ("chatcmpl-rw1", "served-model", 1_767_225_600, None)


def test_delivered_anthropic_block_state_of_a_passed_through_stream() -> None:
    events = anthropic_events(["Par"], stop_reason=None, stop=False)
    relay = make_relay(AN, AN)
    relay.feed(sse(events[:-1]))  # content_block_stop not yet sent
    d = relay.delivered
    assert (d.id, d.model, d.open_block, d.open_text, d.next_block, d.created) == (
        "msg_p",
        "claude-fallback",
        0,
        True,
        1,
        None,
    )
    assert d.input_tokens == 12  # as the provider's message_start reported it
    relay.feed(sse(events[-1:]))
    assert (relay.delivered.open_block, relay.delivered.open_text, relay.delivered.next_block) == (None, False, 1)


def test_delivered_anthropic_block_state_of_a_translated_stream_is_our_writers() -> None:
    relay = make_relay(AN, OA)
    relay.feed(started_then_cut(OA))
    d = relay.delivered
    assert (d.id, d.model, d.open_block, d.open_text, d.next_block) == ("msg_rw1", "served-model", 0, True, 1)


def tool_call_chunk() -> dict[str, Any]:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}],
    }


@pytest.mark.parametrize("client", [OA, AN])
def test_a_stream_with_a_tool_call_cannot_be_rescued(client: Dialect) -> None:
    relay = make_relay(client, OA)
    relay.feed(sse([*openai_events(["Let me look"], finish=None, usage=False, done=False), (None, tool_call_chunk())]))
    d = relay.delivered
    assert (d.text, d.blocked, d.rescuable) == ("Let me look", "tool_call", False)


@pytest.mark.parametrize("client", [OA, AN])
def test_a_refusal_cannot_be_rescued(client: Dialect) -> None:
    events = openai_events([], finish=None, usage=False, done=False)
    chunk = {**tool_call_chunk(), "choices": [{"index": 0, "delta": {"refusal": "I can't"}, "finish_reason": None}]}
    relay = make_relay(client, OA)
    relay.feed(sse([*events, (None, chunk)]))
    assert (relay.started, relay.delivered.blocked) == (True, "refusal")


def test_a_passed_through_thinking_block_cannot_be_rescued() -> None:
    events = anthropic_events(["Paris"], stop_reason=None, stop=False)
    thinking = [
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    for _, payload in events:
        if isinstance(payload, dict) and "index" in payload:
            payload["index"] = 1
    relay = make_relay(AN, AN)
    relay.feed(sse([events[0], *thinking, *events[1:-1]]))
    d = relay.delivered
    assert (d.text, d.blocked, d.open_block, d.next_block) == ("Paris", "non_text_content", 1, 2)
    translated = make_relay(OA, AN)  # an OpenAI client never saw the thinking
    translated.feed(sse([events[0], *thinking, *events[1:-1]]))
    assert translated.delivered.blocked is None


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (AN, AN), (OA, AN), (AN, OA)])
def test_nothing_to_rescue_before_the_first_token_after_the_finish_or_after_an_error(
    client: Dialect, provider: Dialect
) -> None:
    assert make_relay(client, provider).delivered.blocked == "not_started"
    finished = make_relay(client, provider)
    finished.feed(
        provider_stream(provider, ["Hi"], stop=False)
        if provider is AN
        else provider_stream(OA, ["Hi"], done=False, usage=False)
    )
    assert finished.delivered.blocked == "finished"
    cut = make_relay(client, provider)
    cut.feed(started_then_cut(provider))
    assert cut.delivered.rescuable
    cut.finish()  # the client got the error event: its stream is over
    assert cut.delivered.blocked == "error_sent"
    errored = make_relay(client, provider)
    errored.feed(started_then_cut(provider) + sse([ANTHROPIC_ERROR_EVENT if provider is AN else OPENAI_ERROR_EVENT]))
    assert errored.delivered.blocked == "error_sent"


@pytest.mark.parametrize(("client", "provider"), [(OA, OA), (OA, AN), (AN, AN), (AN, OA)])
def test_megabytes_of_events_without_a_token_after_the_first_end_with_an_in_band_error(
    client: Dialect, provider: Dialect
) -> None:
    relay = capped_relay(client, provider, max_held_bytes=10_000)
    relay.feed(started_then_cut(provider))
    assert relay.started
    junk = sse(openai_events([], finish=None, usage=False, done=False))  # a chunk with no text
    if provider is AN:
        junk = b'event: ping\ndata: {"type": "ping"}\n\n'
    out = b""
    for _ in range(10_000 // len(junk) + 2):
        out += relay.feed(junk)
        if relay.closed:
            break
    assert relay.closed and relay.error is not None
    assert stream_failure(relay.error, started=True) is Failure.SCHEMA_ERROR
    last = [e for e in SseParser().feed(out)][-1]
    assert "without a token" in json.loads(last.data)["error"]["message"]


def test_tokens_reset_the_count_of_bytes_without_a_token() -> None:
    relay = capped_relay(OA, OA, max_held_bytes=2_000)
    relay.feed(started_then_cut(OA))
    junk = sse(openai_events([], finish=None, usage=False, done=False))
    for _ in range(20):
        relay.feed(junk * (1_500 // len(junk)))
        relay.feed(sse(openai_events(["tok"], finish=None, usage=False, done=False)[-1:]))
    assert relay.error is None and not relay.closed
