"""rescue: the request for a rescue rung, and the Splice that continues a begun client stream from
the rescue rung's stream, in every dialect pair."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from extproc.core import Capability, Dialect, Failure
from extproc.translate import (
    Delivered,
    PrefixMatch,
    RescueOutcome,
    RescueStrategy,
    Splice,
    SpliceState,
    SseParser,
    StreamRelay,
    Usage,
    rescue_body,
    rescue_strategy,
)
from tests.builders import ANTHROPIC_ERROR_EVENT, OPENAI_ERROR_EVENT, anthropic_events, openai_events, sse
from tests.translate.test_relay import anthropic_message, openai_text

OA, AN = Dialect.OPENAI, Dialect.ANTHROPIC
CONTINUE, REGENERATE = RescueStrategy.CONTINUE, RescueStrategy.REGENERATE
PAIRS = [(OA, OA), (AN, AN), (OA, AN), (AN, OA)]  # (client, rescue rung's provider)
REQUEST: dict[str, Any] = {
    "model": "client-model",
    "messages": [{"role": "user", "content": "capital of France?"}],
    "max_tokens": 100,
    "stream": True,
}


# ---- building a begun stream and a rescue stream ------------------------------------------------


def cut_stream(primary: Dialect, tokens: list[str], *, block_open: bool = True) -> bytes:
    """A primary's stream that delivered `tokens`, then ended without finish or terminal marker."""
    if primary is AN:
        events = anthropic_events(tokens, stop_reason=None, stop=False, model="claude-primary")
        return sse(events[:-1] if block_open else events)  # the last is content_block_stop
    return sse(openai_events(tokens, finish=None, usage=False, done=False, model="gpt-primary"))


def begin(
    client: Dialect, primary: Dialect, tokens: list[str], *, block_open: bool = True
) -> tuple[StreamRelay, bytes]:
    relay = StreamRelay(
        client,
        primary,
        model="served-model",
        stream_id="chatcmpl-rw1" if client is OA else "msg_rw1",
        created=1_767_225_600,
        include_usage=True,
        prompt_tokens=12,
    )
    return relay, relay.feed(cut_stream(primary, tokens, block_open=block_open))


def rescue_stream(provider: Dialect, tokens: list[str], **shape: Any) -> bytes:
    if provider is AN:
        return sse(anthropic_events(tokens, model="claude-rescue", **shape))
    return sse(openai_events(tokens, model="gpt-rescue", **shape))


def splice_for(client: Dialect, provider: Dialect, delivered: Delivered, strategy: RescueStrategy, **kw: Any) -> Splice:
    return Splice(client, provider, delivered, strategy, include_usage=kw.pop("include_usage", True), **kw)


def prefill_of(body: dict[str, Any]) -> str:
    last = body["messages"][-1]
    return str(last["content"]) if last["role"] == "assistant" else ""


# ---- a client's reading of the spliced stream -----------------------------------------------------


@dataclass
class View:
    """What a client SDK would make of a stream, plus its structure, checked event by event."""

    text: str = ""
    ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    fingerprints: set[Any] = field(default_factory=set)
    starts: int = 0  # role chunks / message_start events
    finishes: list[str] = field(default_factory=list)
    terminals: int = 0  # [DONE] / message_stop
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    after_end: int = 0  # events after a terminal marker or an error


