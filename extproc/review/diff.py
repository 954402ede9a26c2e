"""What two answers to one request differ in: the degraded answer the client got and the answer
the tier-0 rung gave on its re-run, both in the client's dialect.

Deterministic: the same two answers always give the same diff, byte for byte (the text as a
unified diff by line, and each structured field that differs: finish reason, tool calls, input
and output tokens). `read_answer` never raises: an answer that is not its dialect's JSON is
compared as its raw text.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from ..core import ContractError, Dialect
from ..translate import load_json

_K = "answer diff"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer's comparable facts, in the client's dialect's own words."""

    text: str
    finish_reason: str | None
    tool_calls: tuple[str, ...]  # `name(canonical JSON arguments)`, in order
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Change:
    field: str  # finish_reason, tool_calls, input_tokens, output_tokens
    degraded: str
    original: str


@dataclass(frozen=True, slots=True)
class AnswerDiff:
    same_text: bool
    unified: str  # the texts' unified diff ("" when they are the same)
    changes: tuple[Change, ...]  # the structured fields that differ
    similarity: float  # the texts' word-level similarity, 0-1 (3 decimals)

    @property
    def identical(self) -> bool:
        return self.same_text and not self.changes

    def encode(self) -> dict[str, Any]:
        return {
            "same_text": self.same_text,
            "unified": self.unified,
            "changes": [{"field": c.field, "degraded": c.degraded, "original": c.original} for c in self.changes],
            "similarity": self.similarity,
        }

    @classmethod
    def decode(cls, raw: object) -> AnswerDiff:
        if not isinstance(raw, dict):
            raise ContractError(f"{_K}: not an object")
        same, unified, changes, similarity = (raw.get(k) for k in ("same_text", "unified", "changes", "similarity"))
        if not isinstance(same, bool) or not isinstance(unified, str) or not isinstance(changes, list):
            raise ContractError(f"{_K}: same_text, unified or changes mistyped")
        if isinstance(similarity, bool) or not isinstance(similarity, int | float):
            raise ContractError(f"{_K}.similarity: not a number")
        out = []
        for c in changes:
            if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("field", "degraded", "original")):
                raise ContractError(f"{_K}.changes: {c!r} is not a change")
            out.append(Change(c["field"], c["degraded"], c["original"]))
        return cls(same, unified, tuple(out), float(similarity))


def read_answer(dialect: Dialect, body: bytes) -> Answer:
    """An answer's facts from its body in the client's dialect (`dialect`)."""
    try:
        raw = load_json(body)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return Answer(body.decode("utf-8", errors="replace"), None, (), None, None)
    usage = raw.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    if dialect.wire is Dialect.ANTHROPIC:
        return _anthropic(raw, usage)
    return _openai(raw, usage)


def _openai(raw: dict[str, Any], usage: dict[str, Any]) -> Answer:
    choices = raw.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raw_calls = message.get("tool_calls")
    calls = []
    for call in raw_calls if isinstance(raw_calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            calls.append(_call(function.get("name"), _arguments(function.get("arguments"))))
    return Answer(
        content if isinstance(content, str) else "",
        _text(choice.get("finish_reason")),
        tuple(calls),
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
    )


def _anthropic(raw: dict[str, Any], usage: dict[str, Any]) -> Answer:
    content = raw.get("content")
    texts, calls = [], []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(_call(block.get("name"), block.get("input")))
    return Answer(
        "".join(texts),
        _text(raw.get("stop_reason")),
        tuple(calls),
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
    )


def _arguments(value: object) -> object:
    """OpenAI's arguments are JSON text: compared parsed, so spacing is no difference."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _call(name: object, arguments: object) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{name if isinstance(name, str) else ''}({canonical})"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "; ".join(value) if value else "none"
    return str(value)


def diff_answers(degraded: Answer, original: Answer, degraded_by: str, original_by: str) -> AnswerDiff:
    """How the tier-0 answer (`original`, from `original_by`) differs from the degraded one."""
    same_text = degraded.text == original.text
    unified = ""
    if not same_text:
        lines = difflib.unified_diff(
            degraded.text.splitlines(),
            original.text.splitlines(),
            fromfile=f"degraded {degraded_by}",
            tofile=f"tier 0 {original_by}",
            lineterm="",
        )
        unified = "\n".join(lines) + "\n"
    changes = tuple(
        Change(name, _shown(a), _shown(b))
        for name, a, b in (
            ("finish_reason", degraded.finish_reason, original.finish_reason),
            ("tool_calls", degraded.tool_calls, original.tool_calls),
            ("input_tokens", degraded.input_tokens, original.input_tokens),
            ("output_tokens", degraded.output_tokens, original.output_tokens),
        )
        if a != b
    )
    # In a fixed order: difflib's matching blocks, and so its ratio, can depend on which side is first.
    first, second = sorted((degraded.text.split(), original.text.split()))
    similarity = 1.0 if first == second else difflib.SequenceMatcher(None, first, second, autojunk=False).ratio()
    return AnswerDiff(same_text, unified, changes, round(similarity, 3))
