"""What a provider's whole (non-streamed) answer says, read once per provider dialect into
dialect-free facts, so that the health contract can judge it without knowing either API."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core import Dialect
from .errors import load_json


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: object  # as the provider sent it (checked by the contract)
    arguments: object  # parsed JSON arguments, None when absent or not JSON
    problem: str | None = None  # the call itself is malformed


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    malformed: str | None = None  # not an answer of the dialect at all: why
    refusal: str | None = None  # the provider's own safety stop: why
    has_text: bool = False
    text: str | None = None  # the answer's text when it is a text answer (no tool calls)
    tool_calls: tuple[ToolCall, ...] = ()
    output_tokens: int | None = None


def answer_facts(dialect: Dialect, body: Any) -> AnswerFacts:
    """`body` is the parsed JSON of a 2xx answer in the provider's wire dialect."""
    if not isinstance(body, dict):
        return AnswerFacts(malformed="answer is not a JSON object")
    if dialect.wire is Dialect.ANTHROPIC:
        return _anthropic(body)
    return _openai(body)


def output_tokens(body: Any) -> int | None:
    """The answer's output token count from its usage, in either dialect (the one place usage
    tokens are read from a whole answer)."""
    return _usage_count(body, "completion_tokens", "output_tokens")


def input_tokens(body: Any) -> int | None:
    """The answer's input (prompt) token count from its usage, in either dialect."""
    return _usage_count(body, "prompt_tokens", "input_tokens")


def mean_logprob(dialect: Dialect, body: Any) -> float | None:
    """The mean token logprob of a whole answer's first choice, when the provider returned
    logprobs (an OpenAI-style answer to a request that asked for them); None otherwise."""
    if dialect.wire is Dialect.ANTHROPIC or not isinstance(body, dict):
        return None
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    logprobs = first.get("logprobs") if isinstance(first, dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    values = [
        float(t["logprob"])
        for t in content
        if isinstance(t, dict) and isinstance(t.get("logprob"), int | float) and not isinstance(t["logprob"], bool)
    ]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _usage_count(body: Any, openai_name: str, anthropic_name: str) -> int | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    tokens = usage.get(openai_name, usage.get(anthropic_name))
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def _openai(body: dict[str, Any]) -> AnswerFacts:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return AnswerFacts(malformed="answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return AnswerFacts(malformed="answer has no message")
    content = message.get("content")
    has_text = _has_text(content)
    if choice.get("finish_reason") == "content_filter":
        return AnswerFacts(refusal="the provider's content filter stopped the answer")
    if message.get("refusal") and not has_text:
        return AnswerFacts(refusal="the model refused the request")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        return AnswerFacts(malformed="tool_calls is not a list")
    calls = []
    for call in raw_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            calls.append(ToolCall(None, None, problem="tool call without a function"))
        else:
            calls.append(ToolCall(function.get("name"), _parse_arguments(function.get("arguments"))))
    return AnswerFacts(
        has_text=has_text,
        text=_text_of(content) if not calls else None,
        tool_calls=tuple(calls),
        output_tokens=output_tokens(body),
    )


def _anthropic(body: dict[str, Any]) -> AnswerFacts:
    content = body.get("content")
    if not isinstance(content, list):
        return AnswerFacts(malformed="answer has no content list")
    if body.get("stop_reason") == "refusal":
        return AnswerFacts(refusal="the provider refused the request")
    texts: list[str] = []
    calls = []
    for block in content:
        if not isinstance(block, dict):
            return AnswerFacts(malformed="content block is not an object")
        if block.get("type") == "text" and _has_text(block.get("text")):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(ToolCall(block.get("name"), block.get("input")))
    return AnswerFacts(
        has_text=bool(texts),
        text="".join(texts) if not calls else None,
        tool_calls=tuple(calls),
        output_tokens=output_tokens(body),
    )


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return None


def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):  # OpenAI content parts
        return any(isinstance(p, dict) and _has_text(p.get("text")) for p in content)
    return False


def _parse_arguments(arguments: Any) -> Any:
    if not isinstance(arguments, str) or not arguments.strip():
        return None
    try:
        return load_json(arguments)
    except ValueError:
        return None
