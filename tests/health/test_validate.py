"""validate.check_completion: a 200 that breaks the task's health contract is a failure."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core import Dialect, Failure
from extproc.health.contract import OK, Verdict, check_completion
from extproc.policy import TaskClass

CONTRACT = TaskClass(min_output_tokens=1)


def openai(message: dict[str, Any], finish: str = "stop", completion_tokens: int | None = 5) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if completion_tokens is not None:
        body["usage"] = {
            "prompt_tokens": 3,
            "completion_tokens": completion_tokens,
            "total_tokens": 3 + completion_tokens,
        }
    return body


def anthropic(content: list[Any], stop: str = "end_turn", output_tokens: int | None = 5) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content,
        "stop_reason": stop,
    }
    if output_tokens is not None:
        body["usage"] = {"input_tokens": 3, "output_tokens": output_tokens}
    return body


def call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_use(name: str, tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_1", "name": name, "input": tool_input}


def failure_of(dialect: Dialect, body: Any, contract: TaskClass = CONTRACT) -> Failure | None:
    return check_completion(dialect, body, contract).failure


# ---- OpenAI (and OpenAI-compatible) ----------------------------------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.OPENAI, Dialect.OPENAI_COMPATIBLE])
def test_openai_text_answer_passes(dialect: Dialect) -> None:
    assert check_completion(dialect, openai({"content": "Paris."}), CONTRACT) == OK


def test_openai_content_parts_count_as_text() -> None:
    assert failure_of(Dialect.OPENAI, openai({"content": [{"type": "text", "text": "Paris."}]})) is None
    assert (
        failure_of(Dialect.OPENAI, openai({"content": [{"type": "text", "text": "  "}]})) is Failure.QUALITY_REGRESSION
    )


def test_openai_tool_call_answer_passes() -> None:
    body = openai({"content": None, "tool_calls": [call("get_weather", '{"city":"Paris"}')]}, finish="tool_calls")
    assert failure_of(Dialect.OPENAI, body) is None


@pytest.mark.parametrize("content", [None, "", "   \n", []])
def test_openai_empty_content_is_a_quality_regression(content: Any) -> None:
    assert check_completion(Dialect.OPENAI, openai({"content": content}), CONTRACT) == Verdict(
        Failure.QUALITY_REGRESSION, "empty content and no tool call"
    )


@pytest.mark.parametrize("name", ["", "  ", None, 7])
def test_openai_tool_call_with_empty_name_is_a_tool_mismatch(name: Any) -> None:
    body = openai({"content": None, "tool_calls": [call(name, "{}")]})
    assert check_completion(Dialect.OPENAI, body, CONTRACT) == Verdict(
        Failure.TOOL_MISMATCH, "tool call with an empty name"
    )


@pytest.mark.parametrize("arguments", ["", "{", '{"city": ', "[1, 2]", '"text"', None, {"city": "Paris"}])
def test_openai_unparseable_or_non_object_arguments_are_a_tool_mismatch(arguments: Any) -> None:
    body = openai({"content": None, "tool_calls": [call("get_weather", arguments)]})
    assert check_completion(Dialect.OPENAI, body, CONTRACT) == Verdict(
        Failure.TOOL_MISMATCH, "tool call 'get_weather' has empty or invalid arguments"
    )


def test_openai_tool_call_without_function_is_a_tool_mismatch() -> None:
    body = openai({"content": None, "tool_calls": [{"id": "call_1", "type": "function"}]})
    assert failure_of(Dialect.OPENAI, body) is Failure.TOOL_MISMATCH


def test_openai_every_tool_call_is_checked() -> None:
    body = openai({"content": None, "tool_calls": [call("a", "{}"), call("b", "{")]})
    assert check_completion(Dialect.OPENAI, body, CONTRACT).detail == "tool call 'b' has empty or invalid arguments"


def test_openai_content_filter_is_a_safety_block() -> None:
    body = openai({"content": None}, finish="content_filter")
    assert check_completion(Dialect.OPENAI, body, CONTRACT) == Verdict(
        Failure.SAFETY_BLOCK, "the provider's content filter stopped the answer"
    )


def test_openai_refusal_is_a_safety_block() -> None:
    # Structured outputs: a refusal comes as `message.refusal` with no content and finish "stop".
    # It is the provider's answer about the content; hopping would shop for a laxer model.
    body = openai({"content": None, "refusal": "I can't help with that."})
    assert failure_of(Dialect.OPENAI, body) is Failure.SAFETY_BLOCK


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"choices": []}, "answer has no choices"),
        ({"choices": "x"}, "answer has no choices"),
        ({"choices": ["x"]}, "answer has no choices"),
        ({}, "answer has no choices"),
        ({"choices": [{"finish_reason": "stop"}]}, "answer has no message"),
        ({"choices": [{"message": {"content": None, "tool_calls": {"a": 1}}}]}, "tool_calls is not a list"),
    ],
)
def test_openai_malformed_answer_is_a_schema_error(body: dict[str, Any], detail: str) -> None:
    assert check_completion(Dialect.OPENAI, body, CONTRACT) == Verdict(Failure.SCHEMA_ERROR, detail)


def test_openai_fewer_tokens_than_the_task_minimum_is_a_quality_regression() -> None:
    contract = TaskClass(min_output_tokens=10)
    assert check_completion(Dialect.OPENAI, openai({"content": "Hi"}, completion_tokens=9), contract) == Verdict(
        Failure.QUALITY_REGRESSION, "9 output tokens, fewer than the task's minimum of 10"
    )
    assert failure_of(Dialect.OPENAI, openai({"content": "Hi"}, completion_tokens=10), contract) is None


def test_openai_token_minimum_needs_a_reported_count() -> None:
    contract = TaskClass(min_output_tokens=10)
    assert failure_of(Dialect.OPENAI, openai({"content": "Hi"}, completion_tokens=None), contract) is None
    body = openai({"content": "Hi"})
    body["usage"]["completion_tokens"] = True  # not a count
    assert failure_of(Dialect.OPENAI, body, contract) is None


def test_zero_token_minimum_accepts_a_zero_count() -> None:
    assert (
        failure_of(Dialect.OPENAI, openai({"content": "Hi"}, completion_tokens=0), TaskClass(min_output_tokens=0))
        is None
    )


# ---- Anthropic --------------------------------------------------------------------------------------


def test_anthropic_text_answer_passes() -> None:
    assert check_completion(Dialect.ANTHROPIC, anthropic([{"type": "text", "text": "Paris."}]), CONTRACT) == OK


def test_anthropic_tool_use_answer_passes_even_with_empty_input() -> None:
    body = anthropic([{"type": "text", "text": ""}, tool_use("now", {})], stop="tool_use")
    assert failure_of(Dialect.ANTHROPIC, body) is None


@pytest.mark.parametrize(
    "content",
    [[], [{"type": "text", "text": ""}], [{"type": "text", "text": " "}], [{"type": "thinking", "thinking": "hmm"}]],
)
def test_anthropic_empty_content_is_a_quality_regression(content: list[Any]) -> None:
    assert failure_of(Dialect.ANTHROPIC, anthropic(content)) is Failure.QUALITY_REGRESSION


@pytest.mark.parametrize("name", ["", None])
def test_anthropic_tool_use_with_empty_name_is_a_tool_mismatch(name: Any) -> None:
    assert failure_of(Dialect.ANTHROPIC, anthropic([tool_use(name, {})])) is Failure.TOOL_MISMATCH


@pytest.mark.parametrize("tool_input", [None, "{}", [1], 3])
def test_anthropic_tool_use_with_non_object_input_is_a_tool_mismatch(tool_input: Any) -> None:
    assert check_completion(Dialect.ANTHROPIC, anthropic([tool_use("get_weather", tool_input)]), CONTRACT) == Verdict(
        Failure.TOOL_MISMATCH, "tool call 'get_weather' has empty or invalid arguments"
    )


def test_anthropic_refusal_is_a_safety_block() -> None:
    body = anthropic([{"type": "text", "text": "I can't help with that."}], stop="refusal")
    assert check_completion(Dialect.ANTHROPIC, body, CONTRACT) == Verdict(
        Failure.SAFETY_BLOCK, "the provider refused the request"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"type": "message"}, "answer has no content list"),
        ({"content": "Paris."}, "answer has no content list"),
        ({"content": ["Paris."]}, "content block is not an object"),
    ],
)
def test_anthropic_malformed_answer_is_a_schema_error(body: dict[str, Any], detail: str) -> None:
    assert check_completion(Dialect.ANTHROPIC, body, CONTRACT) == Verdict(Failure.SCHEMA_ERROR, detail)


def test_anthropic_fewer_tokens_than_the_task_minimum_is_a_quality_regression() -> None:
    contract = TaskClass(min_output_tokens=10)
    body = anthropic([{"type": "text", "text": "Hi"}], output_tokens=2)
    assert check_completion(Dialect.ANTHROPIC, body, contract) == Verdict(
        Failure.QUALITY_REGRESSION, "2 output tokens, fewer than the task's minimum of 10"
    )


# ---- any dialect -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("body", [None, [], "Paris.", 3, True])
def test_non_object_answer_is_a_schema_error(dialect: Dialect, body: Any) -> None:
    assert check_completion(dialect, body, CONTRACT) == Verdict(Failure.SCHEMA_ERROR, "answer is not a JSON object")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries({}, optional={"message": json_values, "finish_reason": json_values}), max_size=2
        )
        | json_values,
        "content": st.lists(json_values, max_size=3) | json_values,
        "usage": json_values,
        "stop_reason": json_values,
    },
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(Dialect)), json_values | shaped, st.integers(0, 20))
def test_check_completion_never_crashes_on_any_json(dialect: Dialect, body: Any, minimum: int) -> None:
    verdict = check_completion(dialect, body, TaskClass(min_output_tokens=minimum))
    assert verdict.failure is None or isinstance(verdict.failure, Failure)
    assert (verdict.failure is None) == (verdict.detail == "")
