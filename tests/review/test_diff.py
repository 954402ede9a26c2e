"""The answer diff (E3): deterministic, empty for the same answer, symmetric, never raising on
whatever an answer's bytes are; each structured field named when it differs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Dialect
from extproc.review import Answer, AnswerDiff, Change, diff_answers, read_answer

texts = st.text(max_size=200)
answers = st.builds(
    Answer,
    text=texts,
    finish_reason=st.none() | st.sampled_from(["stop", "length", "tool_calls"]),
    tool_calls=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    input_tokens=st.none() | st.integers(0, 10_000),
    output_tokens=st.none() | st.integers(0, 10_000),
)


def openai_body(content: str | None = "Paris.", finish: str = "stop", calls: list[Any] | None = None) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return json.dumps(
        {
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2},
        }
    ).encode()


def test_an_openai_answer_reads_its_text_finish_reason_tool_calls_and_tokens() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "refund", "arguments": '{"b": 1, "a": [2]}'}}]
    assert read_answer(Dialect.OPENAI, openai_body(None, "tool_calls", calls)) == Answer(
        "", "tool_calls", ('refund({"a":[2],"b":1})',), 9, 2
    )


def test_an_anthropic_answer_reads_its_blocks_and_stop_reason() -> None:
    body = {
        "content": [
            {"type": "text", "text": "Let me check. "},
            {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"id": 7}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 11, "output_tokens": 5},
    }
    answer = read_answer(Dialect.ANTHROPIC, json.dumps(body).encode())
    assert answer == Answer("Let me check. ", "tool_use", ('lookup({"id":7})',), 11, 5)


def test_tool_arguments_differing_only_in_spacing_are_the_same_call() -> None:
    a = [{"function": {"name": "f", "arguments": '{"x": 1, "y": 2}'}}]
    b = [{"function": {"name": "f", "arguments": '{"y":2,"x":1}'}}]
    one, two = read_answer(Dialect.OPENAI, openai_body(calls=a)), read_answer(Dialect.OPENAI, openai_body(calls=b))
    assert diff_answers(one, two, "x/a", "y/b").identical


def test_a_different_text_is_a_unified_diff_naming_both_rungs() -> None:
    degraded = Answer("Paris is the capital.\nIt is in France.", "stop", (), 9, 8)
    original = Answer("Paris is the capital.\nIt is in Europe.", "length", (), 9, 12)
    diff = diff_answers(degraded, original, "secondary/claude", "primary/gpt-4o")
    assert diff.unified == (
        "--- degraded secondary/claude\n"
        "+++ tier 0 primary/gpt-4o\n"
        "@@ -1,2 +1,2 @@\n"
        " Paris is the capital.\n"
        "-It is in France.\n"
        "+It is in Europe.\n"
    )
    assert diff.changes == (Change("finish_reason", "stop", "length"), Change("output_tokens", "8", "12"))
    assert not diff.same_text and 0 < diff.similarity < 1


def test_a_tool_call_that_appears_only_on_tier_0_is_a_change() -> None:
    degraded = Answer("I cannot do that now.", "stop", (), None, None)
    original = replace(degraded, text="", finish_reason="tool_calls", tool_calls=('refund({"id":1})',))
    changes = {c.field: c for c in diff_answers(degraded, original, "a/b", "c/d").changes}
    assert changes["tool_calls"] == Change("tool_calls", "none", 'refund({"id":1})')


@given(answers)
def test_an_answer_compared_with_itself_differs_in_nothing(answer: Answer) -> None:
    diff = diff_answers(answer, answer, "a/b", "c/d")
    assert diff.identical and diff.unified == "" and diff.similarity == 1.0


@given(answers, answers)
def test_the_diff_is_deterministic_and_symmetric_in_what_differs(a: Answer, b: Answer) -> None:
    forward = diff_answers(a, b, "a/b", "c/d")
    assert forward == diff_answers(a, b, "a/b", "c/d")
    backward = diff_answers(b, a, "c/d", "a/b")
    assert [(c.field, c.degraded, c.original) for c in forward.changes] == [
        (c.field, c.original, c.degraded) for c in backward.changes
    ]
    assert forward.same_text == backward.same_text == (a.text == b.text)
    assert forward.similarity == backward.similarity and 0 <= forward.similarity <= 1


@given(answers, answers)
def test_a_diff_survives_its_encoding(a: Answer, b: Answer) -> None:
    diff = diff_answers(a, b, "a/b", "c/d")
    assert AnswerDiff.decode(json.loads(json.dumps(diff.encode()))) == diff


@given(
    st.sampled_from(list(Dialect)),
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=15,
    ).map(lambda v: json.dumps(v).encode()),
)
def test_reading_any_bytes_as_an_answer_never_raises(dialect: Dialect, body: bytes) -> None:
    assert isinstance(read_answer(dialect, body), Answer)