def view(client: Dialect, data: bytes) -> View:
    parser = SseParser()
    events = parser.feed(data)
    assert parser.pending == b"", "the client must only ever get whole events"
    out = View()
    open_block: int | None = None
    next_block = 0
    for event in events:
        if out.terminals or out.errors:
            out.after_end += 1
            continue
        if client is OA:
            if event.data == "[DONE]":
                out.terminals += 1
                continue
            chunk = json.loads(event.data)
            if "error" in chunk:
                out.errors.append(chunk["error"])
                continue
            out.ids.add(chunk["id"])
            out.models.add(chunk["model"])
            out.created.add(chunk["created"])
            out.fingerprints.add(chunk.get("system_fingerprint"))
            if chunk.get("usage"):
                out.usage = chunk["usage"]
            for choice in chunk["choices"]:
                delta = choice["delta"]
                out.starts += "role" in delta
                out.text += delta.get("content") or ""
                if choice["finish_reason"] is not None:
                    out.finishes.append(choice["finish_reason"])
            continue
        payload = json.loads(event.data)
        kind = payload["type"]
        assert event.event == kind
        if kind == "message_start":
            out.starts += 1
            out.ids.add(payload["message"]["id"])
            out.models.add(payload["message"]["model"])
        elif kind == "content_block_start":
            assert open_block is None and payload["index"] == next_block
            open_block, next_block = payload["index"], payload["index"] + 1
            out.text += payload["content_block"].get("text", "")
        elif kind == "content_block_delta":
            assert payload["index"] == open_block
            out.text += payload["delta"]["text"]
        elif kind == "content_block_stop":
            assert payload["index"] == open_block
            open_block = None
        elif kind == "message_delta":
            assert open_block is None, "message_delta while a block is open"
            out.finishes.append(payload["delta"]["stop_reason"])
            out.usage = payload["usage"]
        elif kind == "message_stop":
            out.terminals += 1
        elif kind == "error":
            out.errors.append(payload["error"])
    return out


def assert_one_good_stream(client: Dialect, data: bytes, text: str) -> View:
    seen = view(client, data)
    assert seen.errors == []
    assert seen.text == text
    assert len(seen.finishes) == 1 and seen.terminals == 1 and seen.starts == 1 and seen.after_end == 0
    assert len(seen.ids) == 1 and len(seen.models) == 1 and len(seen.created) <= 1
    return seen


def assert_one_error_after(client: Dialect, data: bytes, delivered_text: str) -> dict[str, Any]:
    seen = view(client, data)
    assert seen.text == delivered_text
    assert seen.finishes == [] and seen.terminals == 0 and seen.after_end == 0
    (error,) = seen.errors
    assert error["rungway_reason"] == "stream_interrupted"
    return error


# ---- the strategy and the request -----------------------------------------------------------------


def test_only_a_rung_that_declares_prefill_is_sent_one() -> None:
    assert rescue_strategy({Capability.STREAMING, Capability.PREFILL}) is CONTINUE
    assert rescue_strategy({Capability.STREAMING, Capability.TOOLS}) is REGENERATE
    assert rescue_strategy(frozenset()) is REGENERATE


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_continuation_request_carries_the_delivered_text_as_a_trailing_assistant_message(
    client: Dialect, provider: Dialect
) -> None:
    relay, _ = begin(client, client, ["The capital ", "is"])
    body = rescue_body(REQUEST, relay.delivered, CONTINUE, client, provider, "rescue-model")
    assert body["model"] == "rescue-model" and body["stream"] is True
    assert body["messages"][-1] == {"role": "assistant", "content": "The capital is"}
    assert body["messages"][0]["role"] == "user"
    limit = body["max_tokens"] if provider is AN else body["max_completion_tokens" if client is AN else "max_tokens"]
    assert limit == 100 - 2  # what the whole answer had left
    if provider is OA:
        assert body["stream_options"]["include_usage"] is True  # the rung's own usage, to bill it
    assert REQUEST["messages"] == [{"role": "user", "content": "capital of France?"}]  # not mutated


@pytest.mark.parametrize("client", [OA, AN])
def test_regenerate_request_is_the_original_with_no_prefill(client: Dialect) -> None:
    relay, _ = begin(client, client, ["The capital ", "is"])
    for provider in (OA, AN):
        body = rescue_body(REQUEST, relay.delivered, REGENERATE, client, provider, "rescue-model")
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert body["stream"] is True


def test_anthropic_prefill_has_no_trailing_whitespace_and_openai_keeps_it() -> None:
    relay, _ = begin(OA, OA, ["The capital ", "is \n"])
    delivered = relay.delivered
    assert prefill_of(rescue_body(REQUEST, delivered, CONTINUE, OA, AN, "m")) == "The capital is"
    assert prefill_of(rescue_body(REQUEST, delivered, CONTINUE, OA, OA, "m")) == "The capital is \n"


