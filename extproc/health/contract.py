"""Health contract checks on a provider's 200 answer (H3, minimal): a 200 that breaks the
contract is a partial outage, classified like any other failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from referencing.exceptions import Unresolvable

from ..core import Dialect, Failure
from ..policy import TaskClass
from ..policy.json_schema import compiled
from ..translate import (
    classify,
    load_json,
    parse_provider_error,
)
from ..translate.answer import AnswerFacts, answer_facts


@dataclass(frozen=True, slots=True)
class Verdict:
    failure: Failure | None
    detail: str = ""


OK = Verdict(None)


@dataclass(frozen=True, slots=True)
class Judgement:
    """A provider's whole non-streamed answer, classified."""

    failure: Failure | None
    detail: str = ""
    parsed: Any = None  # the 2xx answer's JSON, when it parsed


def judge_answer(dialect: Dialect, status: int, body: bytes, contract: Contract) -> Judgement:
    """Status and body of one try → served, or which failure (the failure taxonomy's boundary)."""
    wire = dialect.wire.value
    if not 200 <= status < 300:
        error = parse_provider_error(wire, body)
        failure = classify(wire, status, error) or Failure.SERVER_ERROR
        return Judgement(failure, error.message if error is not None else f"the provider answered HTTP {status}")
    try:
        parsed = load_json(body) if body else None
    except ValueError:
        parsed = None
    if parsed is None:
        return Judgement(Failure.SCHEMA_ERROR, "the provider's answer is not valid JSON")
    verdict = check_completion(dialect, parsed, contract)
    return Judgement(verdict.failure, verdict.detail, parsed)


@dataclass(frozen=True, slots=True)
class Contract:
    """What one answer is held to: the task class's contract plus what the request asked for."""

    task: TaskClass
    # The schema of the request's own response_format (json_schema), when the task uses it.
    request_schema: dict[str, Any] | None = None
    # The request asked for JSON (response_format json_object / json_schema).
    json_mode: bool = False

    @property
    def wants_json(self) -> bool:
        return self.json_mode or self.task.wants_json or self.request_schema is not None


def check_completion(dialect: Dialect, body: Any, contract: Contract | TaskClass) -> Verdict:
    """`body` is the parsed JSON of a non-streamed answer in the provider's wire dialect."""
    if isinstance(contract, TaskClass):
        contract = Contract(contract)
    return check(answer_facts(dialect, body), contract)


def check(facts: AnswerFacts, contract: Contract) -> Verdict:
    """An answer's facts against the contract: the first broken rule, or OK."""
    if facts.malformed is not None:
        return Verdict(Failure.SCHEMA_ERROR, facts.malformed)
    if facts.refusal is not None:
        return Verdict(Failure.SAFETY_BLOCK, facts.refusal)
    for call in facts.tool_calls:
        if call.problem is not None:
            return Verdict(Failure.TOOL_MISMATCH, call.problem)
        verdict = _check_tool(call.name, call.arguments)
        if verdict.failure is not None:
            return verdict
    if not facts.tool_calls and not facts.has_text:
        return Verdict(Failure.QUALITY_REGRESSION, "empty content and no tool call")
    verdict = _check_tokens(facts.output_tokens, contract.task)
    if verdict.failure is None and facts.text is not None and contract.wants_json:
        return _check_json_content(facts.text, contract)
    return verdict


def _check_json_content(text: str, contract: Contract) -> Verdict:
    try:
        value = load_json(_strip_fence(text))
    except ValueError:
        return Verdict(Failure.SCHEMA_ERROR, "the answer is not the JSON the request asked for")
    for schema in (contract.task.json_schema, contract.request_schema if contract.task.use_request_schema else None):
        if schema is None:
            continue
        validator = compiled(schema)
        try:
            error = next(iter(validator.iter_errors(value)), None) if validator is not None else None
        except (Unresolvable, RecursionError):
            error = None  # the schema, not the answer, is at fault
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return Verdict(Failure.SCHEMA_ERROR, f"the answer's JSON breaks the schema at {where}: {error.message}")
    missing = [f for f in contract.task.required_fields if not isinstance(value, dict) or f not in value]
    if missing:
        return Verdict(Failure.SCHEMA_ERROR, f"the answer's JSON lacks required fields: {', '.join(missing)}")
    return OK


def _strip_fence(text: str) -> str:
    """Models often wrap JSON in a Markdown code fence even when asked not to."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        if stripped.startswith("json"):
            stripped = stripped[4:]
    return stripped


def _check_tool(name: Any, arguments: Any) -> Verdict:
    if not isinstance(name, str) or not name.strip():
        return Verdict(Failure.TOOL_MISMATCH, "tool call with an empty name")
    if not isinstance(arguments, dict):
        return Verdict(Failure.TOOL_MISMATCH, f"tool call {name!r} has empty or invalid arguments")
    return OK


def _check_tokens(tokens: Any, contract: TaskClass) -> Verdict:
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return OK
    if tokens < contract.min_output_tokens:
        return Verdict(
            Failure.QUALITY_REGRESSION,
            f"{tokens} output tokens, fewer than the task's minimum of {contract.min_output_tokens}",
        )
    if contract.max_output_tokens is not None and tokens > contract.max_output_tokens:
        return Verdict(
            Failure.QUALITY_REGRESSION,
            f"{tokens} output tokens, more than the task's maximum of {contract.max_output_tokens}",
        )
    return OK
