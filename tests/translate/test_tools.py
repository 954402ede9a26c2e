"""translate.tools: a rung's tool mode applied to the client's request (T5)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Dialect, ToolMode
from extproc.translate import PLAN_KEY, shape_tools, tool_name

WRITE = frozenset({"issue_refund"})


def openai_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": name, "parameters": {"type": "object"}}}


def anthropic_tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": name, "input_schema": {"type": "object"}}


OPENAI: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "refund 7"}],
    "tools": [openai_tool("issue_refund"), openai_tool("lookup_order")],
    "tool_choice": {"type": "function", "function": {"name": "issue_refund"}},
    "parallel_tool_calls": False,
}


def test_full_mode_changes_nothing() -> None:
    shaped = shape_tools(Dialect.OPENAI, OPENAI, ToolMode.FULL, WRITE)
    assert shaped.body is OPENAI and shaped.removed == ()


def test_read_only_removes_write_tools_and_a_choice_that_named_one() -> None:
    shaped = shape_tools(Dialect.OPENAI, OPENAI, ToolMode.READ_ONLY, WRITE)
    assert [tool_name(t) for t in shaped.body["tools"]] == ["lookup_order"]
    assert shaped.body["tool_choice"] == "auto"
    assert shaped.body["parallel_tool_calls"] is False  # tools remain: still meaningful
    assert shaped.removed == ("issue_refund",) and not shaped.planned


def test_read_only_without_write_tools_in_the_request_changes_nothing() -> None:
    body = {**OPENAI, "tools": [openai_tool("lookup_order")], "tool_choice": "required"}
    shaped = shape_tools(Dialect.OPENAI, body, ToolMode.READ_ONLY, WRITE)
    assert shaped.body is body and shaped.removed == ()


def test_read_only_that_removes_every_tool_removes_choice_and_parallel_calls_too() -> None:
    body = {**OPENAI, "tools": [openai_tool("issue_refund")], "tool_choice": "required"}
    shaped = shape_tools(Dialect.OPENAI, body, ToolMode.READ_ONLY, WRITE)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & shaped.body.keys()


def test_no_tools_turns_earlier_calls_and_results_into_text() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"o":7}'}}
    body = {
        **OPENAI,
        "messages": [
            {"role": "user", "content": "where is 7?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
        ],
    }
    shaped = shape_tools(Dialect.OPENAI, body, ToolMode.NO_TOOLS, WRITE)
    assert shaped.body["messages"] == [
        {"role": "user", "content": "where is 7?"},
        {"role": "assistant", "content": '[called tool lookup_order with {"o":7}]'},
        {"role": "user", "content": "[result of tool call c1: shipped]"},
    ]
    assert shaped.removed == ("issue_refund", "lookup_order")


def test_plan_only_asks_for_the_calls_as_data_after_the_clients_system_prompt() -> None:
    shaped = shape_tools(Dialect.OPENAI, OPENAI, ToolMode.PLAN_ONLY, WRITE)
    messages = shaped.body["messages"]
    assert messages[0] == {"role": "system", "content": "Be kind."}
    assert messages[1]["role"] == "system" and messages[1]["content"].startswith("[rungway]")
    assert PLAN_KEY in messages[1]["content"] and "lookup_order" in messages[1]["content"]
    assert messages[2] == OPENAI["messages"][1]
    assert shaped.planned and "tools" not in shaped.body


def test_anthropic_read_only_and_plan_only() -> None:
    body = {
        "model": "claude",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "Be kind."}],
        "tools": [anthropic_tool("issue_refund"), anthropic_tool("lookup_order")],
        "tool_choice": {"type": "tool", "name": "issue_refund", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup_order", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
        ],
    }
    read = shape_tools(Dialect.ANTHROPIC, body, ToolMode.READ_ONLY, WRITE)
    assert read.body["tools"] == [anthropic_tool("lookup_order")]
    assert read.body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert read.body["messages"] == body["messages"]  # tools remain: the blocks stay
    plan = shape_tools(Dialect.ANTHROPIC, body, ToolMode.PLAN_ONLY, WRITE)
    assert plan.body["system"][0] == {"type": "text", "text": "Be kind."}
    assert plan.body["system"][1]["text"].startswith("[rungway]")
    assert not {"tools", "tool_choice"} & plan.body.keys()
    assert plan.body["messages"][1]["content"] == [{"type": "text", "text": "[called tool lookup_order with {}]"}]
    assert plan.body["messages"][2]["content"] == [{"type": "text", "text": "[result of tool call t1: ok]"}]


def test_a_request_without_tools_is_never_changed() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for mode in ToolMode:
        assert shape_tools(Dialect.OPENAI, body, mode, WRITE).body is body


# ---- properties -------------------------------------------------------------------------------

names = st.sampled_from(["issue_refund", "send_email", "lookup_order", "search"])


@st.composite
def tool_requests(draw: st.DrawFn) -> tuple[Dialect, dict[str, Any]]:
    dialect = draw(st.sampled_from([Dialect.OPENAI, Dialect.ANTHROPIC]))
    tools = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    named = draw(names)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    if dialect is Dialect.OPENAI:
        body["tools"] = [openai_tool(n) for n in tools]
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    "auto",
                    "none",
                    "required",
                    {"type": "function", "function": {"name": named}},
                    {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [openai_tool(named)]}},
                ]
            )
        )
        if draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    else:
        body["tools"] = [anthropic_tool(n) for n in tools]
        body["tool_choice"] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": named}])
        )
    return dialect, body


def _named_by_choice(choice: object) -> set[str]:
    text = json.dumps(choice)
    return {n for n in ("issue_refund", "send_email", "lookup_order", "search") if f'"{n}"' in text}


@given(tool_requests(), st.sampled_from(list(ToolMode)), st.frozensets(names))
def test_tool_filtering_never_leaves_a_choice_pointing_at_a_removed_tool(
    request: tuple[Dialect, dict[str, Any]], mode: ToolMode, write: frozenset[str]
) -> None:
    dialect, body = request
    shaped = shape_tools(dialect, body, mode, write)
    out = shaped.body
    before = [tool_name(t) for t in body["tools"]]
    after = [tool_name(t) for t in out.get("tools", [])]
    assert set(after) <= set(before)
    assert set(shaped.removed) == set(before) - set(after)
    if mode is ToolMode.FULL:
        assert out is body
    if mode is ToolMode.READ_ONLY:
        assert not set(after) & write
        assert after == [n for n in before if n not in write]
    if mode in (ToolMode.NO_TOOLS, ToolMode.PLAN_ONLY):
        assert not after
    if not after:
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys()
    else:
        assert not _named_by_choice(out.get("tool_choice")) & set(shaped.removed)
    assert shaped.planned == (mode is ToolMode.PLAN_ONLY)


def test_retrieval_only_keeps_only_the_retrieval_tools() -> None:
    body = {**OPENAI, "tools": [*OPENAI["tools"], openai_tool("search_kb")]}
    shaped = shape_tools(Dialect.OPENAI, body, ToolMode.RETRIEVAL_ONLY, WRITE, frozenset({"search_kb"}))
    assert [tool_name(t) for t in shaped.body["tools"]] == ["search_kb"]
    assert shaped.body["tool_choice"] == "auto"  # it named issue_refund, which is gone
    assert set(shaped.removed) == {"issue_refund", "lookup_order"} and not shaped.planned
    nothing = shape_tools(Dialect.OPENAI, OPENAI, ToolMode.RETRIEVAL_ONLY, WRITE, frozenset({"search_kb"}))
    assert "tools" not in nothing.body and "tool_choice" not in nothing.body  # none to keep: no tools at all