def test_a_whitespace_only_delivery_sends_no_empty_prefill() -> None:
    relay, _ = begin(AN, AN, ["\n\n"])
    body = rescue_body(REQUEST, relay.delivered, CONTINUE, AN, AN, "m")
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_the_clients_own_prefill_is_continued_not_repeated() -> None:
    request = {**REQUEST, "messages": [*REQUEST["messages"], {"role": "assistant", "content": "Answer:"}]}
    relay, _ = begin(AN, AN, [" Paris "])
    body = rescue_body(request, relay.delivered, CONTINUE, AN, AN, "m")
    assert body["messages"][-1] == {"role": "assistant", "content": "Answer: Paris"}
    assert len(body["messages"]) == 2


def test_a_client_prefill_in_blocks_gets_the_delivered_text_as_one_more_block() -> None:
    prefill = {"role": "assistant", "content": [{"type": "text", "text": "Answer:"}]}
    request = {**REQUEST, "messages": [*REQUEST["messages"], prefill]}
    relay, _ = begin(AN, AN, [" Paris "])
    body = rescue_body(request, relay.delivered, CONTINUE, AN, AN, "m")
    assert body["messages"][-1]["content"] == [{"type": "text", "text": "Answer:"}, {"type": "text", "text": " Paris"}]


def test_a_continuation_on_anthropic_drops_extended_thinking() -> None:
    request = {**REQUEST, "max_tokens": 3000, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    relay, _ = begin(AN, OA, ["Par"])
    assert "thinking" not in rescue_body(request, relay.delivered, CONTINUE, AN, AN, "m")
    assert "thinking" in rescue_body(request, relay.delivered, REGENERATE, AN, AN, "m")


def test_a_stream_that_cannot_be_rescued_gets_no_request_and_no_splice() -> None:
    relay = StreamRelay(OA, OA, model="m", stream_id="c", created=1, include_usage=False, prompt_tokens=1)
    assert relay.delivered.blocked == "not_started"
    with pytest.raises(ValueError, match="not_started"):
        rescue_body(REQUEST, relay.delivered, CONTINUE, OA, AN, "m")
    with pytest.raises(ValueError, match="not_started"):
        splice_for(OA, AN, relay.delivered, CONTINUE)


def test_a_splice_refuses_a_client_dialect_other_than_the_begun_streams() -> None:
    relay, _ = begin(OA, OA, ["Par"])
    with pytest.raises(ValueError, match="dialect"):
        splice_for(AN, AN, relay.delivered, CONTINUE)


# ---- the splice in every pair ---------------------------------------------------------------------


@pytest.mark.parametrize("primary", [OA, AN])
@pytest.mark.parametrize(("client", "provider"), PAIRS)
@pytest.mark.parametrize("strategy", [CONTINUE, REGENERATE])
def test_a_cut_stream_is_completed_as_one_stream_the_client_sdk_reads_whole(
    client: Dialect, provider: Dialect, primary: Dialect, strategy: RescueStrategy
) -> None:
    relay, head = begin(client, primary, ["The capital ", "of France"])
    delivered = relay.delivered
    splice = splice_for(client, provider, delivered, strategy)
    tokens = [" is", " Paris."] if strategy is CONTINUE else ["The cap", "ital of", " France is", " Paris."]
    tail = splice.feed(rescue_stream(provider, tokens)) + splice.finish_if_cut()
    assert splice.state is SpliceState.DONE and splice.failure is None
    whole = head + tail
    seen = assert_one_good_stream(client, whole, "The capital of France is Paris.")
    assert seen.ids == {delivered.id} and seen.models == {delivered.model}
    if client is OA:
        text, finish, usage = openai_text(whole)
        assert (text, finish) == ("The capital of France is Paris.", "stop")
        assert usage is not None and usage.completion_tokens == splice.usage.output_tokens
    else:
        message = anthropic_message(whole)
        assert "".join(b.text for b in message.content if b.type == "text") == "The capital of France is Paris."
        assert (message.stop_reason, message.id, message.model) == ("end_turn", delivered.id, delivered.model)
        assert message.usage.output_tokens == splice.usage.output_tokens


def test_the_begun_openai_identity_is_kept_over_the_rescue_rungs() -> None:
    relay, head = begin(OA, OA, ["Par"])
    delivered = relay.delivered
    assert (delivered.id, delivered.model, delivered.created) == ("chatcmpl-p", "gpt-primary", 1)
    tail = splice_for(OA, AN, delivered, CONTINUE).feed(rescue_stream(AN, ["is."]))
    seen = view(OA, head + tail)
    assert (seen.ids, seen.models, seen.created, seen.starts) == ({"chatcmpl-p"}, {"gpt-primary"}, {1}, 1)
    assert b"claude-rescue" not in tail and b"msg_p" not in tail and b"message_start" not in tail


def test_the_system_fingerprint_the_client_saw_goes_on_every_spliced_chunk() -> None:
    events = openai_events(["Par"], finish=None, usage=False, done=False)
    for _, chunk in events:
        assert isinstance(chunk, dict)
        chunk["system_fingerprint"] = "fp_primary"
    relay = StreamRelay(OA, OA, model="m", stream_id="c", created=7, include_usage=False, prompt_tokens=1)
    relay.feed(sse(events))
    assert relay.delivered.system_fingerprint == "fp_primary"
    splice = splice_for(OA, OA, relay.delivered, CONTINUE, include_usage=False)
    tail = splice.feed(rescue_stream(OA, ["is."]))
    assert view(OA, tail).fingerprints == {"fp_primary"}


def test_an_anthropic_text_block_left_open_is_continued_not_reopened() -> None:
    relay, head = begin(AN, AN, ["Par"], block_open=True)
    delivered = relay.delivered
    assert (delivered.open_block, delivered.open_text, delivered.next_block) == (0, True, 1)
    tail = splice_for(AN, OA, delivered, CONTINUE).feed(rescue_stream(OA, ["is."]))
    assert b"content_block_start" not in tail
    message = anthropic_message(head + tail)
    assert [b.text for b in message.content] == ["Paris."]


def test_an_anthropic_block_already_closed_gets_a_new_block_after_it() -> None:
    relay, head = begin(AN, AN, ["Par"], block_open=False)
    delivered = relay.delivered
    assert (delivered.open_block, delivered.next_block) == (None, 1)
    tail = splice_for(AN, AN, delivered, CONTINUE).feed(rescue_stream(AN, ["is."]))
    assert json.loads(SseParser().feed(tail)[0].data)["index"] == 1
    assert_one_good_stream(AN, head + tail, "Paris.")


def test_an_anthropic_client_of_a_translated_stream_continues_the_writers_block() -> None:
    relay, head = begin(AN, OA, ["Par"])
    delivered = relay.delivered
    assert (delivered.id, delivered.model, delivered.open_block, delivered.open_text) == (
        "msg_rw1",
        "served-model",
        0,
        True,
    )
    tail = splice_for(AN, AN, delivered, REGENERATE).feed(rescue_stream(AN, ["Paris."]))
    assert [b.text for b in anthropic_message(head + tail).content] == ["Paris."]


# ---- continuation and the whitespace a prefill lost -------------------------------------------------


@pytest.mark.parametrize(
    ("delivered", "continuation", "seen"),
    [
        (["Hello "], [" world"], "Hello world"),  # Anthropic re-adds the stripped space: dropped
        (["Hello "], ["world"], "Hello world"),
        (["Hello\n"], ["\n", "\nworld"], "Hello\n\nworld"),  # one newline was the client's already
        (["Hello "], ["\n\nworld"], "Hello \n\nworld"),  # other whitespace goes through
        (["Hello"], [" world"], "Hello world"),
    ],
)
def test_a_continuation_never_repeats_whitespace_the_client_has(
    delivered: list[str], continuation: list[str], seen: str
) -> None:
    relay, head = begin(OA, OA, delivered)
    splice = splice_for(OA, AN, relay.delivered, CONTINUE)
    assert_one_good_stream(OA, head + splice.feed(rescue_stream(AN, continuation)), seen)


def test_an_openai_rung_continues_the_unstripped_prefill_as_it_is() -> None:
    relay, head = begin(AN, AN, ["Hello "])
    splice = splice_for(AN, OA, relay.delivered, CONTINUE)
    assert_one_good_stream(AN, head + splice.feed(rescue_stream(OA, [" world"])), "Hello  world")


# ---- regenerate: the prefix must match --------------------------------------------------------------


@pytest.mark.parametrize(
    ("regenerated", "seen"),
    [
        (["The capital", " is", " Paris."], "The capital is Paris."),  # tokens on the same boundary
        (["The cap", "ital i", "s Paris."], "The capital is Paris."),  # a token straddles the end
        (["The capital is Paris."], "The capital is Paris."),  # one delta covers it all
        (["The  capital\n", "is Paris."], "The capital is Paris."),  # whitespace-only differences
        (["  The capital is", " Paris."], "The capital is Paris."),  # leading whitespace
    ],
)
def test_a_regenerated_answer_that_matches_sends_only_the_rest(regenerated: list[str], seen: str) -> None:
    relay, head = begin(OA, OA, ["The capital ", "is"])
    splice = splice_for(OA, OA, relay.delivered, REGENERATE)
    tail = splice.feed(rescue_stream(OA, regenerated))
    assert_one_good_stream(OA, head + tail, seen)
    assert splice.snapshot()["matched_chars"] == len("The capital is")


def test_whitespace_in_the_delivered_text_is_kept_as_the_client_got_it() -> None:
    relay, head = begin(AN, AN, ["The  capital\n", "is "])
    splice = splice_for(AN, OA, relay.delivered, REGENERATE)
    tail = splice.feed(rescue_stream(OA, ["The capital is", " Paris."]))
    assert_one_good_stream(AN, head + tail, "The  capital\nis Paris.")


def test_exact_matching_refuses_a_whitespace_difference() -> None:
    relay, head = begin(OA, OA, ["The  capital"])
    splice = splice_for(OA, OA, relay.delivered, REGENERATE, match=PrefixMatch.EXACT)
    tail = splice.feed(rescue_stream(OA, ["The capital is", " Paris."]))
    error = assert_one_error_after(OA, head + tail, "The  capital")
    assert error["rungway_rescue"] == "rescue_diverged" and "at char 4" in error["message"]


def test_exact_matching_accepts_the_same_text_on_other_token_boundaries() -> None:
    relay, head = begin(OA, OA, ["The  cap", "ital"])
    splice = splice_for(OA, AN, relay.delivered, REGENERATE, match=PrefixMatch.EXACT)
    tail = splice.feed(rescue_stream(AN, ["The", "  capi", "tal is."]))
    assert_one_good_stream(OA, head + tail, "The  capital is.")


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_a_regenerated_answer_that_diverges_ends_with_one_error_event(client: Dialect, provider: Dialect) -> None:
    relay, head = begin(client, client, ["The capital ", "is"])
    splice = splice_for(client, provider, relay.delivered, REGENERATE)
    tail = splice.feed(rescue_stream(provider, ["The capital", " of France is Paris."]))
    assert splice.state is SpliceState.FAILED
    error = assert_one_error_after(client, head + tail, "The capital is")
    assert error["rungway_rescue"] == "rescue_diverged"
    assert "diverges from the delivered prefix (at char 12)" in error["message"]
    assert splice.failure is not None
    assert (splice.failure.primary, splice.failure.outcome, splice.failure.rescue) == (
        Failure.STREAM_INTERRUPTED,
        RescueOutcome.DIVERGED,
        None,  # the rung did nothing wrong: its health is not marked down
    )
    assert splice.feed(rescue_stream(provider, ["more"])) == b"" and splice.finish_if_cut() == b""


def test_a_diverging_answer_reaches_the_openai_sdk_as_an_error_not_a_short_success() -> None:
    relay, head = begin(OA, AN, ["The capital ", "is"])
    tail = splice_for(OA, OA, relay.delivered, REGENERATE).feed(rescue_stream(OA, ["A capital is"]))
    with pytest.raises(openai.APIError, match="could not be completed"):
        openai_text(head + tail)


def test_a_regenerated_answer_shorter_than_the_delivered_text_diverges() -> None:
    relay, head = begin(AN, AN, ["The capital ", "is"])
    splice = splice_for(AN, AN, relay.delivered, REGENERATE)
    tail = splice.feed(rescue_stream(AN, ["The capital"]))
    assert assert_one_error_after(AN, head + tail, "The capital is")["rungway_rescue"] == "rescue_diverged"
    with pytest.raises(anthropic.APIStatusError, match="ended before reaching the delivered text"):
        anthropic_message(head + tail)


def test_a_regenerated_tool_call_where_text_was_delivered_diverges() -> None:
    relay, head = begin(OA, OA, ["Let me"])
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]},
                "finish_reason": None,
            }
        ],
    }
    splice = splice_for(OA, OA, relay.delivered, REGENERATE)
    tail = splice.feed(sse([(None, chunk)]))
    assert assert_one_error_after(OA, head + tail, "Let me")["rungway_rescue"] == "rescue_diverged"


