"""Errors in both dialects: what a provider's error body means, and how Rungway writes its own.

`classify` is the one place where a provider's HTTP status and error body become a `Failure`;
`render_error` is the one place where a `Failure` becomes an error body the client's SDK understands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from extproc.core import Failure
from extproc.translate.redact import redact_json, redact_secrets

OPENAI: Final = "openai"
ANTHROPIC: Final = "anthropic"


class TranslationError(Exception):
    """The client's request is malformed or cannot be expressed for the provider: answer 400."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ProviderError:
    type: str | None
    code: str | None
    message: str


# Error `type` strings as the providers themselves send them, so that client code that branches on
# them keeps working. The HTTP status a client sees comes from taxonomy.CLIENT_STATUS; these agree
# with it (e.g. every failure answered with 5xx gets a server-side type).
_OPENAI_TYPE: Final[dict[Failure, str]] = {
    Failure.TIMEOUT: "timeout",
    Failure.RATE_LIMITED: "rate_limit_exceeded",
    Failure.BUDGET_EXCEEDED: "insufficient_quota",
    Failure.CONTEXT_OVERFLOW: "invalid_request_error",
    Failure.SAFETY_BLOCK: "invalid_request_error",
    Failure.CLIENT_ERROR: "invalid_request_error",
    Failure.UNAUTHENTICATED: "invalid_request_error",
}
_ANTHROPIC_TYPE: Final[dict[Failure, str]] = {
    Failure.TIMEOUT: "timeout_error",
    Failure.RATE_LIMITED: "rate_limit_error",
    # Rungway answers a spent budget with 429, and Anthropic's SDK picks its exception by status.
    Failure.BUDGET_EXCEEDED: "rate_limit_error",
    Failure.CONTEXT_OVERFLOW: "invalid_request_error",
    Failure.SAFETY_BLOCK: "invalid_request_error",
    Failure.CLIENT_ERROR: "invalid_request_error",
    Failure.UNAUTHENTICATED: "authentication_error",
}


def load_json(data: bytes | str) -> Any:
    """json.loads for what clients and providers send: JSON nested too deeply for Python is a
    ValueError like any other malformed JSON, never a RecursionError that escapes."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON.

    A lone surrogate (a provider may send one as a `\\ud83d` escape) has no UTF-8 form; a
    value holding one is written with ASCII escapes instead, as the provider sent it.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def error_object(dialect: str, failure: Failure, message: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The inner `error` object of an error body (also used for in-band stream errors). The
    message often quotes a provider's, which may echo the rung's key: it is redacted here, where
    every error Rungway writes passes. `extra` adds Rungway's own fields (`rungway_*`)."""
    message = redact_secrets(message)
    error: dict[str, Any]
    if dialect == OPENAI:
        error = {
            "message": message,
            "type": _OPENAI_TYPE.get(failure, "server_error"),
            "param": None,
            "code": failure.value,
            "rungway_reason": failure.value,
        }
    elif dialect == ANTHROPIC:
        error = {
            "type": _ANTHROPIC_TYPE.get(failure, "api_error"),
            "message": message,
            "rungway_reason": failure.value,
        }
    else:
        raise ValueError(f"dialect must be 'openai' or 'anthropic', but was {dialect!r}")
    if extra:
        error.update({key: redact_secrets(value) for key, value in extra.items()})
    return error


def error_body(dialect: str, failure: Failure, message: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    error = error_object(dialect, failure, message, extra)
    if dialect == ANTHROPIC:
        return {"type": "error", "error": error}
    return {"error": error}


def render_error(dialect: str, failure: Failure, message: str) -> bytes:
    """A JSON error body in the client's dialect, carrying the taxonomy value."""
    return dump_json(error_body(dialect, failure, message))


def redact_error_body(body: bytes) -> bytes:
    """A provider's error body as a client may see it: every string redacted (JSON stays JSON,
    anything else is redacted as text). A body with nothing to redact is returned as it came."""
    try:
        parsed = load_json(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
        clean_text = redact_secrets(text)
        return body if clean_text == text else clean_text.encode()
    clean = redact_json(parsed)
    return body if clean == parsed else dump_json(clean)


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def parse_provider_error(dialect: str, body: bytes) -> ProviderError | None:
    """Read a provider's error body; None when it carries no recognisable error.

    Both official shapes are accepted whatever the dialect, plus the flat `{"message", "type"}`
    that some OpenAI-compatible servers (vLLM) send, because self-hosted rungs vary.
    """
    del dialect  # the shapes do not collide, so one tolerant reader serves both
    try:
        data = load_json(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, str):
        return ProviderError(type=None, code=None, message=error)
    if not isinstance(error, dict):
        error = data  # flat shape
    message = error.get("message")
    if not isinstance(message, str):
        if error is data:
            return None
        message = ""
    return ProviderError(
        type=_opt_str(error.get("type")),
        code=_opt_str(error.get("code")),
        message=message,
    )


_CONTEXT_PHRASES: Final = (
    "maximum context length",
    "context_length_exceeded",
    "context window",
    "prompt is too long",
    "too many tokens",
    "exceed context limit",
)
_SAFETY_CODES: Final = frozenset({"content_filter", "content_policy_violation"})
_QUOTA_PHRASES: Final = ("credit balance is too low", "insufficient_quota")


def _mentions(error: ProviderError | None, phrases: tuple[str, ...]) -> bool:
    if error is None:
        return False
    text = error.message.lower()
    return any(phrase in text for phrase in phrases)


def classify(dialect: str, status: int, error: ProviderError | None) -> Failure | None:
    """Classify a provider's answer; None when it is not a failure (2xx)."""
    del dialect  # providers of both dialects are read the same way (see parse_provider_error)
    if 200 <= status < 300:
        return None
    code = error.code if error is not None else None
    kind = error.type if error is not None else None
    if status in (408, 504) or kind == "timeout_error":
        return Failure.TIMEOUT
    if status == 429:
        if "insufficient_quota" in (code, kind):
            return Failure.BUDGET_EXCEEDED
        return Failure.RATE_LIMITED
    if status >= 500 or status < 400:
        # 529 is Anthropic's "overloaded"; a 1xx/3xx from an API endpoint is a broken upstream.
        return Failure.SERVER_ERROR
    if status in (401, 403):
        return Failure.ACCESS_DENIED
    if status == 402 or kind == "billing_error" or _mentions(error, _QUOTA_PHRASES):
        return Failure.BUDGET_EXCEEDED
    if status in (400, 422):
        if code == "context_length_exceeded" or _mentions(error, _CONTEXT_PHRASES):
            return Failure.CONTEXT_OVERFLOW
        if code in _SAFETY_CODES or kind in _SAFETY_CODES:
            return Failure.SAFETY_BLOCK
    return Failure.CLIENT_ERROR
