"""validate.Contract: a task class's health contract (token range, JSON schema, required fields) plus
the schema the request itself asked for, held against a provider's 200 answer."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from extproc.core import Dialect, Failure
from extproc.health.contract import OK, Contract, Judgement, Verdict, check_completion, judge_answer
from extproc.policy import TaskClass

NOT_JSON = Verdict(Failure.SCHEMA_ERROR, "the answer is not the JSON the request asked for")
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
}


def openai(content: Any, completion_tokens: int | None = 5, tool_calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if completion_tokens is not None:
        body["usage"] = {"prompt_tokens": 3, "completion_tokens": completion_tokens, "total_tokens": 8}
    return body


def anthropic(*texts: str, output_tokens: int | None = 5, tool: bool = False) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": t} for t in texts]
    if tool:
        content.append({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}})
    body: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "content": content}
    if output_tokens is not None:
        body["usage"] = {"input_tokens": 3, "output_tokens": output_tokens}
    return body


def verdict(content: Any, contract: Contract, dialect: Dialect = Dialect.OPENAI) -> Verdict:
    body = anthropic(content) if dialect is Dialect.ANTHROPIC else openai(content)
    return check_completion(dialect, body, contract)


def task(**fields: Any) -> TaskClass:
    return TaskClass(**fields)


# ---- when JSON is wanted -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contract", "wants"),
    [
        (Contract(task()), False),
        (Contract(task(), json_mode=True), True),
        (Contract(task(json_schema=PERSON)), True),
        (Contract(task(required_fields=["name"])), True),
        (Contract(task(), request_schema=PERSON), True),
    ],
)
def test_json_is_wanted_when_the_request_or_the_task_asks_for_it(contract: Contract, wants: bool) -> None:
    assert contract.wants_json is wants


def test_plain_text_passes_when_nobody_asked_for_json() -> None:
    assert verdict("Paris is the capital.", Contract(task())) == OK


@pytest.mark.parametrize("dialect", list(Dialect))
def test_json_mode_answer_that_is_not_json_is_a_schema_error(dialect: Dialect) -> None:
    assert verdict("Sure! Here is the JSON: {", Contract(task(), json_mode=True), dialect) == NOT_JSON


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", '"text"', "3", "null"])
def test_json_mode_without_a_schema_accepts_any_json(content: str) -> None:
    assert verdict(content, Contract(task(), json_mode=True)) == OK


@pytest.mark.parametrize(
    "content",
    ['```json\n{"name": "Ada"}\n```', '```\n{"name": "Ada"}\n```', '  ```json{"name": "Ada"}```  '],
)
def test_json_in_a_markdown_fence_is_read(content: str) -> None:
    assert verdict(content, Contract(task(json_schema=PERSON))) == OK


def test_openai_content_parts_are_joined_before_parsing() -> None:
    parts = [{"type": "text", "text": '{"name": '}, {"type": "text", "text": '"Ada"}'}]
    assert verdict(parts, Contract(task(json_schema=PERSON))) == OK


def test_anthropic_text_blocks_are_joined_before_parsing() -> None:
    body = anthropic('{"name": ', '"Ada", "age": 36}')
    assert check_completion(Dialect.ANTHROPIC, body, Contract(task(json_schema=PERSON))) == OK


def test_tool_call_answers_are_not_held_to_the_json_contract() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    contract = Contract(task(json_schema=PERSON, required_fields=["name"]), json_mode=True)
    assert check_completion(Dialect.OPENAI, openai(None, tool_calls=[call]), contract) == OK
    assert check_completion(Dialect.ANTHROPIC, anthropic("not json", tool=True), contract) == OK


def test_a_bare_task_class_is_its_own_contract() -> None:
    body = openai("not json")
    assert check_completion(Dialect.OPENAI, body, task(required_fields=["name"])) == NOT_JSON


# ---- the task's JSON schema ----------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_answer_matching_the_task_schema_passes(dialect: Dialect) -> None:
    assert verdict('{"name": "Ada", "age": 36}', Contract(task(json_schema=PERSON)), dialect) == OK


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ('{"age": 36}', "the answer's JSON breaks the schema at (root): 'name' is a required property"),
        ('{"name": "Ada", "age": -1}', "the answer's JSON breaks the schema at age: -1 is less than the minimum of 0"),
        ('{"name": 7}', "the answer's JSON breaks the schema at name: 7 is not of type 'string'"),
        ("[]", "the answer's JSON breaks the schema at (root): [] is not of type 'object'"),
    ],
)
def test_answer_breaking_the_task_schema_is_a_schema_error_saying_where(content: str, detail: str) -> None:
    assert verdict(content, Contract(task(json_schema=PERSON))) == Verdict(Failure.SCHEMA_ERROR, detail)


def test_schema_error_paths_name_nested_items() -> None:
    schema = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON}}}
    found = verdict('{"people": [{"name": "Ada"}, {"name": 1}]}', Contract(task(json_schema=schema)))
    assert found == Verdict(
        Failure.SCHEMA_ERROR, "the answer's JSON breaks the schema at people/1/name: 1 is not of type 'string'"
    )


def test_local_refs_in_a_schema_are_followed() -> None:
    schema = {"type": "object", "properties": {"who": {"$ref": "#/$defs/person"}}, "$defs": {"person": PERSON}}
    contract = Contract(task(json_schema=schema))
    assert verdict('{"who": {"name": "Ada"}}', contract) == OK
    assert verdict('{"who": {}}', contract).failure is Failure.SCHEMA_ERROR


# ---- the request's own schema (response_format json_schema) ---------------------------------------


def test_answer_breaking_the_request_schema_is_a_schema_error() -> None:
    contract = Contract(task(), request_schema=PERSON, json_mode=True)
    assert verdict('{"name": "Ada"}', contract) == OK
    assert verdict('{"nom": "Ada"}', contract) == Verdict(
        Failure.SCHEMA_ERROR, "the answer's JSON breaks the schema at (root): 'name' is a required property"
    )


def test_a_task_can_opt_out_of_the_request_schema_but_still_wants_json() -> None:
    contract = Contract(task(use_request_schema=False), request_schema=PERSON, json_mode=True)
    assert verdict('{"nom": "Ada"}', contract) == OK
    assert verdict("no json here", contract) == NOT_JSON


def test_the_task_schema_is_checked_before_the_request_schema() -> None:
    task_schema = {"type": "object", "required": ["id"]}
    contract = Contract(task(json_schema=task_schema), request_schema=PERSON, json_mode=True)
    assert (
        verdict("{}", contract).detail == "the answer's JSON breaks the schema at (root): 'id' is a required property"
    )
    assert verdict('{"id": 1}', contract).detail == (
        "the answer's JSON breaks the schema at (root): 'name' is a required property"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nope"},
        {"type": "object", "properties": {"name": {"pattern": "("}}},
        {"type": "object", "required": "name"},
        {"minLength": -1},
    ],
)
def test_a_request_schema_that_is_not_a_valid_schema_is_not_the_answers_fault(schema: dict[str, Any]) -> None:
    assert verdict('{"name": "Ada"}', Contract(task(), request_schema=schema, json_mode=True)) == OK


@pytest.mark.parametrize(
    "schema",
    [{"$ref": "#/$defs/missing"}, {"type": "object", "properties": {"name": {"$ref": "#/$defs/nowhere"}}}],
)
def test_a_request_schema_with_a_dangling_ref_is_not_the_answers_fault(schema: dict[str, Any]) -> None:
    # The schema is the client's: a $ref that resolves nowhere must not raise out of the check.
    assert verdict('{"name": "Ada"}', Contract(task(), request_schema=schema, json_mode=True)) == OK


def test_a_remote_ref_in_a_request_schema_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client-supplied schema must not make the sidecar open URLs it names (SSRF, and a blocking
    # fetch without a timeout on the event loop).
    fetched: list[Any] = []

    def urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        fetched.append(getattr(request, "full_url", request))
        raise OSError("network disabled in unit tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    schema = {"$ref": "http://169.254.169.254/latest/meta-data/person.json"}
    contract = Contract(task(), request_schema=schema, json_mode=True)
    try:
        found: Verdict | None = verdict('{"name": "Ada"}', contract)
    except Exception:  # the dangling-ref test covers raising; this one is about the fetch
        found = None
    assert fetched == []
    assert found == OK


# ---- required fields -----------------------------------------------------------------------------


def test_required_fields_must_all_be_top_level_keys() -> None:
    contract = Contract(task(required_fields=["name", "age", "city"]))
    assert verdict('{"name": "Ada", "age": 36, "city": "London", "extra": 1}', contract) == OK
    assert verdict('{"name": "Ada", "profile": {"age": 36}}', contract) == Verdict(
        Failure.SCHEMA_ERROR, "the answer's JSON lacks required fields: age, city"
    )


@pytest.mark.parametrize("content", ['["name"]', '"name"', "null"])
def test_required_fields_need_a_json_object(content: str) -> None:
    contract = Contract(task(required_fields=["name"]))
    assert verdict(content, contract) == Verdict(Failure.SCHEMA_ERROR, "the answer's JSON lacks required fields: name")


def test_a_schema_break_is_reported_before_missing_fields() -> None:
    contract = Contract(task(json_schema={"type": "object", "maxProperties": 0}, required_fields=["name"]))
    assert verdict('{"other": 1}', contract).detail.startswith("the answer's JSON breaks the schema")


# ---- token range ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "failure"),
    [(9, Failure.QUALITY_REGRESSION), (10, None), (50, None), (51, Failure.QUALITY_REGRESSION)],
)
@pytest.mark.parametrize("dialect", list(Dialect))
def test_output_tokens_must_be_within_the_task_range_inclusive(
    dialect: Dialect, tokens: int, failure: Failure | None
) -> None:
    contract = Contract(task(min_output_tokens=10, max_output_tokens=50))
    if dialect is Dialect.ANTHROPIC:
        body = anthropic("an answer", output_tokens=tokens)
    else:
        body = openai("an answer", completion_tokens=tokens)
    assert check_completion(dialect, body, contract).failure is failure


def test_too_many_tokens_says_the_maximum() -> None:
    contract = Contract(task(max_output_tokens=50))
    assert verdict_with_tokens(51, contract) == Verdict(
        Failure.QUALITY_REGRESSION, "51 output tokens, more than the task's maximum of 50"
    )


def test_an_unreported_token_count_passes_the_range() -> None:
    contract = Contract(task(min_output_tokens=10, max_output_tokens=50))
    assert check_completion(Dialect.OPENAI, openai("an answer", completion_tokens=None), contract) == OK


def test_the_token_range_is_checked_before_the_json() -> None:
    contract = Contract(task(max_output_tokens=50, json_schema=PERSON))
    assert verdict_with_tokens(51, contract, content="not json").failure is Failure.QUALITY_REGRESSION


def verdict_with_tokens(tokens: int, contract: Contract, content: str = "an answer") -> Verdict:
    return check_completion(Dialect.OPENAI, openai(content, completion_tokens=tokens), contract)


# ---- the task class's contract fields ------------------------------------------------------------


def test_a_maximum_below_the_minimum_is_refused_and_echoed() -> None:
    with pytest.raises(
        ValidationError, match=r"max_output_tokens must be at least min_output_tokens \(10\), but was 5"
    ):
        TaskClass(min_output_tokens=10, max_output_tokens=5)


def test_an_invalid_task_schema_is_refused() -> None:
    with pytest.raises(ValidationError, match="json_schema is not a valid JSON Schema"):
        TaskClass(json_schema={"type": "nope"})


def test_a_task_schema_with_a_dangling_ref_is_refused() -> None:
    # Accepted now, it would raise on every answer of the task instead of once at policy load.
    with pytest.raises(ValidationError, match="json_schema"):
        TaskClass(json_schema={"type": "object", "properties": {"who": {"$ref": "#/$defs/person"}}})


@pytest.mark.parametrize(
    ("fields", "wants"),
    [
        ({}, False),
        ({"json_schema": PERSON}, True),
        ({"required_fields": ["a"]}, True),
        ({"use_request_schema": False}, False),
    ],
)
def test_a_task_wants_json_when_it_has_a_schema_or_required_fields(fields: dict[str, Any], wants: bool) -> None:
    assert TaskClass(**fields).wants_json is wants


# ---- judge_answer: status and body together -------------------------------------------------------


def test_judge_answer_returns_the_parsed_answer_with_the_verdict() -> None:
    body = openai('{"name": 7}')
    judged = judge_answer(Dialect.OPENAI, 200, json.dumps(body).encode(), Contract(task(json_schema=PERSON)))
    assert judged == Judgement(
        Failure.SCHEMA_ERROR, "the answer's JSON breaks the schema at name: 7 is not of type 'string'", body
    )


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"null"])
def test_a_2xx_without_a_json_body_is_a_schema_error(body: bytes) -> None:
    judged = judge_answer(Dialect.OPENAI, 200, body, Contract(task()))
    assert judged == Judgement(Failure.SCHEMA_ERROR, "the provider's answer is not valid JSON")


def test_a_non_2xx_is_classified_not_validated() -> None:
    judged = judge_answer(Dialect.OPENAI, 503, b"", Contract(task(json_schema=PERSON)))
    assert judged.failure is Failure.SERVER_ERROR
    assert judged.parsed is None


# ---- properties ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "age", "x"]), inner, max_size=3)
    ),
    max_leaves=10,
)
SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
    {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
    {"type": "object", "additionalProperties": False, "properties": {"x": {"type": "boolean"}}},
    {"not": {"type": "object"}},
]


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(SCHEMAS), st.booleans())
def test_the_verdict_agrees_with_the_schema_for_any_json_answer(
    value: Any, schema: dict[str, Any], fenced: bool
) -> None:
    text = json.dumps(value)
    if fenced:
        text = f"```json\n{text}\n```"
    found = verdict(text, Contract(task(json_schema=schema)))
    valid = Draft202012Validator(schema).is_valid(value)
    assert (found.failure is None) == valid
    assert found.failure in (None, Failure.SCHEMA_ERROR)


schema_like = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["object", "string", "#", "#/$defs/a", "("]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["type", "properties", "required", "items", "$ref", "$defs", "pattern", "enum", "a", "name"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["type", "properties", "required", "$ref", "$defs", "items"]), schema_like),
    json_values,
)
@example({"$ref": "#/$defs/a"}, {"name": "Ada"})
def test_any_request_schema_gives_a_verdict_never_an_exception(schema: dict[str, Any], value: Any) -> None:
    found = verdict(json.dumps(value), Contract(task(), request_schema=schema, json_mode=True))
    assert found.failure in (None, Failure.SCHEMA_ERROR)