# ---- usage --------------------------------------------------------------------------------------------


def test_continuation_usage_is_the_delivered_part_plus_the_rescues_tokens() -> None:
    relay, head = begin(OA, OA, ["The capital ", "is"])  # 2 output units delivered
    splice = splice_for(OA, AN, relay.delivered, CONTINUE)
    tail = splice.feed(rescue_stream(AN, [" Paris."]))  # the rescue rung reports 7 output tokens
    assert splice.rescue_usage == Usage(input_tokens=12, output_tokens=7)  # billed to the rescue rung
    assert splice.usage == Usage(input_tokens=12, output_tokens=2 + 7)
    assert assert_one_good_stream(OA, head + tail, "The capital is Paris.").usage == {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "total_tokens": 21,
    }


def test_regenerate_usage_counts_only_the_share_of_the_rescue_the_client_got() -> None:
    relay, _ = begin(AN, AN, ["abcdef"])
    splice = splice_for(AN, OA, relay.delivered, REGENERATE)
    splice.feed(rescue_stream(OA, ["abcdef", "gh"]))  # 7 tokens for 8 characters, 2 of them new
    assert splice.rescue_usage == Usage(input_tokens=12, output_tokens=7)
    assert splice.usage == Usage(input_tokens=12, output_tokens=1 + 2)  # ceil(7 * 2 / 8) = 2


