"""Mock OpenAI and Anthropic HTTP APIs that fail on command.

A `MockProvider` speaks one dialect (`POST /v1/chat/completions` or `POST /v1/messages`, plus
`GET /health`) closely enough for the official SDKs to parse it, and answers according to a *mode*
(grammar in `parse_mode`). The mode comes from, in order: the request header `x-mock-mode-{name}`,
the header `x-mock-mode`, then `set_mode()` (sticky, or for the next N requests only). Header
overrides do not use up a `set_mode(..., times=N)` count; neither do `/health` nor unknown paths.

Answers are deterministic: "Hello from {name} ({model}): w1 w2 … wN", one word per completion
token, and input tokens = request body bytes // 4. A stream sends one word per event. Latencies
are too, unless `jitter` is set: then `delay:S` and `brownout` wait a lognormal time whose p95 is
the mode's (sigma = jitter, from a seeded random.Random), as an LLM provider's latency spreads.

An OpenAI-style answer to a request that asks for `logprobs` carries them, one per word: -0.05
each (a sure model), or -2.5 in mode `unsure` (the same words, guessed: a confidence signal).

Stream-only modes applied to a non-streaming request fall back to their nearest JSON equivalent,
so a sticky mode means something for every request: `first_delay:S` and `stall:N:S` wait S seconds
before answering, `cut:N` and `endless_line:N` send a truncated body, `reset_after:N` resets,
`sse_error`, `no_done`, `junk_head:BYTES` and `junk_tail:N` answer normally.

`endless_line:N` sends N tokens, then one `data:` line that never ends (a provider gone wrong
that would make a naive proxy buffer without bound); `junk_head:BYTES` sends about BYTES of
well-formed events without a token (pings, empty chunks) before the answer; `junk_tail:N` sends
N tokens, then such events as fast as it can, without end (a provider stuck in a loop).

`max_concurrent` (None: no limit) makes the provider a finite one: a chat request arriving while
that many are being answered gets a 429 with `retry-after: 1`, as a provider's concurrency
limit answers; `reset()` lifts it.

`MockFleet` adds a JSON control API for out-of-process use; `main()` is its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import hashlib
import itertools
import json
import math
import random
import re
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeAlias

from aiohttp import web

Dialect: TypeAlias = Literal["openai", "anthropic"]

DEFAULT_TOKENS: Final = 12
MODE_GRAMMAR: Final = (
    "ok, unsure, tokens:N, json, tool, status:CODE[:RETRY_AFTER], bad_key, noprefill, mimic:NAME:MODEL[:noprefill], delay:S, reset, "
    "invalid_json, empty, "
    "empty_tool, safety, context_overflow, big:BYTES, sse_error, first_delay:S, stall:N:S[:TOTAL], cut:N[:TOTAL], "
    "no_done, finish_hang:S, reset_after:N[:TOTAL], quota:REMAINING:RESET_S, brownout:FAIL_SHARE:FROM_S:TO_S:OVER_S, "
    "badevent:N[:TOTAL], pause:N:S[:TOTAL], stall_close:N:S[:TOTAL], stall_end:N:S[:TOTAL], "
    "stall_reset:N:S[:TOTAL], close_after:N[:TOTAL], no_done_n:TOTAL, endless_line:N, junk_head:BYTES, junk_tail:N"
)
# Stream fault modes with an explicit answer length (TOTAL tokens, default below).
_FAULTS: Final = frozenset({"badevent", "pause", "stall_close", "stall_end", "stall_reset", "close_after", "no_done_n"})
_FAULT_TOTAL: Final = 40
# The cut-off event of `badevent`: an OpenAI chunk whose JSON stops mid-object.
_BAD_EVENT: Final = (
    b'data: {"id": "chatcmpl-bad", "object": "chat.completion.chunk", "choices": [{"delta": {"content": \n\n'
)

_Z95: Final = 1.6448536269514722  # the standard normal's 95th percentile

_PLAIN: Final = frozenset(
    {
        "ok",
        "unsure",
        "noprefill",
        "json",
        "tool",
        "reset",
        "invalid_json",
        "empty",
        "empty_tool",
        "safety",
        "context_overflow",
        "sse_error",
        "no_done",
        "bad_key",
    }
)
_COUNTED: Final = frozenset({"tokens", "big", "cut", "reset_after", "endless_line", "junk_head", "junk_tail"})
_TIMED: Final = frozenset({"delay", "first_delay", "finish_hang"})
_STREAM_ONLY: Final = frozenset(
    {
        "sse_error",
        "first_delay",
        "stall",
        "cut",
        "no_done",
        "finish_hang",
        "reset_after",
        "endless_line",
        "junk_head",
        "junk_tail",
    }
    | _FAULTS
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TOOL_ARGUMENTS: Final = ('{"city": ', '"Paris"}')
# big:BYTES streams in slices this size, so a 3 MB answer is ~200 events rather than ~400k.
_BIG_SLICE: Final = 16 * 1024
# A mock owes nobody a graceful drain, and stop() sits on every test's teardown path.
_SHUTDOWN_TIMEOUT: Final = 0.25
_LINGER_RST: Final = struct.pack("ii", 1, 0)

# endless_line writes its line in slices this size, up to this much in all (a mock stays bounded
# even when nobody stops reading).
_ENDLESS_SLICE: Final = 64 * 1024
_ENDLESS_MAX: Final = 256 * 1024 * 1024

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: object) -> bytes:
    return _encode(value).encode()


@functools.lru_cache(maxsize=512)
def _json_bytes(text: str) -> bytes:
    """A JSON string literal; models and answer texts repeat, so remember them."""
    return _dumps(text)


# ---------------------------------------------------------------------------------------------
# Modes


@dataclass(frozen=True, slots=True)
class Mode:
    text: str
    kind: str
    count: int = 0  # tokens:N, big:BYTES, and the N of cut / reset_after / stall
    seconds: float = 0.0
    status: int = 0
    retry_after: str | None = None  # sent verbatim as the retry-after header
    # quota: requests left / reset seconds; brownout: fail share, latency from → to over a span
    numbers: tuple[float, ...] = ()


_OK: Final = Mode("ok", "ok")


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def parse_mode(text: str) -> Mode:
    """Parse a mode string; raise ValueError naming the bad value."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind in _PLAIN and not args:
            return Mode(text, kind)
        if kind in _COUNTED and len(args) == 1:
            count = int(args[0])
            if count >= (1 if kind == "big" else 0):
                return Mode(text, kind, count=count)
        elif kind in _TIMED and len(args) == 1:
            return Mode(text, kind, seconds=_seconds(args[0]))
        elif kind == "stall" and len(args) in (2, 3):
            count = int(args[0])
            words = (float(args[2]),) if len(args) == 3 else ()  # an answer of TOTAL words
            if count >= 0 and all(w >= count for w in words):
                return Mode(text, kind, count=count, seconds=_seconds(args[1]), numbers=words)
        elif kind in ("cut", "reset_after") and len(args) == 2:
            count, words_total = int(args[0]), int(args[1])  # N of an answer of TOTAL words
            if 0 <= count <= words_total:
                return Mode(text, kind, count=count, numbers=(float(words_total),))
        elif kind in _FAULTS:
            return _parse_fault(text, kind, args)
        elif kind == "mimic" and len(args) in (2, 3) and all(args) and args[2:] in ([], ["noprefill"]):
            # Answer as provider args[0] serving model args[1] would (refusing a prefill with :noprefill).
            return Mode(text, kind)
        elif kind == "quota" and len(args) == 2:
            return Mode(text, kind, count=int(args[0]), seconds=_seconds(args[1]))
        elif kind == "brownout" and len(args) == 4:
            share, start, end, span = (_seconds(a) for a in args)
            if share <= 1 and span > 0:
                return Mode(text, kind, numbers=(share, start, end, span))
        elif kind == "status" and len(args) in (1, 2):
            status = int(args[0])
            retry_after = args[1] if len(args) == 2 else None
            if retry_after is not None:
                _seconds(retry_after)
            if 400 <= status <= 599:
                return Mode(text, kind, status=status, retry_after=retry_after)
    except ValueError:
        pass
    raise ValueError(f"mock mode must be one of {MODE_GRAMMAR}, but was {text!r}")


