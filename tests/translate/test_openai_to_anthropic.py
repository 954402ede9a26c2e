from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.translate import TranslationError, anthropic_to_openai, openai_to_anthropic

MODEL = "claude-sonnet-4-5"
USER = {"role": "user", "content": "hi"}


def translate(**fields: Any) -> dict[str, Any]:
    return openai_to_anthropic.request({"messages": [USER], **fields}, MODEL)


def refused(body: Any, match: str) -> None:
    with pytest.raises(TranslationError, match=match):
        openai_to_anthropic.request(body, MODEL)


def test_request_sets_the_rung_model_and_the_default_max_tokens() -> None:
    out = openai_to_anthropic.request({"model": "gpt-4o", "messages": [USER]}, MODEL)
    assert out == {"model": MODEL, "max_tokens": 4096, "messages": [USER]}


def test_request_leaves_the_client_body_untouched() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "s"},
            USER,
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": "r"},
            {"role": "tool", "tool_call_id": "c", "content": "r2"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {}}}}],
        "parallel_tool_calls": False,
    }
    before = copy.deepcopy(body)
    openai_to_anthropic.request(body, MODEL)
    assert body == before


def test_parallel_tool_calls_false_alone_gives_auto_without_parallel_use() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate(tools=tools, parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in translate(tool_choice="required", tools=[])
    assert "tool_choice" not in translate(tool_choice="required")


def test_tool_parameters_without_a_type_become_an_object_schema() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {}}}}]
    assert translate(tools=tools)["tools"][0]["input_schema"] == {"type": "object", "properties": {}}


def test_tool_results_come_first_in_a_merged_user_turn() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "user", "content": "also"},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ]
    out = openai_to_anthropic.request({"messages": messages}, MODEL)
    assert [b["type"] for b in out["messages"][-1]["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        ("Sure, here it is: ", [{"role": "assistant", "content": "Sure, here it is:"}]),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": " \n"}], [{"role": "assistant", "content": "a"}]),
        ("  ", []),
    ],
)
def test_a_final_assistant_prefill_loses_its_trailing_whitespace(last: Any, expected: list[dict[str, Any]]) -> None:
    out = translate(messages=[USER, {"role": "assistant", "content": last}])
    assert out["messages"] == [USER, *expected]


def test_blank_messages_are_skipped_because_anthropic_refuses_blank_text() -> None:
    blank = [{"type": "text", "text": " "}]
    out = translate(messages=[USER, {"role": "assistant", "content": "\n"}, {"role": "user", "content": blank}])
    assert out["messages"] == [USER]
    refused({"messages": [{"role": "assistant", "content": " "}]}, "at least one user or assistant")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([USER], "must be a JSON object"),
        ({"messages": [{"role": "system", "content": "s"}]}, "at least one user or assistant"),
        ({"messages": ["hi"]}, r"messages\[0\] must be an object"),
        ({"messages": [{"role": "function", "content": "x"}]}, "'function' is not supported"),
        ({"messages": [{"role": "user", "content": 3}]}, "must be a string or a list"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "must be a string"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}, "must be a text part"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "http",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}],
                    }
                ]
            },
            "image/tiff",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}]}
                ]
            },
            "base64",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, "file ids"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/csv;base64,AAAA"}}]}
                ]
            },
            "only PDF",
        ),
        ({"messages": [{"role": "assistant", "function_call": {"name": "f"}}]}, "deprecated"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "must be a JSON object",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom"}]}]},
            "only function tool calls",
        ),
        ({"messages": [{"role": "tool", "content": "r"}]}, "tool_call_id"),
        ({"messages": [USER], "max_tokens": 0}, "positive integer, but was 0"),
        ({"messages": [USER], "max_completion_tokens": True}, "positive integer"),
        ({"messages": [USER], "temperature": "hot"}, "temperature must be a number"),
        ({"messages": [USER], "top_p": None, "stop": [1]}, "stop must be"),
        ({"messages": [USER], "stream": "yes"}, "stream must be a boolean"),
        ({"messages": [USER], "logprobs": True}, "logprobs"),
        ({"messages": [USER], "modalities": ["text", "audio"]}, "audio output"),
        ({"messages": [USER], "functions": [{"name": "f"}]}, "deprecated"),
        ({"messages": [USER], "response_format": {"type": "grammar"}}, "response_format.type"),
        ({"messages": [USER], "response_format": {"type": "json_schema"}}, "schema must be"),
        ({"messages": [USER], "tools": {"f": {}}}, "tools must be a list"),
        ({"messages": [USER], "tools": [{"type": "function", "function": {}}]}, "name must be"),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]},
            "parameters must be",
        ),
        (
            {
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "sometimes",
            },
            "tool_choice must be",
        ),
    ],
)
def test_request_refuses_what_it_cannot_express_with_a_clear_message(body: Any, match: str) -> None:
    refused(body, match)