def test_a_rescue_without_usage_counts_what_it_forwarded() -> None:
    relay, _ = begin(OA, OA, ["Par"])
    splice = splice_for(OA, OA, relay.delivered, CONTINUE)
    splice.feed(rescue_stream(OA, ["is", "."], usage=False))
    assert splice.rescue_usage is None
    assert splice.usage == Usage(input_tokens=12, output_tokens=1 + 2)


def test_the_callers_delivered_usage_is_used_when_given() -> None:
    relay, _ = begin(OA, OA, ["Par"])
    splice = splice_for(OA, OA, relay.delivered, CONTINUE, delivered_usage=Usage(input_tokens=40, output_tokens=3))
    splice.feed(rescue_stream(OA, ["is."]))
    assert splice.usage == Usage(input_tokens=40, output_tokens=10)


def test_no_usage_chunk_when_the_openai_client_did_not_ask_for_one() -> None:
    relay, head = begin(OA, OA, ["Par"])
    tail = splice_for(OA, AN, relay.delivered, CONTINUE, include_usage=False).feed(rescue_stream(AN, ["is."]))
    assert assert_one_good_stream(OA, head + tail, "Paris.").usage is None


# ---- the rescue rung failing too -----------------------------------------------------------------------


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_a_rescue_error_event_becomes_one_error_with_both_reasons(client: Dialect, provider: Dialect) -> None:
    relay, head = begin(client, client, ["Par"])
    splice = splice_for(client, provider, relay.delivered, CONTINUE)
    error_event = ANTHROPIC_ERROR_EVENT if provider is AN else OPENAI_ERROR_EVENT
    events = anthropic_events(["is"], stop_reason=None, stop=False) if provider is AN else openai_events(["is"])[:2]
    tail = splice.feed(sse([*events, error_event]))
    error = assert_one_error_after(client, head + tail, "Paris")
    assert error["rungway_rescue"] == "rescue_error"
    assert splice.failure is not None
    assert splice.failure.primary is Failure.STREAM_INTERRUPTED  # the client's error is the primary's
    assert splice.failure.rescue is Failure.SERVER_ERROR  # the rescue rung's own, for its health
    assert splice.finish_if_cut() == b""


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_a_rescue_cut_before_its_finish_ends_with_an_error(client: Dialect, provider: Dialect) -> None:
    relay, head = begin(client, client, ["Par"])
    splice = splice_for(client, provider, relay.delivered, CONTINUE)
    cut = rescue_stream(provider, ["is"], stop_reason=None, stop=False) if provider is AN else b""
    if provider is OA:
        cut = rescue_stream(OA, ["is"], finish=None, usage=False, done=False)
    tail = splice.feed(cut)
    assert splice.state is SpliceState.SPLICING
    tail += splice.finish_if_cut()
    assert assert_one_error_after(client, head + tail, "Paris")["rungway_rescue"] == "rescue_cut"
    assert splice.failure is not None and splice.failure.rescue is Failure.STREAM_INTERRUPTED


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_a_rescue_that_finished_without_its_terminal_marker_is_completed(client: Dialect, provider: Dialect) -> None:
    relay, head = begin(client, client, ["Par"])
    splice = splice_for(client, provider, relay.delivered, CONTINUE)
    shape = {"stop": False} if provider is AN else {"done": False}
    tail = splice.feed(rescue_stream(provider, ["is."], **shape))
    assert splice.state is SpliceState.SPLICING
    tail += splice.finish_if_cut()
    assert_one_good_stream(client, head + tail, "Paris.")
    assert splice.snapshot()["state"] == "done"  # (mypy keeps the narrowing above)