def _parse_fault(text: str, kind: str, args: list[str]) -> Mode:
    """badevent:N[:T], close_after:N[:T], no_done_n:T, and pause/stall_*:N:S[:T]."""
    timed = kind in ("pause", "stall_close", "stall_end", "stall_reset")
    if kind == "no_done_n" and len(args) == 1:
        total = int(args[0])
        return Mode(text, kind, count=total, numbers=(float(total),))
    need = 2 if timed else 1
    if len(args) not in (need, need + 1):
        raise ValueError(text)
    count = int(args[0])
    seconds = _seconds(args[1]) if timed else 0.0
    total = int(args[need]) if len(args) > need else max(_FAULT_TOTAL, count + 1)
    if count < 1 or total < count:
        raise ValueError(text)
    return Mode(text, kind, count=count, seconds=seconds, numbers=(float(total),))


def _as_json_mode(mode: Mode) -> Mode:
    """The non-streaming stand-in for a stream-only mode (see the module docstring)."""
    if mode.kind in ("first_delay", "stall"):
        return Mode(mode.text, "delay", seconds=mode.seconds)
    if mode.kind in ("cut", "endless_line"):
        return Mode(mode.text, "invalid_json")
    if mode.kind == "reset_after":
        return Mode(mode.text, "reset")
    return Mode(mode.text, "ok")


# ---------------------------------------------------------------------------------------------
# The answer, independent of dialect


@dataclass(frozen=True, slots=True)
class _Reply:
    model: str
    input_tokens: int
    # The text, or the tool-call arguments: one piece per stream event.
    pieces: tuple[str, ...]
    output_tokens: int
    finish: Literal["stop", "tool", "safety"]
    tool_name: str = ""
    # Each token's logprob, when the request asked for logprobs (OpenAI's `logprobs: true`).
    logprob: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@functools.lru_cache(maxsize=1024)
def _words(name: str, model: str, count: int) -> tuple[str, ...]:
    prefix = f"Hello from {name} ({model}): "
    if count == 0:
        return (prefix,)
    return (f"{prefix}w1", *(f" w{i}" for i in range(2, count + 1)))


@functools.lru_cache(maxsize=8)
def _big_words(name: str, model: str, size: int) -> tuple[tuple[str, ...], int]:
    parts = [f"Hello from {name} ({model}): "]
    length = len(parts[0])
    word = 0
    while length < size:
        word += 1
        part = f"w{word}" if word == 1 else f" w{word}"
        parts.append(part)
        length += len(part)
    text = "".join(parts)
    pieces = tuple(text[i : i + _BIG_SLICE] for i in range(0, len(text), _BIG_SLICE))
    return pieces, word


