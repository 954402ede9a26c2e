"""What one drill request left behind, as the client saw it: status, the x-rungway-* flags,
the answer (whole or streamed, in the client's dialect) and how long it took."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import Dialect
from ..core.names import ATTEMPTS, DEGRADED, REASON, SERVED_BY, TIER
from ..translate import (
    AnthropicStreamReader,
    Done,
    OpenAIStreamReader,
    SseParser,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
    answer_facts,
)


@dataclass(frozen=True, slots=True)
class Answer:
    text: str = ""
    tool_calls: tuple[tuple[str, Any], ...] = ()  # (name, parsed arguments or None)
    input_tokens: int | None = None
    output_tokens: int | None = None
    problem: str | None = None  # not a well-formed answer of the dialect: why


@dataclass(frozen=True, slots=True)
class Trace:
    status: int
    flags: Mapping[str, str]  # the x-rungway-* response headers
    answer: Answer
    latency_s: float
    tenant: str = "app"
    error: str = field(default="")  # the client-visible error message of a refusal

    @property
    def served_by(self) -> str | None:
        return self.flags.get(SERVED_BY)

    @property
    def tier(self) -> int | None:
        value = self.flags.get(TIER, "none")
        return int(value) if value.isdigit() else None

    @property
    def degraded(self) -> bool | None:
        value = self.flags.get(DEGRADED)
        return None if value is None else value == "true"

    @property
    def attempts(self) -> int | None:
        value = self.flags.get(ATTEMPTS, "")
        return int(value) if value.isdigit() else None

    @property
    def reason(self) -> str | None:
        return self.flags.get(REASON)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tenant": self.tenant,
            "served_by": self.served_by,
            "tier": self.tier,
            "degraded": self.degraded,
            "reason": self.reason,
            "attempts": self.attempts,
            "latency_s": round(self.latency_s, 3),
            "input_tokens": self.answer.input_tokens,
            "output_tokens": self.answer.output_tokens,
            "text": self.answer.text[:200],
            "tool_calls": [name for name, _ in self.answer.tool_calls],
            "error": self.error[:200],
        }


def rungway_flags(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-rungway-")}


def read_answer(dialect: str, stream: bool, body: bytes) -> Answer:
    """A 2xx answer's text, tool calls and usage, whole or streamed, in the client's dialect."""
    wire = Dialect(dialect).wire
    if stream:
        return _read_stream(wire, body)
    try:
        parsed = json.loads(body)
    except ValueError:
        return Answer(problem="the answer is not JSON")
    facts = answer_facts(wire, parsed)
    if facts.malformed is not None:
        return Answer(problem=facts.malformed)
    usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else {}
    calls = tuple((str(c.name), c.arguments) for c in facts.tool_calls)
    return Answer(
        text=facts.text or "",
        tool_calls=calls,
        input_tokens=_int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output_tokens=facts.output_tokens,
    )


def error_message(body: bytes) -> str:
    """The message of an error answer in either dialect (both nest it under `error`)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_stream(wire: Dialect, body: bytes) -> Answer:
    reader = AnthropicStreamReader() if wire is Dialect.ANTHROPIC else OpenAIStreamReader()
    text: list[str] = []
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    input_tokens = output_tokens = None
    finished = False
    for event in SseParser().feed(body + b"\n\n"):
        for delta in reader.read(event):
            if isinstance(delta, TextDelta):
                text.append(delta.text)
            elif isinstance(delta, ToolCallStart):
                names[delta.index] = delta.name
                args.setdefault(delta.index, [])
            elif isinstance(delta, ToolCallArgs):
                args.setdefault(delta.index, []).append(delta.fragment)
            elif isinstance(delta, Usage):
                input_tokens = delta.input_tokens or input_tokens
                output_tokens = delta.output_tokens or output_tokens
            elif isinstance(delta, StreamError):
                return Answer(problem=f"the stream carried an error: {delta.message}")
            elif isinstance(delta, Done):
                finished = True
    calls = tuple((names.get(i, ""), _arguments("".join(args.get(i, [])))) for i in sorted(set(names) | set(args)))
    return Answer(
        text="".join(text),
        tool_calls=calls,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        problem=None if finished else "the stream ended without its end event",
    )


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