def test_a_terminal_marker_without_a_finish_is_a_cut_not_a_success() -> None:
    relay, head = begin(OA, OA, ["Par"])
    splice = splice_for(OA, OA, relay.delivered, CONTINUE)
    tail = splice.feed(rescue_stream(OA, ["is"], finish=None, usage=False, done=True))
    assert assert_one_error_after(OA, head + tail, "Paris")["rungway_rescue"] == "rescue_cut"


def test_a_stalled_rescue_ends_with_an_error() -> None:
    relay, head = begin(AN, OA, ["Par"])
    splice = splice_for(AN, AN, relay.delivered, CONTINUE)
    tail = splice.feed(rescue_stream(AN, ["is"], stop_reason=None, stop=False))
    tail += splice.interrupt("the rescue rung went silent")
    error = assert_one_error_after(AN, head + tail, "Paris")
    assert error["rungway_rescue"] == "rescue_stalled" and "went silent" in error["message"]
    assert splice.interrupt("again") == b""


def test_a_rescue_call_that_fails_never_masks_the_primarys_failure() -> None:
    relay, head = begin(OA, OA, ["Par"])
    splice = splice_for(OA, AN, relay.delivered, CONTINUE)
    tail = splice.fail(Failure.CLIENT_ERROR, "the rescue rung answered 400")
    error = assert_one_error_after(OA, head + tail, "Par")
    assert (error["code"], error["rungway_rescue"]) == ("stream_interrupted", "rescue_unavailable")
    assert splice.failure is not None
    assert (splice.failure.primary, splice.failure.rescue) == (Failure.STREAM_INTERRUPTED, Failure.CLIENT_ERROR)
    assert splice.fail(Failure.SERVER_ERROR, "again") == b""
    assert splice.feed(rescue_stream(AN, ["is."])) == b""


