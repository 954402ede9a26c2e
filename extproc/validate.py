"""Health contract checks on a provider's 200 answer (H3, minimal): a 200 that breaks the
contract is a partial outage, classified like any other failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .policy import Dialect, TaskClass
from .taxonomy import Failure
from .translate import classify, parse_provider_error


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


def judge_answer(dialect: Dialect, status: int, body: bytes, contract: TaskClass) -> Judgement:
    """Status and body of one try → served, or which failure (the failure taxonomy's boundary)."""
    wire = dialect.wire.value
    if not 200 <= status < 300:
        error = parse_provider_error(wire, body)
        failure = classify(wire, status, error) or Failure.SERVER_ERROR
        return Judgement(failure, error.message if error is not None else f"the provider answered HTTP {status}")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if parsed is None:
        return Judgement(Failure.SCHEMA_ERROR, "the provider's answer is not valid JSON")
    verdict = check_completion(dialect, parsed, contract)
    return Judgement(verdict.failure, verdict.detail, parsed)


def check_completion(dialect: Dialect, body: Any, contract: TaskClass) -> Verdict:
    """`body` is the parsed JSON of a non-streamed answer in the provider's wire dialect."""
    if not isinstance(body, dict):
        return Verdict(Failure.SCHEMA_ERROR, "answer is not a JSON object")
    if dialect.wire is Dialect.ANTHROPIC:
        return _check_anthropic(body, contract)
    return _check_openai(body, contract)


def _check_openai(body: dict[str, Any], contract: TaskClass) -> Verdict:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Verdict(Failure.SCHEMA_ERROR, "answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return Verdict(Failure.SCHEMA_ERROR, "answer has no message")
    if choice.get("finish_reason") == "content_filter":
        return Verdict(Failure.SAFETY_BLOCK, "the provider's content filter stopped the answer")
    if message.get("refusal") and not _has_text(message.get("content")):
        return Verdict(Failure.SAFETY_BLOCK, "the model refused the request")
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        return Verdict(Failure.SCHEMA_ERROR, "tool_calls is not a list")
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return Verdict(Failure.TOOL_MISMATCH, "tool call without a function")
        verdict = _check_tool(function.get("name"), _parse_arguments(function.get("arguments")))
        if verdict.failure is not None:
            return verdict
    if not tool_calls and not _has_text(message.get("content")):
        return Verdict(Failure.QUALITY_REGRESSION, "empty content and no tool call")
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return _check_tokens(tokens, contract)


def _check_anthropic(body: dict[str, Any], contract: TaskClass) -> Verdict:
    content = body.get("content")
    if not isinstance(content, list):
        return Verdict(Failure.SCHEMA_ERROR, "answer has no content list")
    if body.get("stop_reason") == "refusal":
        return Verdict(Failure.SAFETY_BLOCK, "the provider refused the request")
    has_text = False
    has_tool = False
    for block in content:
        if not isinstance(block, dict):
            return Verdict(Failure.SCHEMA_ERROR, "content block is not an object")
        if block.get("type") == "text" and _has_text(block.get("text")):
            has_text = True
        elif block.get("type") == "tool_use":
            has_tool = True
            verdict = _check_tool(block.get("name"), block.get("input"))
            if verdict.failure is not None:
                return verdict
    if not has_text and not has_tool:
        return Verdict(Failure.QUALITY_REGRESSION, "empty content and no tool call")
    usage = body.get("usage")
    tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
    return _check_tokens(tokens, contract)


def _parse_arguments(arguments: Any) -> Any:
    if not isinstance(arguments, str) or not arguments.strip():
        return None
    try:
        return json.loads(arguments)
    except ValueError:
        return None


def _check_tool(name: Any, arguments: Any) -> Verdict:
    if not isinstance(name, str) or not name.strip():
        return Verdict(Failure.TOOL_MISMATCH, "tool call with an empty name")
    if not isinstance(arguments, dict):
        return Verdict(Failure.TOOL_MISMATCH, f"tool call {name!r} has empty or invalid arguments")
    return OK


def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):  # OpenAI content parts
        return any(isinstance(p, dict) and _has_text(p.get("text")) for p in content)
    return False


def _check_tokens(tokens: Any, contract: TaskClass) -> Verdict:
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens < contract.min_output_tokens:
        return Verdict(
            Failure.QUALITY_REGRESSION,
            f"{tokens} output tokens, fewer than the task's minimum of {contract.min_output_tokens}",
        )
    return OK
