"""Streamed answers: provider SSE events → dialect-neutral deltas → client SSE bytes.

A reader turns one provider event into deltas; a writer turns one delta into the bytes of zero or
more client events. Readers and writers keep the little state each dialect needs:

- Tool calls are numbered by their ordinal among the answer's tool calls (0, 1, …), whatever the
  provider numbers them by: Anthropic counts text blocks too, some OpenAI-compatible servers omit
  the index. Writers renumber for their own dialect.
- OpenAI reports usage after the finish reason, in its own chunk; Anthropic puts stop reason and
  usage in one `message_delta`. So the Anthropic writer holds `Finish` until `Usage` (or `Done`)
  arrives, and the OpenAI writer holds `Usage` until `Done`, where OpenAI sends it.
- The openai SDK concatenates every string field of a delta, so `role` goes in the first chunk only.
- Readers never raise: a provider event that is not JSON becomes a `StreamError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeAlias

from extproc.core import Failure
from extproc.translate.errors import ANTHROPIC, OPENAI, dump_json, error_body
from extproc.translate.fields import int_or_zero, text_or_empty
from extproc.translate.sse import SseEvent

from .errors import load_json


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class MessageStart:
    id: str
    model: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class StreamError:
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class Done:
    pass


Delta: TypeAlias = MessageStart | TextDelta | ToolCallStart | ToolCallArgs | Finish | Usage | StreamError | Done

_FROM_OPENAI: Final[dict[str, FinishReason]] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}
_FROM_ANTHROPIC: Final[dict[str, FinishReason]] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
_TO_ANTHROPIC: Final[dict[FinishReason, str]] = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}


def finish_from_openai(value: object) -> FinishReason:
    """An OpenAI `finish_reason`; anything unknown reads as a normal stop."""
    return _FROM_OPENAI.get(value, FinishReason.STOP) if isinstance(value, str) else FinishReason.STOP


def finish_from_anthropic(value: object) -> FinishReason:
    """An Anthropic `stop_reason`; anything unknown reads as a normal stop."""
    if isinstance(value, str):
        return _FROM_ANTHROPIC.get(value, FinishReason.STOP)
    return FinishReason.STOP


def finish_to_anthropic(reason: FinishReason) -> str:
    return _TO_ANTHROPIC[reason]


# The relay's own StreamError type for a stream that broke its caps (an endless line, megabytes
# before the first token): a provider failure, classified like an answer that is not one.
MALFORMED_STREAM: Final = "malformed_stream"
EMPTY_TOOL_CALL: Final = "empty_tool_call"
_STREAM_ERROR_FAILURE: Final[dict[str, Failure]] = {
    MALFORMED_STREAM: Failure.SCHEMA_ERROR,
    EMPTY_TOOL_CALL: Failure.TOOL_MISMATCH,
    "overloaded_error": Failure.SERVER_ERROR,
    "api_error": Failure.SERVER_ERROR,
    "server_error": Failure.SERVER_ERROR,
    "timeout_error": Failure.TIMEOUT,
    "timeout": Failure.TIMEOUT,
    "rate_limit_error": Failure.RATE_LIMITED,
    "rate_limit_exceeded": Failure.RATE_LIMITED,
    "insufficient_quota": Failure.BUDGET_EXCEEDED,
    "billing_error": Failure.BUDGET_EXCEEDED,
}


def classify_stream_error(error: StreamError) -> Failure:
    """The failure class of an error a provider sent inside a stream (there is no status code)."""
    return _STREAM_ERROR_FAILURE.get(error.type, Failure.STREAM_INTERRUPTED)


def _loads_object(data: str) -> dict[str, Any] | None:
    try:
        value = load_json(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _malformed(dialect: str) -> list[Delta]:
    return [StreamError(type="invalid_event", message=f"{dialect} provider sent an invalid event")]


def _error_delta(error: object) -> StreamError:
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        message = error.get("message")
        return StreamError(
            type=kind if isinstance(kind, str) else "error",
            message=message if isinstance(message, str) else "provider stream error",
        )
    return StreamError(
        type="error",
        message=error if isinstance(error, str) else "provider stream error",
    )


class OpenAIStreamReader:
    """Reads `chat.completion.chunk` events; only choice 0 is followed (n=1 is enforced upstream).

    Besides the deltas it keeps what a rescue needs to continue the stream as the client saw it:
    the first chunk's `created` and `system_fingerprint`, and whether any text was a refusal.
    """

    __slots__ = ("_last_key", "_started", "_tools", "created", "refused", "system_fingerprint")

    def __init__(self) -> None:
        self._started = False
        self._tools: dict[object, int] = {}  # provider's tool-call key → ordinal
        self._last_key: object = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.refused = False

    def read(self, ev: SseEvent) -> list[Delta]:
        data = ev.data.strip()
        if data == "[DONE]":
            return [Done()]
        if not data:
            return []
        obj = _loads_object(data)
        if obj is None:
            return _malformed(OPENAI)
        if obj.get("error"):
            return [_error_delta(obj["error"])]
        out: list[Delta] = []
        if not self._started:
            self._started = True
            out.append(MessageStart(id=text_or_empty(obj.get("id")), model=text_or_empty(obj.get("model"))))
            created = obj.get("created")
            if isinstance(created, int) and not isinstance(created, bool):
                self.created = created
            fingerprint = obj.get("system_fingerprint")
            if isinstance(fingerprint, str):
                self.system_fingerprint = fingerprint
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._read_choice(choice, out)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            out.append(
                Usage(
                    input_tokens=int_or_zero(usage.get("prompt_tokens")),
                    output_tokens=int_or_zero(usage.get("completion_tokens")),
                )
            )
        return out

    def _read_choice(self, choice: dict[str, Any], out: list[Delta]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(TextDelta(text))
            text = delta.get("refusal")
            if isinstance(text, str) and text:
                self.refused = True
                out.append(TextDelta(text))
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for call in tool_calls:
                    if isinstance(call, dict):
                        self._read_tool_call(call, out)
        finish = choice.get("finish_reason")
        if finish is not None:
            out.append(Finish(finish_from_openai(finish)))

    def _read_tool_call(self, call: dict[str, Any], out: list[Delta]) -> None:
        function = _dict(call.get("function"))
        call_id = call.get("id")
        key: object = call.get("index")
        if not isinstance(key, int) or isinstance(key, bool):
            # Without an index, a new id starts a call and anything else continues the last one.
            new_id = isinstance(call_id, str) and call_id and ("id", call_id) not in self._tools
            key = ("id", call_id) if new_id else self._last_key
        self._last_key = key
        ordinal = self._tools.get(key)
        if ordinal is None:
            ordinal = self._tools[key] = len(self._tools)
            out.append(
                ToolCallStart(
                    index=ordinal,
                    id=call_id if isinstance(call_id, str) and call_id else f"call_{ordinal}",
                    name=text_or_empty(function.get("name")),
                )
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(ToolCallArgs(index=ordinal, fragment=arguments))


class AnthropicStreamReader:
    """Reads Messages API stream events; thinking and server-tool blocks are not forwarded.

    Besides the deltas it keeps the content block state a rescue needs to continue the stream as
    the client saw it (when the events passed through unchanged): the open block's index and
    whether it is text, the index a new block would take, and whether any block was neither
    text nor a tool call (thinking, server tools).
    """

    __slots__ = ("_input", "_tools", "next_block", "open_block", "open_text", "other_content")

    def __init__(self) -> None:
        self._tools: dict[object, int] = {}  # content block index → tool-call ordinal
        self.open_block: int | None = None
        self.open_text = False
        self.next_block = 0
        self.other_content = False
        # Anthropic splits prompt tokens into uncached, cache-write and cache-read parts; the
        # neutral (and OpenAI) count is their sum.
        self._input = {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def read(self, ev: SseEvent) -> list[Delta]:
        if not ev.data.strip():
            return []
        obj = _loads_object(ev.data)
        if obj is None:
            return _malformed(ANTHROPIC)
        kind = obj.get("type", ev.event)
        if kind == "content_block_delta":
            return self._block_delta(obj)
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "message_start":
            message = _dict(obj.get("message"))
            self._count_input(_dict(message.get("usage")))
            return [MessageStart(id=text_or_empty(message.get("id")), model=text_or_empty(message.get("model")))]
        if kind == "message_delta":
            out: list[Delta] = []
            stop_reason = _dict(obj.get("delta")).get("stop_reason")
            if stop_reason is not None:
                out.append(Finish(finish_from_anthropic(stop_reason)))
            usage = _dict(obj.get("usage"))
            self._count_input(usage)
            out.append(
                Usage(
                    input_tokens=sum(self._input.values()),
                    output_tokens=int_or_zero(usage.get("output_tokens")),
                )
            )
            return out
        if kind == "content_block_stop":
            self.open_block = None
            self.open_text = False
            return []
        if kind == "message_stop":
            return [Done()]
        if kind == "error":
            return [_error_delta(obj.get("error"))]
        return []  # ping, and event types added after this was written

    @property
    def input_tokens(self) -> int:
        """The prompt tokens the provider has reported so far (all three parts)."""
        return sum(self._input.values())

    def _count_input(self, usage: dict[str, Any]) -> None:
        for field in self._input:
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool):
                self._input[field] = value

    def _block_start(self, obj: dict[str, Any]) -> list[Delta]:
        block = _dict(obj.get("content_block"))
        kind = block.get("type")
        index = obj.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            self.open_block = index
            self.next_block = max(self.next_block, index + 1)
        self.open_text = kind == "text"
        if kind == "text":
            text = block.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if kind != "tool_use":
            self.other_content = True
            return []
        ordinal = self._tools[obj.get("index")] = len(self._tools)
        out: list[Delta] = [
            ToolCallStart(index=ordinal, id=text_or_empty(block.get("id")), name=text_or_empty(block.get("name")))
        ]
        tool_input = block.get("input")
        if isinstance(tool_input, dict) and tool_input:
            # Streams start tool_use blocks with `input: {}` and send the input as deltas; a
            # non-empty one is the whole input at once.
            out.append(
                ToolCallArgs(index=ordinal, fragment=json.dumps(tool_input, ensure_ascii=False, separators=(",", ":")))
            )
        return out

    def _block_delta(self, obj: dict[str, Any]) -> list[Delta]:
        delta = _dict(obj.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if kind == "input_json_delta":
            ordinal = self._tools.get(obj.get("index"))
            fragment = delta.get("partial_json")
            if ordinal is not None and isinstance(fragment, str) and fragment:
                return [ToolCallArgs(index=ordinal, fragment=fragment)]
        return []


class OpenAIStreamWriter:
    """Writes `chat.completion.chunk` events the openai SDK accumulates."""

    __slots__ = (
        "_closed",
        "_created",
        "_fingerprint",
        "_id",
        "_include_usage",
        "_model",
        "_role_sent",
        "_usage",
    )

    def __init__(
        self,
        *,
        id: str,
        model: str,
        created: int,
        include_usage: bool,
        system_fingerprint: str | None = None,
        role_sent: bool = False,
    ) -> None:
        """`system_fingerprint` and `role_sent` continue a stream the client has begun (a rescue):
        every chunk carries the fingerprint it saw, and no second role chunk is sent."""
        self._id = id
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._fingerprint = system_fingerprint
        self._role_sent = role_sent
        self._usage: Usage | None = None
        self._closed = False

    def _frame(self, choices: list[Any], **extra: Any) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            **extra,
        }
        if self._fingerprint is not None:
            chunk["system_fingerprint"] = self._fingerprint
        return b"data: " + dump_json(chunk) + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return self._frame([choice])

    def write(self, d: Delta) -> bytes:
        if self._closed:
            return b""
        match d:
            case TextDelta(text=text) if text:
                return self._chunk({"content": text})
            case ToolCallStart(index=index, id=call_id, name=name):
                function = {"name": name, "arguments": ""}
                call = {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": function,
                }
                return self._chunk({"tool_calls": [call]})
            case ToolCallArgs(index=index, fragment=fragment) if fragment:
                return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            case Finish(reason=reason):
                return self._chunk({}, reason.value)
            case MessageStart() if not self._role_sent:
                return self._chunk({"content": ""})
            case Usage():
                self._usage = d
            case StreamError():
                return self.error(classify_stream_error(d), d.message)
            case Done():
                self._closed = True
                usage = self._usage
                if self._include_usage and usage is not None:
                    counts = {
                        "prompt_tokens": usage.input_tokens,
                        "completion_tokens": usage.output_tokens,
                        "total_tokens": usage.input_tokens + usage.output_tokens,
                    }
                    return self._frame([], usage=counts) + b"data: [DONE]\n\n"
                return b"data: [DONE]\n\n"
        return b""

    def error(self, failure: Failure, message: str, *, extra: dict[str, str] | None = None) -> bytes:
        """An in-band error: the openai SDK raises `APIError` on a chunk with an `error` key.
        `extra` adds fields to the error object (a rescue's outcome)."""
        self._closed = True
        return b"data: " + dump_json(error_body(OPENAI, failure, message, extra)) + b"\n\n"


class AnthropicStreamWriter:
    """Writes Messages API stream events the anthropic SDK accumulates into a `Message`."""

    __slots__ = (
        "_closed",
        "_finish",
        "_id",
        "_model",
        "_next_block",
        "_open_block",
        "_open_text",
        "_started",
        "_stopped",
        "_tool_blocks",
        "_usage",
    )

    def __init__(
        self, *, id: str, model: str, begun: bool = False, next_block: int = 0, open_text_block: int | None = None
    ) -> None:
        """`begun` continues a stream the client has begun (a rescue): no message_start, new
        blocks numbered from `next_block`, text deltas go on in `open_text_block` if one is open."""
        self._id = id
        self._model = model
        self._started = begun
        self._next_block = next_block
        self._open_block: int | None = open_text_block
        self._open_text = open_text_block is not None  # the open block is a text block
        self._tool_blocks: dict[int, int] = {}  # tool-call ordinal → content block index
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._stopped = False  # message_delta sent
        self._closed = False

    @property
    def open_text_block(self) -> int | None:
        """The index of the content block open for text, if one is."""
        return self._open_block if self._open_text else None

    @property
    def open_block(self) -> int | None:
        """The index of the open content block, if one is."""
        return self._open_block

    @property
    def next_block(self) -> int:
        """The index the next content block will take."""
        return self._next_block

    @staticmethod
    def _event(name: bytes, payload: dict[str, Any]) -> bytes:
        return b"event: " + name + b"\ndata: " + dump_json(payload) + b"\n\n"

    def _message_start(self) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Usage is known only at the end of an OpenAI stream; message_delta carries it.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._event(b"message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        index = self._open_block
        if index is None:
            return b""
        self._open_block = None
        self._open_text = False
        return self._event(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _open(self, block: dict[str, Any], *, text: bool) -> tuple[bytes, int]:
        out = self._close_block()
        index = self._open_block = self._next_block
        self._next_block += 1
        self._open_text = text
        payload = {
            "type": "content_block_start",
            "index": index,
            "content_block": block,
        }
        return out + self._event(b"content_block_start", payload), index

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return self._event(b"content_block_delta", payload)

    def _message_delta(self) -> bytes:
        self._stopped = True
        reason = self._finish or FinishReason.STOP
        if reason is FinishReason.STOP and self._tool_blocks:
            # Some OpenAI-compatible servers say "stop" after tool calls; Anthropic clients run
            # their tools only on "tool_use".
            reason = FinishReason.TOOL_CALLS
        usage: dict[str, int] = {"output_tokens": 0}
        if self._usage is not None:
            usage = {
                "input_tokens": self._usage.input_tokens,
                "output_tokens": self._usage.output_tokens,
            }
        payload = {
            "type": "message_delta",
            "delta": {
                "stop_reason": finish_to_anthropic(reason),
                "stop_sequence": None,
            },
            "usage": usage,
        }
        return self._close_block() + self._event(b"message_delta", payload)

    def write(self, d: Delta) -> bytes:
        if self._closed:
            return b""
        out = b"" if self._started else self._message_start()
        match d:
            case TextDelta(text=text) if text:
                index = self._open_block
                if index is None or not self._open_text:
                    opened, index = self._open({"type": "text", "text": ""}, text=True)
                    out += opened
                out += self._block_delta(index, {"type": "text_delta", "text": text})
            case ToolCallStart(index=ordinal, id=call_id, name=name):
                block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                opened, self._tool_blocks[ordinal] = self._open(block, text=False)
                out += opened
            case ToolCallArgs(index=ordinal, fragment=fragment) if fragment:
                # Arguments of an earlier call after a later one started (never seen from OpenAI,
                # which streams calls one after another) still go to that call's block: the SDK
                # accumulates by block index.
                index = self._tool_blocks.get(ordinal)
                if index is not None:
                    delta = {"type": "input_json_delta", "partial_json": fragment}
                    out += self._block_delta(index, delta)
            case Finish(reason=reason):
                self._finish = reason
            case Usage():
                self._usage = d
                if self._finish is not None and not self._stopped:
                    out += self._message_delta()
            case StreamError():
                return out + self.error(classify_stream_error(d), d.message)
            case Done():
                self._closed = True
                if not self._stopped:
                    out += self._message_delta()
                out += self._event(b"message_stop", {"type": "message_stop"})
        return out

    def error(self, failure: Failure, message: str, *, extra: dict[str, str] | None = None) -> bytes:
        """An `error` event: the anthropic SDK raises `APIStatusError` on it. `extra` adds fields
        to the error object (a rescue's outcome)."""
        self._closed = True
        return self._event(b"error", error_body(ANTHROPIC, failure, message, extra))