def test_the_primarys_failure_class_is_the_one_the_client_sees() -> None:
    relay, _ = begin(AN, AN, ["Par"])
    splice = splice_for(AN, AN, relay.delivered, CONTINUE, primary=Failure.TIMEOUT)
    tail = splice.fail(Failure.RATE_LIMITED, "429")
    assert view(AN, tail).errors[0]["rungway_reason"] == "timeout"


def test_a_rescue_event_over_the_cap_ends_with_an_error() -> None:
    relay, head = begin(OA, OA, ["Par"])
    splice = splice_for(OA, OA, relay.delivered, CONTINUE, max_event_bytes=4096)
    tail = splice.feed(b"data: " + b"z" * 5000)
    assert assert_one_error_after(OA, head + tail, "Par")["rungway_rescue"] == "rescue_error"
    assert splice.failure is not None and splice.failure.rescue is Failure.SCHEMA_ERROR


def test_a_broken_rescue_event_is_skipped() -> None:
    relay, head = begin(OA, OA, ["Par"])
    splice = splice_for(OA, OA, relay.delivered, CONTINUE)
    raw = rescue_stream(OA, ["is."])
    tail = splice.feed(b'data: {"choices": [\n\n' + raw)
    assert splice.skipped == 1
    assert_one_good_stream(OA, head + tail, "Paris.")


