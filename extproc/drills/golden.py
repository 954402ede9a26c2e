"""Golden tasks (D1): one request, what a good answer to it is, and what must never happen.

A golden task is a JSON file under `evals/failover/`. It is provider-agnostic except for
`mock_mode`, the mock provider's healthy way of answering it (a drill runs against
`extproc.demo.mock_provider`): `ok` for text, `json` for structured output, `tool` for a tool call.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..policy.json_schema import schema_problem

AnswerKind = Literal["text", "json", "tool"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Expected(_Frozen):
    """Properties a good answer has (all that are set must hold)."""

    contains: tuple[str, ...] = ()
    regex: str | None = None
    # The answer's text is JSON valid against this schema (draft 2020-12).
    json_schema: dict[str, Any] | None = None
    # The answer calls this tool (with JSON-object arguments).
    tool_call: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Expected:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex must compile, but {self.regex!r} does not: {exc}") from None
        if self.json_schema is not None and (problem := schema_problem(self.json_schema)) is not None:
            raise ValueError(f"json_schema is {problem}")
        return self


class Forbidden(_Frozen):
    """What must never happen, whatever the fault."""

    empty_answer: bool = True
    # Tools the answer must not call.
    tools: tuple[str, ...] = ()
    # Never served by a rung of a higher tier than this (0 = the primary only).
    below_tier: int | None = Field(None, ge=0, le=3)


class Citation(_Frozen):
    """Answers that must cite their sources: at least `min` matches of `pattern`."""

    pattern: str
    min: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Citation:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"citation pattern must compile, but {self.pattern!r} does not: {exc}") from None
        return self


class Limits(_Frozen):
    latency_s: float = Field(gt=0, le=600)
    cost_usd: float = Field(gt=0)
    attempts: int = Field(4, ge=1, le=20)


class GoldenTask(_Frozen):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    dialect: Literal["openai", "anthropic"]
    # The body the client sends (`/v1/chat/completions` or `/v1/messages`), `stream` included.
    request: dict[str, Any]
    task_class: str | None = None  # sent as the policy's task header
    tenant: str = "app"
    mock_mode: Literal["ok", "json", "tool"] = "ok"
    expect: Expected = Expected()
    forbid: Forbidden = Forbidden()
    citation: Citation | None = None
    limits: Limits
    # A fallback's (degraded) answer is acceptable; when not, only tier 0 may serve.
    degraded_ok: bool = True

    @model_validator(mode="after")
    def _check(self) -> GoldenTask:
        model = self.request.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("request.model must be a non-empty string")
        if not isinstance(self.request.get("messages"), list):
            raise ValueError("request.messages must be a list")
        if self.expect.tool_call is not None and not self.request.get("tools"):
            raise ValueError(f"expect.tool_call is {self.expect.tool_call!r}, but the request offers no tools")
        return self

    @property
    def stream(self) -> bool:
        return self.request.get("stream") is True

    @property
    def has_tools(self) -> bool:
        return bool(self.request.get("tools"))

    @property
    def answer_kind(self) -> AnswerKind:
        return {"ok": "text", "json": "json", "tool": "tool"}[self.mock_mode]  # type: ignore[return-value]

    @property
    def max_tier(self) -> int:
        """The highest tier that may serve it."""
        if not self.degraded_ok:
            return 0
        return 3 if self.forbid.below_tier is None else self.forbid.below_tier


class GoldenTaskError(ValueError):
    pass


def parse_task(text: str, source: str) -> GoldenTask:
    """A golden task from its JSON text; the error names the file and the field."""
    try:
        return GoldenTask.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise GoldenTaskError(f"{source}: not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(task)'}: {e['msg']}" for e in exc.errors())
        raise GoldenTaskError(f"{source}: {problems}") from None