def _slices(text: str, count: int) -> tuple[str, ...]:
    size = max(1, math.ceil(len(text) / max(1, count)))
    return tuple(text[i : i + size] for i in range(0, len(text), size))


def _first_tool_name(payload: Mapping[str, Any]) -> str | None:
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    first = tools[0]
    # OpenAI nests the name under "function" (or "custom"); Anthropic puts it at the top.
    for holder in (first.get("function"), first.get("custom"), first):
        if isinstance(holder, dict) and isinstance(holder.get("name"), str):
            return str(holder["name"])
    return None


def assistant_prefill(payload: Mapping[str, Any]) -> str | None:
    """The text of a trailing assistant message (a prefill to continue), in either API's shape."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return None


def _logprobs(reply: _Reply) -> dict[str, Any] | None:
    if reply.logprob is None:
        return None
    return {
        "content": [
            {"token": piece, "logprob": reply.logprob, "bytes": list(piece.encode()), "top_logprobs": []}
            for piece in reply.pieces
        ],
        "refusal": None,
    }


def _continued(prefill: str, total: int) -> tuple[str, ...]:
    """The rest of a deterministic answer after its prefill: the words after the last `wK`."""
    found = re.findall(r"w(\d+)", prefill)
    after = int(found[-1]) if found else 0
    return tuple(f" w{i}" for i in range(after + 1, total + 1))


def _build_reply(name: str, mode: Mode, payload: Mapping[str, Any], body_size: int) -> _Reply:
    reply = _reply_of(name, mode, payload, body_size)
    if payload.get("logprobs") is True and reply.finish == "stop":
        # A sure model's tokens, or (`unsure`) a model guessing: what a confidence signal reads.
        return replace(reply, logprob=-2.5 if mode.kind == "unsure" else -0.05)
    return reply


def _reply_of(name: str, mode: Mode, payload: Mapping[str, Any], body_size: int) -> _Reply:
    model = str(payload["model"])
    prompt = body_size // 4
    kind = mode.kind
    if kind == "mimic":
        name, model = mode.text.split(":")[1:3]
    prefill = assistant_prefill(payload)
    if prefill is not None and kind in ("ok", "tokens", "mimic", "delay", "first_delay"):
        total = mode.count if kind == "tokens" else DEFAULT_TOKENS
        rest = _continued(prefill, total)
        return _Reply(model, prompt, rest, len(rest), "stop")
    if kind == "tool":
        tool = _first_tool_name(payload)
        if tool is not None:
            return _Reply(model, prompt, _TOOL_ARGUMENTS, len(_TOOL_ARGUMENTS), "tool", tool)
    elif kind == "empty_tool":
        return _Reply(model, prompt, (), 0, "tool", "")
    elif kind == "empty":
        return _Reply(model, prompt, (), 0, "stop")
    elif kind == "safety":
        return _Reply(model, prompt, (), 0, "safety")
    elif kind == "json":
        text = "".join(_words(name, model, DEFAULT_TOKENS))
        content = json.dumps({"answer": text, "provider": name})
        return _Reply(model, prompt, _slices(content, DEFAULT_TOKENS), DEFAULT_TOKENS, "stop")
    elif kind == "big":
        pieces, words = _big_words(name, model, mode.count)
        return _Reply(model, prompt, pieces, words, "stop")
    elif kind in _FAULTS:
        total = int(mode.numbers[0])
        return _Reply(model, prompt, _words(name, model, total), total, "stop")
    if kind in ("cut", "reset_after", "stall") and mode.numbers:
        total = int(mode.numbers[0])
        return _Reply(model, prompt, _words(name, model, total), total, "stop")
    count = mode.count if kind == "tokens" else DEFAULT_TOKENS
    return _Reply(model, prompt, _words(name, model, count), count, "stop")


@dataclass(frozen=True, slots=True)
class _StreamPlan:
    head: bytes  # everything before the first token
    tokens: tuple[bytes, ...]
    tail: bytes  # the finish (and usage)
    done: bytes  # [DONE] / message_stop


# ---------------------------------------------------------------------------------------------
# Dialects: pure renderers from a _Reply to the provider's bytes


def _openai_quota(remaining: int, reset_s: float) -> dict[str, str]:
    return {"x-ratelimit-remaining-requests": str(remaining), "x-ratelimit-reset-requests": f"{reset_s:g}s"}


def _anthropic_quota(remaining: int, reset_s: float) -> dict[str, str]:
    reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=reset_s)
    return {
        "anthropic-ratelimit-requests-remaining": str(remaining),
        "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
    }


class _OpenAIWire:
    quota_headers = staticmethod(_openai_quota)
    endpoint: Final = "/v1/chat/completions"
    id_prefix: Final = "chatcmpl-mock"
    request_id_header: Final = "x-request-id"
    sse_error: Final = b'data: {"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}\n\n'
    context_overflow: Final = _dumps(
        {
            "error": {
                "message": "This model's maximum context length is 128000 tokens. However, your "
                "messages resulted in 250000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    )
    _errors: Final[dict[int, tuple[str, str | None, str]]] = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", None, "You are not allowed to sample from this model."),
        404: ("invalid_request_error", "model_not_found", "The model does not exist."),
        # The real API types a 429 by what ran out ("requests" / "tokens"), code rate_limit_exceeded.
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
        500: ("server_error", None, "The server had an error while processing your request."),
        503: ("server_error", None, "The server is overloaded or not ready yet."),
    }

    def error(self, status: int, message: str | None = None) -> bytes:
        default = ("invalid_request_error", None, f"Mock error {status}.")
        if status >= 500:
            default = ("server_error", None, f"Mock error {status}.")
        kind, code, text = self._errors.get(status, default)
        return _dumps({"error": {"message": message or text, "type": kind, "param": None, "code": code}})

    def not_found(self, method: str, path: str) -> bytes:
        message = f"Invalid URL ({method} {path})"
        return _dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})

    def problem(self, payload: Mapping[str, Any]) -> str | None:
        if not isinstance(payload.get("model"), str):
            return "you must provide a model parameter"
        if not isinstance(payload.get("messages"), list):
            return "Missing required parameter: 'messages'."
        return None

    # The text answer is the benchmark's hot path: fill a pre-encoded template instead of
    # encoding a fresh dict tree (about 4x cheaper). It must render what the dict path would.
    _text_template: Final = (
        b'{"id":"%s","object":"chat.completion","created":%d,"model":%s,"choices":[{"index":0,'
        b'"message":{"role":"assistant","content":%s,"refusal":null,"annotations":[]},'
        b'"logprobs":null,"finish_reason":"%s"}],"usage":{"prompt_tokens":%d,'
        b'"completion_tokens":%d,"total_tokens":%d},"system_fingerprint":"fp_mock"}'
    )

    def completion(self, reply: _Reply, rid: str, created: int) -> bytes:
        if reply.finish != "tool" and reply.logprob is None:
            return self._text_template % (
                rid.encode(),
                created,
                _json_bytes(reply.model),
                _json_bytes(reply.text),
                b"content_filter" if reply.finish == "safety" else b"stop",
                reply.input_tokens,
                reply.output_tokens,
                reply.input_tokens + reply.output_tokens,
            )
        return self._dict_completion(reply, rid, created)

    def _dict_completion(self, reply: _Reply, rid: str, created: int) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
        finish = "content_filter" if reply.finish == "safety" else "stop"
        if reply.finish == "tool":
            message["content"] = None
            message["tool_calls"] = [self._tool_call(reply, rid, reply.text)]
            finish = "tool_calls"
        return _dumps(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": reply.model,
                "choices": [{"index": 0, "message": message, "logprobs": _logprobs(reply), "finish_reason": finish}],
                "usage": self._usage(reply),
                "system_fingerprint": "fp_mock",
            }
        )

    def stream(self, reply: _Reply, rid: str, created: int, payload: Mapping[str, Any]) -> _StreamPlan:
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "system_fingerprint": "fp_mock",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {**base, "choices": [choice]}
            if include_usage:
                body["usage"] = None  # the real API marks every non-usage chunk this way
            return b"data: " + _dumps(body) + b"\n\n"

        if reply.finish == "tool":
            call = self._tool_call(reply, rid, "")
            head = chunk({"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]})
            tokens = tuple(
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in reply.pieces
            )
            finish = "tool_calls"
        else:
            head = chunk({"role": "assistant", "content": "", "refusal": None})
            tokens = tuple(chunk({"content": piece}) for piece in reply.pieces)
            finish = "content_filter" if reply.finish == "safety" else "stop"
        tail = chunk({}, finish)
        if include_usage:
            tail += b"data: " + _dumps({**base, "choices": [], "usage": self._usage(reply)}) + b"\n\n"
        return _StreamPlan(head, tokens, tail, b"data: [DONE]\n\n")

    @staticmethod
    def _tool_call(reply: _Reply, rid: str, arguments: str) -> dict[str, Any]:
        return {
            "id": f"call_{rid.removeprefix('chatcmpl-')}",
            "type": "function",
            "function": {"name": reply.tool_name, "arguments": arguments},
        }

    @staticmethod
    def _usage(reply: _Reply) -> dict[str, int]:
        return {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }


class _AnthropicWire:
    quota_headers = staticmethod(_anthropic_quota)
    endpoint: Final = "/v1/messages"
    id_prefix: Final = "msg_mock"
    request_id_header: Final = "request-id"
    sse_error: Final = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    context_overflow: Final = _dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"},
        }
    )
    _errors: Final[dict[int, tuple[str, str]]] = {
        400: ("invalid_request_error", "Invalid request."),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low."),
        403: ("permission_error", "Your API key does not have permission to use this resource."),
        404: ("not_found_error", "Not found"),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
        500: ("api_error", "Internal server error"),
        504: ("timeout_error", "Request timed out"),
        529: ("overloaded_error", "Overloaded"),
    }

    def error(self, status: int, message: str | None = None) -> bytes:
        default = ("api_error" if status >= 500 else "invalid_request_error", f"Mock error {status}.")
        kind, text = self._errors.get(status, default)
        return _dumps({"type": "error", "error": {"type": kind, "message": message or text}})

    def not_found(self, method: str, path: str) -> bytes:
        return self.error(404, f"Not found: {method} {path}")

    def problem(self, payload: Mapping[str, Any]) -> str | None:
        # The real API refuses these, and a translator that forgets max_tokens should hear it here.
        if not isinstance(payload.get("model"), str):
            return "model: Field required"
        if not isinstance(payload.get("messages"), list):
            return "messages: Field required"
        max_tokens = payload.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Field required"
        return None

    # Pre-encoded hot path, as in _OpenAIWire.
    _text_template: Final = (
        b'{"id":"%s","type":"message","role":"assistant","model":%s,'
        b'"content":[{"type":"text","text":%s}],"stop_reason":"end_turn","stop_sequence":null,'
        b'"usage":{"input_tokens":%d,"output_tokens":%d}}'
    )

    def completion(self, reply: _Reply, rid: str, created: int) -> bytes:
        if reply.finish == "stop" and reply.pieces:
            return self._text_template % (
                rid.encode(),
                _json_bytes(reply.model),
                _json_bytes(reply.text),
                reply.input_tokens,
                reply.output_tokens,
            )
        return self._dict_completion(reply, rid, created)

    def _dict_completion(self, reply: _Reply, rid: str, created: int) -> bytes:
        block = self._block(reply, rid, complete=True)
        return _dumps(
            {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "model": reply.model,
                "content": [] if block is None else [block],
                "stop_reason": self._stop_reason(reply),
                "stop_sequence": None,
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
            }
        )

    def stream(self, reply: _Reply, rid: str, created: int, payload: Mapping[str, Any]) -> _StreamPlan:
        message: dict[str, Any] = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": 0},
        }
        head = _event("message_start", {"type": "message_start", "message": message})
        block = self._block(reply, rid, complete=False)
        tail = b""
        if block is not None:
            start = {"type": "content_block_start", "index": 0, "content_block": block}
            head += _event("content_block_start", start)
            tail = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        head += _event("ping", {"type": "ping"})
        if reply.finish == "tool":
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in reply.pieces]
        else:
            deltas = [{"type": "text_delta", "text": piece} for piece in reply.pieces]
        tokens = tuple(
            _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas
        )
        tail += _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        return _StreamPlan(head, tokens, tail, _event("message_stop", {"type": "message_stop"}))

    @staticmethod
    def _block(reply: _Reply, rid: str, *, complete: bool) -> dict[str, Any] | None:
        if reply.finish == "tool":
            # An empty tool call has no arguments to parse; the schema's closest form is {}.
            arguments = json.loads(reply.text) if complete and reply.text else {}
            tool_id = f"toolu_{rid.removeprefix('msg_')}"
            return {"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": arguments}
        if not reply.pieces:
            return None  # empty and refused answers carry no content block at all
        return {"type": "text", "text": reply.text if complete else ""}

    @staticmethod
    def _stop_reason(reply: _Reply) -> str:
        return {"stop": "end_turn", "tool": "tool_use", "safety": "refusal"}[reply.finish]


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


_Wire: TypeAlias = _OpenAIWire | _AnthropicWire
_WIRES: Final[dict[str, _Wire]] = {"openai": _OpenAIWire(), "anthropic": _AnthropicWire()}


# ---------------------------------------------------------------------------------------------
# The HTTP shell


@dataclass
class RecordedRequest:
    method: str
    path: str
    # Lower-cased names; repeated headers joined with ", ". Kept out of repr: they hold the key.
    headers: dict[str, str] = field(repr=False)
    body: bytes
    json: Any | None
    at: float  # time.monotonic() when the request arrived

    def to_json(self) -> dict[str, Any]:
        """For the control API: credential headers as fingerprints (tests in this process compare
        `headers` itself; nothing that leaves the mock carries a key in clear)."""
        headers = {k: key_fingerprint(v) if k in _CREDENTIAL_HEADERS else v for k, v in self.headers.items()}
        return {"method": self.method, "path": self.path, "headers": headers, "json": self.json, "at": self.at}


_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})


def key_fingerprint(value: str) -> str:
    """What the control API shows of a credential header: enough to tell two keys apart."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def _masked_key(request: web.BaseRequest) -> str:
    """The key a request carried, masked the way OpenAI's 401 echoes it (first 8, last 4)."""
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    return key[:8] + "*" * max(4, len(key) - 12) + key[-4:]


