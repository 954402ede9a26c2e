from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.translate import TranslationError, anthropic_to_openai, openai_to_anthropic

MODEL = "gpt-4o"
USER = {"role": "user", "content": "hi"}
TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {}}}


def translate(**fields: Any) -> dict[str, Any]:
    return anthropic_to_openai.request({"max_tokens": 5, "messages": [USER], **fields}, MODEL)


def test_request_sets_the_rung_model_and_keeps_max_tokens_optional() -> None:
    out = anthropic_to_openai.request({"model": "claude", "messages": [USER]}, MODEL)
    assert out == {"model": MODEL, "messages": [USER]}


def test_request_leaves_the_client_body_untouched() -> None:
    body = {
        "system": [{"type": "text", "text": "s"}],
        "messages": [
            USER,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    before = copy.deepcopy(body)
    anthropic_to_openai.request(body, MODEL)
    assert body == before


def test_tool_choice_and_parallel_flag_without_tools_are_dropped() -> None:
    out = translate(tools=[], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert "tool_choice" not in out and "parallel_tool_calls" not in out


def test_tool_choice_auto_maps_to_auto() -> None:
    assert translate(tools=[TOOL], tool_choice={"type": "auto"})["tool_choice"] == "auto"


def test_a_turn_of_only_tool_results_gives_only_tool_messages() -> None:
    content = [
        {
            "type": "tool_result",
            "tool_use_id": "t",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]
    out = anthropic_to_openai.request({"messages": [{"role": "user", "content": content}]}, MODEL)
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_documents_become_file_or_text_parts() -> None:
    content = [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
    ]
    out = anthropic_to_openai.request({"messages": [{"role": "user", "content": content}]}, MODEL)
    assert out["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "notes"},
    ]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([USER], "must be a JSON object"),
        ({}, "messages must be a list"),
        ({"messages": []}, "at least one message"),
        ({"messages": [3]}, r"messages\[0\] must be an object"),
        ({"messages": [{"role": "user", "content": 3}]}, "string or a list of blocks"),
        ({"messages": [{"role": "user", "content": [3]}]}, "must be a content block"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}, "'search_result'"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text must be a string"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "image sources",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AA"}}]}
                ]
            },
            "media_type and data",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}],
                    }
                ]
            },
            "documents",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 3}]}]},
            "string or a list",
        ),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}]}, "string id and name"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}
                ]
            },
            "input must be an object",
        ),
        ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use"}]}]}, "'server_tool_use'"),
        ({"messages": [USER], "system": 3}, "system must be"),
        ({"messages": [USER], "system": [{"type": "image"}]}, r"system\[0\]"),
        ({"messages": [USER], "max_tokens": -1}, "positive integer, but was -1"),
        ({"messages": [USER], "temperature": [1]}, "temperature must be a number"),
        ({"messages": [USER], "stop_sequences": "END"}, "list of strings"),
        ({"messages": [USER], "stream": 1}, "stream must be a boolean"),
        ({"messages": [USER], "mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
        ({"messages": [USER], "output_config": {"format": {"type": "regex"}}}, "json_schema"),
        ({"messages": [USER], "output_config": {"format": {"type": "json_schema"}}}, "schema must be"),
        ({"messages": [USER], "tools": "f"}, "tools must be a list"),
        ({"messages": [USER], "tools": [3]}, r"tools\[0\] must be an object"),
        ({"messages": [USER], "tools": [{"name": "f"}]}, "input_schema"),
        ({"messages": [USER], "tools": [{"input_schema": {}}]}, "name must be"),
        ({"messages": [USER], "tools": [TOOL], "tool_choice": "auto"}, "tool_choice.type"),
        ({"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ],
)
def test_request_refuses_what_it_cannot_express_with_a_clear_message(body: Any, match: str) -> None:
    with pytest.raises(TranslationError, match=match):
        anthropic_to_openai.request(body, MODEL)


def test_response_reads_text_parts_from_compatible_servers() -> None:
    completion = {
        "id": "x",
        "choices": [
            {
                "message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                "finish_reason": "stop",
            }
        ],
    }
    out = anthropic_to_openai.response(completion, MODEL)
    assert out["content"] == [{"type": "text", "text": "ab"}]
    assert out["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_response_keeps_an_id_that_already_looks_like_a_message_id() -> None:
    completion = {"id": "msg_1", "choices": [{"message": {"content": "a"}, "finish_reason": "stop"}]}
    assert anthropic_to_openai.response(completion, MODEL)["id"] == "msg_1"


@pytest.mark.parametrize("body", [[], {}, {"choices": []}, {"choices": [{"message": "hi"}]}])
def test_response_refuses_a_body_that_is_not_a_chat_completion(body: Any) -> None:
    with pytest.raises(TranslationError, match="not a chat completion"):
        anthropic_to_openai.response(body, MODEL)


# --- properties ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
lenient = settings(suppress_health_check=[HealthCheck.too_slow])


def anything_or(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | json_values


_source = st.fixed_dictionaries(
    {"type": anything_or("base64", "url", "text")},
    optional={"media_type": anything_or("image/png", "application/pdf"), "data": json_values, "url": json_values},
)
_block = st.fixed_dictionaries(
    {"type": anything_or("text", "image", "document", "tool_use", "tool_result", "thinking")},
    optional={
        "text": json_values,
        "source": _source | json_values,
        "id": anything_or("t"),
        "name": anything_or("f"),
        "input": json_values,
        "tool_use_id": anything_or("t"),
        "content": json_values,
    },
)
_message = st.fixed_dictionaries(
    {
        "role": anything_or("user", "assistant"),
        "content": st.text(max_size=5) | st.lists(_block, max_size=4) | json_values,
    },
)
_tool = st.fixed_dictionaries(
    {"name": anything_or("f")},
    optional={"type": anything_or("custom", "bash_20250124"), "input_schema": json_values, "description": json_values},
)
messages_requests = st.fixed_dictionaries(
    {"messages": st.lists(_message, max_size=5) | json_values},
    optional={
        "system": json_values | st.lists(st.fixed_dictionaries({"type": anything_or("text"), "text": json_values})),
        "tools": st.lists(_tool, max_size=2) | json_values,
        "tool_choice": anything_or({"type": "any"}, {"type": "tool", "name": "f"}),
        "max_tokens": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "stop_sequences": json_values,
        "stream": json_values,
        "metadata": json_values,
        "output_config": json_values,
        "mcp_servers": json_values,
    },
)


@lenient
@given(json_values | messages_requests)
def test_request_raises_nothing_but_translation_error(body: Any) -> None:
    with contextlib.suppress(TranslationError):
        anthropic_to_openai.request(body, MODEL)


_call = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "function": st.fixed_dictionaries(
            {}, optional={"name": json_values, "arguments": anything_or("{}", "{bad", "[]")}
        )
        | json_values,
    },
)
completions = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "message": st.fixed_dictionaries(
                        {},
                        optional={
                            "content": json_values,
                            "refusal": json_values,
                            "tool_calls": st.lists(_call, max_size=3) | json_values,
                        },
                    )
                    | json_values,
                    "finish_reason": anything_or("stop", "tool_calls", "length"),
                },
            ),
            max_size=2,
        )
        | json_values
    },
    optional={"id": json_values, "usage": json_values},
)


@lenient
@given(json_values | completions)
def test_response_raises_nothing_but_translation_error(body: Any) -> None:
    with contextlib.suppress(TranslationError):
        anthropic_to_openai.response(body, MODEL)


# A final assistant turn is a prefill, which loses trailing whitespace on its way to Anthropic.
_texts = st.text(min_size=1, max_size=30).map(str.rstrip).filter(bool)


@lenient
@given(st.lists(_texts, min_size=1, max_size=6), st.none() | _texts)
def test_a_text_conversation_survives_the_trip_to_openai_and_back(turns: list[str], system: str | None) -> None:
    body: dict[str, Any] = {
        "max_tokens": 9,
        "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)],
    }
    if system:
        body["system"] = system
    there = anthropic_to_openai.request(body, "gpt")
    back = openai_to_anthropic.request(there, "claude")
    assert back == {**body, "model": "claude"}