def test_the_splice_shows_its_state() -> None:
    relay, _ = begin(OA, OA, ["The capital ", "is"])
    splice = splice_for(OA, OA, relay.delivered, REGENERATE)
    assert splice.snapshot() == {
        "state": "matching",
        "strategy": "regenerate",
        "matched_chars": 0,
        "new_chars": 0,
        "finish": None,
        "outcome": None,
    }
    splice.feed(rescue_stream(OA, ["The cap"], finish=None, usage=False, done=False))
    assert repr(splice) == (
        "<Splice state=matching strategy=regenerate matched_chars=7 new_chars=0 finish=None outcome=None>"
    )


# ---- properties --------------------------------------------------------------------------------------

ALPHABET = st.sampled_from(list("ab é字\n\t  .🙂"))
dialects = st.sampled_from([OA, AN])


def split(data: st.DataObject, text: str) -> list[str]:
    """Any tokenisation of `text` into non-empty pieces."""
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)] if text else []


def chunked(data: st.DataObject, raw: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), dialects, dialects, dialects, st.sampled_from([CONTINUE, REGENERATE]), st.booleans())
def test_any_split_of_any_text_is_spliced_into_one_whole_stream(
    data: st.DataObject,
    client: Dialect,
    primary: Dialect,
    provider: Dialect,
    strategy: RescueStrategy,
    block_open: bool,
) -> None:
    full = data.draw(st.text(ALPHABET, min_size=1, max_size=30))
    k = data.draw(st.integers(1, len(full)))
    delivered_tokens = split(data, full[:k])
    relay, head = begin(client, primary, delivered_tokens, block_open=block_open)
    delivered = relay.delivered
    assert delivered.text == full[:k] and delivered.rescuable
    body = rescue_body(REQUEST, delivered, strategy, client, provider, "rescue-model")
    # The rescue rung as the strategy expects it: it continues from the prefill it was sent, or
    # regenerates the same text on its own token boundaries.
    produced = full[len(prefill_of(body)) :] if strategy is CONTINUE else full
    assert strategy is REGENERATE or full.startswith(prefill_of(body))
    raw = rescue_stream(provider, split(data, produced))
    splice = splice_for(client, provider, delivered, strategy)
    tail = b"".join(splice.feed(piece) for piece in chunked(data, raw)) + splice.finish_if_cut()
    seen = assert_one_good_stream(client, head + tail, full)
    assert seen.ids == {delivered.id} and seen.models == {delivered.model}
    assert splice.state is SpliceState.DONE


def normalised(text: str) -> str:
    return " ".join(text.split())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), dialects, dialects, dialects, st.sampled_from(list(PrefixMatch)))
def test_any_regenerated_text_that_differs_gives_one_error_after_the_delivered_part(
    data: st.DataObject, client: Dialect, primary: Dialect, provider: Dialect, match: PrefixMatch
) -> None:
    delivered_text = data.draw(st.text(ALPHABET, min_size=1, max_size=20))
    regenerated = data.draw(st.text(ALPHABET, max_size=30))
    if match is PrefixMatch.EXACT:
        assume(not regenerated.startswith(delivered_text))
    else:
        assume(normalised(delivered_text) and not normalised(regenerated).startswith(normalised(delivered_text)))
    relay, head = begin(client, primary, split(data, delivered_text))
    splice = splice_for(client, provider, relay.delivered, REGENERATE, match=match)
    raw = rescue_stream(provider, split(data, regenerated))
    tail = b"".join(splice.feed(piece) for piece in chunked(data, raw)) + splice.finish_if_cut()
    assert_one_error_after(client, head + tail, delivered_text)
    assert splice.failure is not None and splice.failure.outcome is RescueOutcome.DIVERGED