def _parse_json(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # fault tests feed garbage, including deep nesting
        return None


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST and no HTTP response at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close into RST, which is what a crashed or overloaded LB looks like.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class MockProvider:
    def __init__(
        self,
        name: str,
        dialect: Dialect,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token_interval: float = 0.01,
        max_recorded: int | None = None,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        """`max_recorded` bounds `requests` (the newest are kept) for long benchmark runs;
        `jitter` > 0 spreads timed modes lognormally (their time is then the p95)."""
        if not _NAME.match(name):
            raise ValueError(f"provider name must match {_NAME.pattern!r}, but was {name!r}")
        if dialect not in _WIRES:
            raise ValueError(f"dialect must be 'openai' or 'anthropic', but was {dialect!r}")
        if not math.isfinite(token_interval) or token_interval < 0:
            raise ValueError(f"token_interval must be >= 0, but was {token_interval!r}")
        if max_recorded is not None and max_recorded < 1:
            raise ValueError(f"max_recorded must be None or >= 1, but was {max_recorded!r}")
        if not math.isfinite(jitter) or jitter < 0:
            raise ValueError(f"jitter must be >= 0, but was {jitter!r}")
        self.name = name
        self.dialect: Dialect = dialect
        self.token_interval = token_interval
        self.requests: list[RecordedRequest] = []
        self.request_count = 0  # since start or reset(), even when max_recorded trimmed some
        self.max_recorded = max_recorded
        self.jitter = jitter
        self._rng = random.Random(seed)
        self.port = 0
        self._ssl_context = ssl_context
        self._wire = _WIRES[dialect]
        self._mode_header = f"x-mock-mode-{name.lower()}"
        self._mode = _OK
        self._mode_since = time.monotonic()
        self._brownout_calls = 0
        self._times_left: int | None = None
        # Tests steer the mock from their own thread while its loop serves in another one.
        self._lock = threading.Lock()
        self._host = "127.0.0.1"
        self._runner: web.ServerRunner | None = None
        self._ids = itertools.count(1)
        self.max_concurrent: int | None = None
        self.in_flight = 0  # chat requests being answered now
        self.peak_in_flight = 0
        self.over_limit = 0  # chat requests refused with a 429 by max_concurrent

    def __repr__(self) -> str:
        times = "" if self._times_left is None else f" x{self._times_left}"
        return f"<MockProvider {self.name} {self.dialect} {self.url} mode={self.mode}{times}>"

    @property
    def url(self) -> str:
        scheme = "http" if self._ssl_context is None else "https"
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"{scheme}://{host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode.text

    @property
    def times_left(self) -> int | None:
        return self._times_left

    @property
    def started(self) -> bool:
        return self._runner is not None

    def set_mode(self, mode: str, times: int | None = None) -> None:
        parsed = parse_mode(mode)
        if times is not None and times < 1:
            raise ValueError(f"times must be None or >= 1, but was {times!r}")
        with self._lock:
            self._mode, self._times_left = parsed, times
        self._mode_since = time.monotonic()  # a brownout's latency climbs from when it was set
        self._brownout_calls = 0

    def reset(self) -> None:
        with self._lock:
            self._mode, self._times_left = _OK, None
            self.requests.clear()
        self.request_count = 0
        self.max_concurrent = None
        self.peak_in_flight = self.over_limit = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._runner is not None:
            raise RuntimeError(f"mock provider {self.name!r} is already running on {self.url}")
        # handler_cancellation: a client that hangs up mid-delay or mid-stall frees its handler.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=self._ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._host = runner, host
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Abort rather than close: a TLS close waits for the peer's close_notify, and a loop that
        # shuts down first leaks the transport (and, under uvloop, errors on exit).
        if runner.server is not None:
            for connection in runner.server.connections:
                if connection.transport is not None:
                    connection.transport.abort()
        await runner.cleanup()

    # -- request handling ----------------------------------------------------------------------

    def _next_mode(self, request: web.BaseRequest) -> Mode:
        override = request.headers.get(self._mode_header) or request.headers.get("x-mock-mode")
        if override is not None:
            return parse_mode(override)
        with self._lock:
            mode = self._mode
            if self._times_left is not None:
                self._times_left -= 1
                if self._times_left <= 0:
                    self._mode, self._times_left = _OK, None
        return mode

    def _models(self) -> dict[str, Any]:
        model = f"{self.name}-model"
        if self.dialect == "anthropic":
            entry = {"type": "model", "id": model, "display_name": model, "created_at": "2026-01-01T00:00:00Z"}
            return {"data": [entry], "has_more": False, "first_id": model, "last_id": model}
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": self.name}]}

    def _bad_key(self, request: web.BaseRequest, wire: Any) -> web.Response:
        """A 401 that echoes the key masked (as OpenAI does), and — as a careless gateway might —
        whole in a header, with a session cookie."""
        response = self._error(401, wire.error(401, f"Incorrect API key provided: {_masked_key(request)}."))
        sent = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
        response.headers["x-echo-auth"] = sent
        response.headers["set-cookie"] = "session=provider-side; HttpOnly"
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        at = time.monotonic()
        # Not request.read(): it refuses bodies over 1 MiB, and context-overflow tests send more.
        body = await request.content.read()
        payload = _parse_json(body)
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.requests.append(RecordedRequest(request.method, request.path, headers, body, payload, at))
        self.request_count += 1
        limit = self.max_recorded
        if limit is not None and len(self.requests) >= 2 * limit:
            # Trimming in halves keeps appends amortised O(1) on a plain list.
            del self.requests[:-limit]

        wire = self._wire
        if request.path == "/health" and request.method == "GET":
            return web.Response(body=b'{"status":"ok"}', headers={"content-type": "application/json"})
        if request.path == "/v1/models" and request.method == "GET":
            # The models list both APIs have: what pass-through requests are tested with.
            if self._next_mode(request).kind == "bad_key":
                return self._bad_key(request, wire)
            return web.json_response(self._models())
        if request.path != wire.endpoint or request.method != "POST":
            return self._error(404, wire.not_found(request.method, request.path))
        try:
            mode = self._next_mode(request)
        except ValueError as exc:
            return self._error(400, wire.error(400, str(exc)))
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            self.over_limit += 1
            return self._error(429, wire.error(429, "Too many concurrent requests."), "1")
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request, mode, payload, len(body))
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.BaseRequest, mode: Mode, payload: Any, body_size: int) -> web.StreamResponse:
        wire = self._wire
        stream = isinstance(payload, dict) and payload.get("stream") is True
        if not stream and mode.kind in _STREAM_ONLY:
            mode = _as_json_mode(mode)
        kind = mode.kind
        if kind == "reset":
            _abort(request)
            return web.Response()  # never sent: aiohttp notes the dead transport and moves on
        if kind == "status":
            return self._error(mode.status, wire.error(mode.status), mode.retry_after)
        if kind == "context_overflow":
            return self._error(400, wire.context_overflow)
        if kind == "bad_key":
            return self._bad_key(request, wire)
        refuses = kind == "noprefill" or (kind == "mimic" and mode.text.endswith(":noprefill"))
        if refuses and isinstance(payload, dict) and assistant_prefill(payload) is not None:
            return self._error(400, wire.error(400, "This model does not support assistant message prefill."))
        if not isinstance(payload, dict):
            return self._error(400, wire.error(400, "The request body is not a valid JSON object."))
        problem = wire.problem(payload)
        if problem is not None:
            return self._error(400, wire.error(400, problem))
        if kind == "delay":
            await asyncio.sleep(self._spread(mode.seconds))
        extra_headers: dict[str, str] = {}
        if kind == "brownout":
            share, start, end, span = mode.numbers
            progress = min(1.0, (time.monotonic() - self._mode_since) / span)
            self._brownout_calls += 1
            # Exactly `share` of the calls fail, spread evenly: deterministic, no randomness in tests.
            n = self._brownout_calls
            if math.floor(n * share) > math.floor((n - 1) * share):
                return self._error(503, wire.error(503))
            await asyncio.sleep(self._spread(start + (end - start) * progress))
        elif kind == "quota":
            extra_headers = wire.quota_headers(mode.count, mode.seconds)

        reply = _build_reply(self.name, mode, payload, body_size)
        serial = next(self._ids)
        rid = f"{wire.id_prefix}{serial}"
        if stream:
            plan = wire.stream(reply, rid, int(time.time()), payload)
            return await self._stream(request, mode, plan, serial)
        data = wire.completion(reply, rid, int(time.time()))
        if kind == "invalid_json":
            data = data[: len(data) // 2]
        headers = {"content-type": "application/json", wire.request_id_header: f"req_mock{serial}", **extra_headers}
        return web.Response(body=data, headers=headers)

    def _spread(self, p95: float) -> float:
        """A latency whose p95 is `p95`: lognormal with sigma `jitter` (exactly `p95` without)."""
        if not self.jitter:
            return p95
        return p95 * math.exp(self.jitter * (self._rng.gauss(0.0, 1.0) - _Z95))

    def _error(self, status: int, body: bytes, retry_after: str | None = None) -> web.Response:
        headers = {"content-type": "application/json"}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        return web.Response(status=status, body=body, headers=headers)

    async def _stream(self, request: web.BaseRequest, mode: Mode, plan: _StreamPlan, serial: int) -> web.StreamResponse:
        kind = mode.kind
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                self._wire.request_id_header: f"req_mock{serial}",
            }
        )
        try:
            await response.prepare(request)  # aiohttp sends the headers here, not with the body
            if kind == "first_delay":
                await asyncio.sleep(mode.seconds)
            if kind == "sse_error":
                await response.write(self._wire.sse_error)
                await response.write_eof()
                return response
            if kind == "junk_head":
                await self._junk_head(response, mode.count)
            await response.write(plan.head)
            if kind == "endless_line":
                await self._endless_line(response, plan, mode.count)
                return response
            if kind == "junk_tail":
                for event in plan.tokens[: mode.count]:
                    await response.write(event)
                await self._junk(response, _ENDLESS_MAX)
                await response.write_eof()
                return response
            if kind == "invalid_json":
                first = plan.tokens[0]
                await response.write(first[: len(first) // 2] + b"\n\n")
                await response.write_eof()
                return response
            end = mode.count if kind in ("cut", "reset_after") else len(plan.tokens)
            if kind in ("stall_close", "stall_end", "stall_reset", "close_after"):
                end = mode.count
            for index, event in enumerate(plan.tokens[:end]):
                if kind in ("stall", "pause") and index == mode.count:
                    await asyncio.sleep(mode.seconds)
                elif index and self.token_interval:
                    await asyncio.sleep(self.token_interval)
                if kind == "badevent" and index == mode.count:
                    await response.write(_BAD_EVENT)
                    if self.token_interval:
                        await asyncio.sleep(self.token_interval)
                await response.write(event)
            if kind in ("stall_close", "stall_end", "stall_reset", "close_after"):
                # N tokens, (silence), then: FIN without the terminating chunk / a clean end of
                # the HTTP response without finish or [DONE] / an RST.
                if kind != "close_after":
                    await asyncio.sleep(mode.seconds)
                if kind == "stall_end":
                    await response.write_eof()
                elif kind == "stall_reset":
                    _abort(request)
                elif request.transport is not None:
                    request.transport.close()
                return response
            if kind == "no_done_n":
                await response.write(plan.tail)
                await response.write_eof()
                return response
            if kind == "stall" and mode.count >= len(plan.tokens):
                await asyncio.sleep(mode.seconds)
            if kind == "reset_after":
                _abort(request)
                return response
            if kind == "finish_hang":
                # Everything but the terminal marker, then silence before it.
                await response.write(plan.tail)
                await asyncio.sleep(mode.seconds)
                await response.write(plan.done)
            elif kind != "cut":
                await response.write(plan.tail if kind == "no_done" else plan.tail + plan.done)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up; there is nobody left to answer
        return response

    async def _endless_line(self, response: web.StreamResponse, plan: _StreamPlan, tokens: int) -> None:
        """N tokens, then one `data:` line that never ends (up to _ENDLESS_MAX bytes)."""
        for event in plan.tokens[:tokens]:
            await response.write(event)
        await response.write(b"data: ")
        line = b"x" * _ENDLESS_SLICE
        for _ in range(_ENDLESS_MAX // _ENDLESS_SLICE):
            await response.write(line)  # waits while the reader is not reading
        await response.write_eof()

    async def _junk_head(self, response: web.StreamResponse, size: int) -> None:
        """About `size` bytes of well-formed events that carry no token (an Anthropic ping, an
        OpenAI chunk with an empty delta) before the answer's first event."""
        await self._junk(response, size)

    async def _junk(self, response: web.StreamResponse, size: int) -> None:
        """About `size` bytes of well-formed events that carry no token."""
        if self.dialect == "anthropic":
            event = _event("ping", {"type": "ping"})
        else:
            event = b"data: " + _dumps({"object": "chat.completion.chunk", "choices": []}) + b"\n\n"
        batch = event * max(1, _ENDLESS_SLICE // len(event))
        for _ in range(max(1, size // len(batch))):
            await response.write(batch)


# ---------------------------------------------------------------------------------------------
# Fleet and control API


def _json_error(exc_class: type[web.HTTPException], message: str) -> web.HTTPException:
    return exc_class(text=_encode({"error": message}), content_type="application/json")


class MockFleet:
    """Several providers plus one JSON control server.

    start() starts any provider that is not running yet (on a free port); stop() stops them all.
    """

    def __init__(self, providers: Sequence[MockProvider]) -> None:
        self.providers: dict[str, MockProvider] = {}
        for provider in providers:
            if provider.name in self.providers:
                raise ValueError(f"provider names must be unique, but {provider.name!r} repeats")
            self.providers[provider.name] = provider
        self.port = 0
        self._host = "127.0.0.1"
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    async def start(self, control_port: int = 0, host: str = "127.0.0.1") -> int:
        if self._runner is not None:
            raise RuntimeError(f"mock fleet is already running on {self.url}")
        try:
            for provider in self.providers.values():
                if not provider.started:
                    await provider.start(host)
            app = web.Application()
            app.router.add_get("/providers", self._list)
            app.router.add_post("/providers/{name}/mode", self._set_mode)
            app.router.add_post("/providers/{name}/reset", self._reset)
            app.router.add_get("/providers/{name}/requests", self._requests)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, control_port).start()
            except BaseException:
                await runner.cleanup()
                raise
        except BaseException:
            await self.stop()
            raise
        self._runner, self._host = runner, host
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for provider in self.providers.values():
            await provider.stop()

    def _summary(self, provider: MockProvider) -> dict[str, Any]:
        return {
            "dialect": provider.dialect,
            "url": provider.url,
            "mode": provider.mode,
            "count": provider.request_count,
        }

    def _provider(self, request: web.Request) -> MockProvider:
        name = request.match_info["name"]
        provider = self.providers.get(name)
        if provider is None:
            raise _json_error(web.HTTPNotFound, f"no provider named {name!r}")
        return provider

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({n: self._summary(p) for n, p in self.providers.items()})

    async def _set_mode(self, request: web.Request) -> web.Response:
        provider = self._provider(request)
        try:
            body = await request.json()
        except ValueError:
            raise _json_error(web.HTTPBadRequest, "body must be JSON") from None
        mode = body.get("mode") if isinstance(body, dict) else None
        times = body.get("times") if isinstance(body, dict) else None
        if not isinstance(mode, str):
            raise _json_error(web.HTTPBadRequest, f'body must be {{"mode": str}}, but was {body!r}')
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise _json_error(web.HTTPBadRequest, f"times must be an integer, but was {times!r}")
        try:
            provider.set_mode(mode, times)
        except ValueError as exc:
            raise _json_error(web.HTTPBadRequest, str(exc)) from None
        return web.json_response(self._summary(provider))

    async def _reset(self, request: web.Request) -> web.Response:
        provider = self._provider(request)
        provider.reset()
        return web.json_response(self._summary(provider))

    async def _requests(self, request: web.Request) -> web.Response:
        provider = self._provider(request)
        return web.json_response([recorded.to_json() for recorded in provider.requests])


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class _ProviderSpec:
    name: str
    dialect: Dialect
    port: int


def _provider_spec(text: str) -> _ProviderSpec:
    name, _, rest = text.partition("=")
    dialect, _, port = rest.rpartition(":")
    if not name or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected NAME=DIALECT:PORT, but was {text!r}")
    if dialect == "openai":
        return _ProviderSpec(name, "openai", int(port))
    if dialect == "anthropic":
        return _ProviderSpec(name, "anthropic", int(port))
    raise argparse.ArgumentTypeError(f"dialect must be openai or anthropic, but was {dialect!r}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.demo.mock_provider",
        description="Mock OpenAI/Anthropic providers with a JSON control API.",
    )
    parser.add_argument(
        "--provider",
        action="append",
        type=_provider_spec,
        required=True,
        metavar="NAME=DIALECT:PORT",
        help="repeatable; DIALECT is openai or anthropic; PORT 0 picks a free port",
    )
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-interval", type=float, default=0.01, metavar="SECONDS")
    parser.add_argument(
        "--max-recorded",
        type=int,
        default=10_000,
        metavar="N",
        help="keep at least the newest N requests per provider (0: unbounded)",
    )
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (needs --tls-key)")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


async def _serve(args: argparse.Namespace) -> None:
    context: ssl.SSLContext | None = None
    if args.tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    specs: list[_ProviderSpec] = args.provider
    providers = [
        MockProvider(
            s.name,
            s.dialect,
            ssl_context=context,
            token_interval=args.token_interval,
            max_recorded=args.max_recorded or None,
        )
        for s in specs
    ]
    fleet = MockFleet(providers)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        for spec, provider in zip(specs, providers, strict=True):
            await provider.start(args.host, spec.port)
        await fleet.start(args.control_port, args.host)
        # One JSON line on stdout tells a parent process (or a human) where everything listens.
        ready = {"control": fleet.url, "providers": {p.name: p.url for p in providers}}
        print(json.dumps(ready), flush=True)
        await stopping.wait()
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency, but optional here
        asyncio.run(_serve(args))
    else:
        # The mock doubles as the "fast upstream" in the benchmark; uvloop keeps it off the
        # critical path.
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