def test_response_of_only_tool_calls_has_null_content() -> None:
    message = {
        "id": "msg_1",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    out = openai_to_anthropic.response(message, MODEL, created=3)
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("body", [[], {}, {"content": "text"}, {"type": "error", "error": {}}])
def test_response_refuses_a_body_that_is_not_a_message(body: Any) -> None:
    with pytest.raises(TranslationError, match="not an Anthropic message"):
        openai_to_anthropic.response(body, MODEL, created=0)


# --- properties ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
lenient = settings(suppress_health_check=[HealthCheck.too_slow])


def anything_or(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | json_values


_part = st.fixed_dictionaries(
    {"type": anything_or("text", "image_url", "file", "refusal", "input_audio")},
    optional={
        "text": json_values,
        "image_url": anything_or({"url": "data:image/png;base64,AA"}, {"url": "https://x"}),
        "file": json_values,
        "refusal": json_values,
    },
)
_function = st.fixed_dictionaries({}, optional={"name": anything_or("f"), "arguments": anything_or("{}", "{bad", "[]")})
_call = st.fixed_dictionaries({"id": anything_or("c1"), "type": anything_or("function"), "function": _function})
_message = st.fixed_dictionaries(
    {"role": anything_or("system", "developer", "user", "assistant", "tool")},
    optional={
        "content": st.none() | st.text(max_size=5) | st.lists(_part, max_size=3) | json_values,
        "tool_calls": st.lists(_call, max_size=2) | json_values,
        "tool_call_id": anything_or("c1"),
        "function_call": st.none() | json_values,
    },
)
_tool = st.fixed_dictionaries(
    {
        "type": anything_or("function"),
        "function": st.fixed_dictionaries(
            {"name": anything_or("f")}, optional={"parameters": json_values, "description": json_values}
        ),
    },
)
chat_requests = st.fixed_dictionaries(
    {"messages": st.lists(_message, max_size=5) | json_values},
    optional={
        "tools": st.lists(_tool, max_size=2) | json_values,
        "tool_choice": anything_or("auto", "required", "none", {"type": "function", "function": {"name": "f"}}),
        "parallel_tool_calls": json_values,
        "max_tokens": json_values,
        "max_completion_tokens": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "stop": json_values,
        "stream": json_values,
        "user": json_values,
        "n": json_values,
        "response_format": anything_or({"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {}}}),
        "logprobs": json_values,
        "modalities": json_values,
        "audio": json_values,
    },
)


@lenient
@given(json_values | chat_requests)
def test_request_raises_nothing_but_translation_error(body: Any) -> None:
    with contextlib.suppress(TranslationError):
        openai_to_anthropic.request(body, MODEL)


_block = st.fixed_dictionaries(
    {"type": anything_or("text", "tool_use", "thinking")},
    optional={"text": json_values, "id": json_values, "name": json_values, "input": json_values},
)
messages = st.fixed_dictionaries(
    {"content": st.lists(_block, max_size=4) | json_values},
    optional={
        "id": json_values,
        "stop_reason": anything_or("end_turn", "tool_use", "max_tokens"),
        "usage": json_values,
    },
)


@lenient
@given(json_values | messages)
def test_response_raises_nothing_but_translation_error(body: Any) -> None:
    with contextlib.suppress(TranslationError):
        openai_to_anthropic.response(body, MODEL, created=0)


# A final assistant turn is a prefill, which loses trailing whitespace on its way to Anthropic.
_texts = st.text(min_size=1, max_size=30).map(str.rstrip).filter(bool)


@lenient
@given(st.lists(_texts, min_size=1, max_size=6), st.none() | _texts)
def test_a_text_conversation_survives_the_trip_to_anthropic_and_back(turns: list[str], system: str | None) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
    there = openai_to_anthropic.request({"messages": messages, "max_tokens": 9}, MODEL)
    back = anthropic_to_openai.request(there, "gpt")
    assert back["messages"] == messages
    assert back["max_completion_tokens"] == 9
