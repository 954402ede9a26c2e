"""translate.context: a conversation fitted into a smaller rung's window (F6)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Dialect
from extproc.translate import CHARS_PER_TOKEN, estimate_tokens, trim_context
from extproc.translate.context import output_reserve, placeholder_message
from extproc.translate.fields import dumps

SYSTEM = {"role": "system", "content": "You are the clinic's scheduling assistant."}


def chat(turns: int, words: int = 30) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in range(turns):
        out.append({"role": "user", "content": f"q{t} " + "word " * words})
        out.append({"role": "assistant", "content": f"a{t} " + "word " * words})
    return out


def test_a_body_that_fits_is_left_alone() -> None:
    body = {"model": "m", "messages": [SYSTEM, *chat(2)]}
    trim = trim_context(Dialect.OPENAI, body, 10_000, placeholder=True)
    assert trim.body is body and trim.dropped == 0 and trim.fits


def test_the_middle_goes_and_the_system_prompt_and_latest_turns_stay() -> None:
    last = {"role": "user", "content": "and now?"}
    body = {"model": "m", "messages": [SYSTEM, *chat(10), last]}
    trim = trim_context(Dialect.OPENAI, body, 200, placeholder=True)
    kept = trim.body["messages"]
    assert kept[0] == SYSTEM
    assert kept[1] == placeholder_message(trim.dropped)
    assert kept[-1] == last
    assert kept[2:] == body["messages"][1 + trim.dropped :]  # the latest turns, whole, in order
    assert trim.fits and estimate_tokens(trim.body) <= 200


def test_without_a_placeholder_nothing_is_added() -> None:
    body = {"model": "m", "messages": [SYSTEM, *chat(10), {"role": "user", "content": "?"}]}
    trim = trim_context(Dialect.OPENAI, body, 200, placeholder=False)
    assert trim.dropped > 0
    assert trim.body["messages"][1] == body["messages"][1 + trim.dropped]


def test_the_output_the_request_asks_room_for_counts_against_the_window() -> None:
    body = {"model": "m", "max_tokens": 150, "messages": [SYSTEM, *chat(10), {"role": "user", "content": "?"}]}
    assert output_reserve(body) == 150
    trim = trim_context(Dialect.OPENAI, body, 350, placeholder=True)
    assert trim.fits and estimate_tokens(trim.body) + 150 <= 350


def test_anthropic_keeps_its_system_field_and_a_tool_use_with_its_result() -> None:
    call = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "find", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}]}
    body = {
        "model": "m",
        "max_tokens": 20,
        "system": "Be brief.",
        "messages": [
            *chat(8),
            {"role": "user", "content": "find it"},
            call,
            result,
            {"role": "user", "content": "ok?"},
        ],
    }
    trim = trim_context(Dialect.ANTHROPIC, body, 150, placeholder=True)
    kept = trim.body["messages"]
    assert trim.body["system"] == "Be brief."
    assert kept[-3:] == [call, result, {"role": "user", "content": "ok?"}]
    assert trim.fits


def test_a_last_turn_larger_than_the_window_is_sent_as_it_is_and_said_not_to_fit() -> None:
    body = {"model": "m", "messages": [SYSTEM, *chat(2), {"role": "user", "content": "x" * 4000}]}
    trim = trim_context(Dialect.OPENAI, body, 100, placeholder=False)
    assert not trim.fits
    assert trim.body["messages"] == [SYSTEM, body["messages"][-1]]


# ---- properties -------------------------------------------------------------------------------

texts = st.text(alphabet="abc xyz", max_size=120)


@st.composite
def openai_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed conversations: user turns, answers, tool calls each followed by its results,
    system or developer messages anywhere."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    calls = 0
    for _ in range(draw(st.integers(1, 12))):
        messages.append({"role": "user", "content": draw(texts)})
        kind = draw(st.sampled_from(["answer", "tools", "system", "none"]))
        if kind == "answer":
            messages.append({"role": "assistant", "content": draw(texts)})
        elif kind == "tools":
            ids = [f"call_{calls + i}" for i in range(draw(st.integers(1, 3)))]
            calls += len(ids)
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
                    ],
                }
            )
            messages += [{"role": "tool", "tool_call_id": i, "content": draw(texts)} for i in ids]
            if draw(st.booleans()):
                messages.append({"role": "assistant", "content": draw(texts)})
        elif kind == "system":
            messages.append({"role": "developer", "content": draw(texts)})
    return messages


def _last_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    talk = [m for m in messages if m["role"] not in ("system", "developer")]
    last_user = max(i for i, m in enumerate(talk) if m["role"] == "user")
    return talk[last_user:]


@given(openai_conversations(), st.integers(20, 3000), st.booleans())
def test_trimming_keeps_system_and_last_turn_and_never_orphans_a_tool_result(
    messages: list[dict[str, Any]], window: int, placeholder: bool
) -> None:
    body = {"model": "m", "messages": messages}
    trim = trim_context(Dialect.OPENAI, body, window, placeholder=placeholder)
    out = trim.body["messages"]
    pinned = [m for m in messages if m["role"] in ("system", "developer")]
    # Every system prompt kept, and no system text the request did not carry.
    assert [m for m in out if m["role"] in ("system", "developer")] == pinned
    # The latest turn, whole, at the end (system prompts among it stay where they were).
    last = _last_turn(messages)
    talk_out = [m for m in out if m["role"] not in ("system", "developer")]
    assert talk_out[-len(last) :] == last
    # Never a tool result without the call it answers, before it.
    seen: set[str] = set()
    for m in out:
        if m["role"] == "tool":
            assert m["tool_call_id"] in seen
        for call in m.get("tool_calls") or ():
            seen.add(call["id"])
    # The kept conversation is a suffix of the original; the placeholder marks the cut.
    talk = [m for m in messages if m["role"] not in ("system", "developer")]
    kept = [m for m in out if m["role"] not in ("system", "developer")]
    if trim.dropped:
        if placeholder:
            assert kept[0] == placeholder_message(trim.dropped)
            kept = kept[1:]
        assert talk[trim.dropped :] == kept
    else:
        assert trim.body is body
    # Fits whenever the system prompt and the last turn do (with the placeholder, if any).
    smallest = {"model": "m", "messages": [*pinned, *([placeholder_message(len(talk))] if placeholder else []), *last]}
    if len(dumps(smallest)) <= window * CHARS_PER_TOKEN:
        assert trim.fits
        assert len(dumps(trim.body)) <= window * CHARS_PER_TOKEN
    assert trim.fits == (len(dumps(trim.body)) <= window * CHARS_PER_TOKEN)


@st.composite
def anthropic_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed Messages conversations: a tool_use answered by the next user turn's tool_result."""
    messages: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 10))):
        messages.append({"role": "user", "content": draw(texts)})
        if draw(st.booleans()):
            use = {"type": "tool_use", "id": f"t{n}", "name": "f", "input": {}}
            messages.append({"role": "assistant", "content": [{"type": "text", "text": draw(texts)}, use]})
            result = {"type": "tool_result", "tool_use_id": f"t{n}", "content": draw(texts)}
            messages.append({"role": "user", "content": [result]})
        messages.append({"role": "assistant", "content": draw(texts)})
    if draw(st.booleans()):
        messages.append({"role": "user", "content": draw(texts)})
    return messages


@given(anthropic_conversations(), st.integers(20, 2000), st.booleans())
def test_anthropic_trimming_keeps_system_and_never_cuts_between_a_tool_use_and_its_result(
    messages: list[dict[str, Any]], window: int, placeholder: bool
) -> None:
    body = {"model": "m", "max_tokens": 10, "system": "Be brief.", "messages": messages}
    trim = trim_context(Dialect.ANTHROPIC, body, window, placeholder=placeholder)
    out = trim.body["messages"]
    assert trim.body["system"] == "Be brief."
    uses: set[str] = set()
    for m in out:
        for block in m["content"] if isinstance(m["content"], list) else ():
            if block["type"] == "tool_use":
                uses.add(block["id"])
            if block["type"] == "tool_result":
                assert block["tool_use_id"] in uses
    kept = out[1:] if trim.dropped and placeholder else out
    assert kept == messages[trim.dropped :]
    assert kept[0]["role"] == "user" or out[0] == placeholder_message(trim.dropped)
    assert trim.fits == (len(dumps(trim.body)) + 10 * CHARS_PER_TOKEN <= window * CHARS_PER_TOKEN)
