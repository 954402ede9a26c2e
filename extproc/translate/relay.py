"""Relaying one provider's SSE stream to the client: bytes in, bytes out, plus the facts the
attempt filter acts on (has the first token gone out? did the provider report an error first?
did the stream finish properly?).

Only complete events are forwarded: a partial trailing event is held back, so an error event
appended after a cut never lands in the middle of one. That also makes `delivered` exact: the
text, identity and block state of what the client has, which a rescue continues from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from ..core import Dialect, Failure
from .errors import redact_error_body
from .sse import MAX_EVENT_BYTES, SseEvent, SseParser
from .stream import (
    EMPTY_TOOL_CALL,
    MALFORMED_STREAM,
    AnthropicStreamReader,
    AnthropicStreamWriter,
    Delta,
    Done,
    Finish,
    MessageStart,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
    classify_stream_error,
)

_OPENAI_DONE = b"data: [DONE]\n\n"
INVALID_EVENT = "invalid_event"  # the readers' StreamError type for an event that does not parse
# What the relay produces before the first token is held with the response headers (the attempt
# filter's pending bytes). Usually a few hundred bytes (a role chunk, message_start, a ping), but
# an Anthropic client served by an Anthropic rung is relayed its thinking blocks unchanged, held
# until the first text: ~1-2 MB of events for 64k thinking tokens. Past this the provider is
# sending something other than an answer, and the try ends as a malformed stream. The same cap
# holds between two tokens after the first: a provider looping on token-less events is ended
# rather than relayed without bound (and every byte of it crosses Envoy to the sidecar).
MAX_HELD_BYTES = 4 * 1024 * 1024
_ANTHROPIC_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

# Why a stream the client has begun cannot be rescued (`Delivered.blocked`).
NOT_STARTED: Final = "not_started"  # no token went out: an ordinary hop, not a rescue
TOOL_CALL: Final = "tool_call"  # a tool call started: its arguments cannot be spliced
NON_TEXT: Final = "non_text_content"  # a thinking or server-tool block reached the client
REFUSAL: Final = "refusal"  # the text is a refusal: re-asking would be shopping for a laxer model
FINISHED: Final = "finished"  # the finish reason was given: complete it, nothing to rescue
ERROR_SENT: Final = "error_sent"  # the client already has an error event: its stream is over


@dataclass(frozen=True, slots=True)
class Delivered:
    """What the client has received of a stream, exactly (whole events only), and what a rescue
    needs to continue it as the same stream.

    `id`, `model` (and for OpenAI clients `created`, `system_fingerprint`) are the values the
    client saw: the provider's own when its events passed through unchanged, ours when they were
    translated. For Anthropic clients, `open_block` is the index of the open content block (None:
    none is open), `open_text` whether it is a text block, `next_block` the index a new one takes.
    """

    client: Dialect
    text: str
    output_units: int  # content and tool-argument events delivered, roughly tokens
    input_tokens: int  # the prompt's tokens as the provider reported them, else our estimate
    id: str
    model: str
    created: int | None
    system_fingerprint: str | None
    open_block: int | None
    open_text: bool
    next_block: int
    blocked: str | None  # why no rescue is possible (a constant above); None: it is

    @property
    def rescuable(self) -> bool:
        return self.blocked is None

    @property
    def usage(self) -> Usage:
        """The delivered part's usage: the prompt, and the output units as tokens."""
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_units)


class StreamRelay:
    def __init__(
        self,
        client: Dialect,
        provider: Dialect,
        *,
        model: str,
        stream_id: str,
        created: int,
        include_usage: bool,
        prompt_tokens: int,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self._client = client.wire
        self._same = client.wire is provider.wire
        self._parser = SseParser(max_event_bytes)
        self._max_held = max_held_bytes
        self._held = 0  # bytes produced before the first token
        self._since_token = 0  # provider bytes since the last token, after the first
        self._reader: OpenAIStreamReader | AnthropicStreamReader = (
            AnthropicStreamReader() if provider.wire is Dialect.ANTHROPIC else OpenAIStreamReader()
        )
        self._writer: OpenAIStreamWriter | AnthropicStreamWriter = (
            AnthropicStreamWriter(id=stream_id, model=model)
            if self._client is Dialect.ANTHROPIC
            else OpenAIStreamWriter(id=stream_id, model=model, created=created, include_usage=include_usage)
        )
        self._model = model
        self._id = stream_id
        self._created = created
        self._include_usage = include_usage
        self._prompt_tokens = prompt_tokens
        self.started = False
        self.error: StreamError | None = None
        self.finished = False
        self.done = False
        self.usage_seen = False
        self.closed = False  # the client stream has been ended by us (terminal or error)
        self.skipped = 0  # events that were not valid JSON: dropped, the stream goes on
        self._units = 0
        self._text: list[str] = []  # the text the client has, delta by delta
        self._tool = False  # a tool call reached the client
        self._error_sent = False

    def feed(self, chunk: bytes) -> bytes:
        if self.closed:
            return b""
        out = bytearray()
        parser = self._parser
        if self.started:
            self._since_token += len(chunk)
        for event in parser.feed(chunk):
            deltas = self._reader.read(event)
            if any(isinstance(d, StreamError) and d.type == INVALID_EVENT for d in deltas):
                # One broken event (e.g. cut-off JSON) is not the end of the answer: drop it and
                # keep relaying. The stream's own end decides how it ends.
                self.skipped += 1
                continue
            for delta in deltas:
                self._track(delta)
            if self.error is not None and not self.started:
                # The attempt filter hops; nothing more of this stream reaches the client.
                self.closed = True
                return b""
            if self._same and self.error is not None:
                # The provider's own error event, passed on without anything shaped like a key.
                out += SseEvent(redact_error_body(event.data.encode()).decode(), event.event).encode()
                self._error_sent = True
            elif self._same:
                out += event.encode()
            else:
                for delta in deltas:
                    if isinstance(delta, StreamError):
                        out += self._writer.error(stream_failure(delta, started=self.started), delta.message)
                        self._error_sent = True
                    else:
                        out += self._writer.write(delta)
            if self.done or (self.error is not None and self.started):
                self.closed = True
                break
        if not self.closed:
            if parser.overflowed:
                limit = parser.max_event_bytes
                return bytes(out) + self._malformed(f"the provider sent an event over {limit} bytes")
            if not self.started:
                self._held += len(out)
                if self._held > self._max_held:
                    return self._malformed(f"the provider sent over {self._max_held} bytes before the first token")
            elif self._since_token > self._max_held:
                return bytes(out) + self._malformed(f"the provider sent over {self._max_held} bytes without a token")
        return bytes(out)

    def _malformed(self, message: str) -> bytes:
        """The stream broke a cap: before the first token the attempt filter hops (nothing went
        out); after it the client gets an in-band error event."""
        self.error = StreamError(type=MALFORMED_STREAM, message=message)
        self.closed = True
        if not self.started:
            return b""
        self._error_sent = True
        return self._writer.error(stream_failure(self.error, started=True), message)

    def _track(self, delta: Delta) -> None:
        if isinstance(delta, ToolCallStart) and not delta.name and not self.started:
            # A tool call without a name (a model that cannot call tools) is a broken answer,
            # not a first token: the try fails before anything reaches the client.
            self.error = StreamError(type=EMPTY_TOOL_CALL, message="tool call with an empty name")
            return
        if isinstance(delta, (TextDelta, ToolCallStart, ToolCallArgs)):
            self._units += 1
            if isinstance(delta, TextDelta):
                if not delta.text:
                    return
                self._text.append(delta.text)
            elif isinstance(delta, ToolCallStart):
                self._tool = True
            self.started = True
            self._since_token = 0
        elif isinstance(delta, Finish):
            self.finished = True
        elif isinstance(delta, Usage):
            self.usage_seen = True
        elif isinstance(delta, Done):
            self.done = True
        elif isinstance(delta, StreamError):
            self.error = delta
        elif isinstance(delta, MessageStart) and self._same:
            self._id, self._model = delta.id or self._id, delta.model or self._model

    @property
    def output_units(self) -> int:
        """Content and tool-argument events relayed: the stream's output size, roughly in tokens."""
        return self._units

    @property
    def delivered(self) -> Delivered:
        """What the client has so far. Read it before `finish()` or `interrupt()` when the stream
        is to be rescued: those write an error event, after which it cannot be."""
        reader, writer = self._reader, self._writer
        created: int | None = None
        fingerprint: str | None = None
        open_block: int | None = None
        open_text = False
        next_block = 0
        other = False
        input_tokens = self._prompt_tokens
        if isinstance(reader, AnthropicStreamReader):
            input_tokens = reader.input_tokens or input_tokens
        if self._client is Dialect.OPENAI:
            created = self._created
            if self._same and isinstance(reader, OpenAIStreamReader):
                created = reader.created if reader.created is not None else created
                fingerprint = reader.system_fingerprint
        elif self._same and isinstance(reader, AnthropicStreamReader):
            open_block, open_text, next_block = reader.open_block, reader.open_text, reader.next_block
            other = reader.other_content
        elif isinstance(writer, AnthropicStreamWriter):
            open_block, next_block = writer.open_block, writer.next_block
            open_text = writer.open_text_block is not None
        return Delivered(
            client=self._client,
            text="".join(self._text),
            output_units=self._units,
            input_tokens=input_tokens,
            id=self._id,
            model=self._model,
            created=created,
            system_fingerprint=fingerprint,
            open_block=open_block,
            open_text=open_text,
            next_block=next_block,
            blocked=self._blocked(other),
        )

    def _blocked(self, other_content: bool) -> str | None:
        if self._error_sent:
            return ERROR_SENT
        if self.finished or self.done:
            return FINISHED
        if not self.started:
            return NOT_STARTED
        if self._tool:
            return TOOL_CALL
        if other_content:
            return NON_TEXT
        if isinstance(self._reader, OpenAIStreamReader) and self._reader.refused:
            return REFUSAL
        return None

    def finish(self) -> bytes:
        """The provider ended its response: complete a finished stream, flag a cut one."""
        if self.closed:
            return b""
        self.closed = True
        if self.done:
            return b""
        if self.finished:
            return self._finalise()
        return self._error(Failure.STREAM_INTERRUPTED, "the provider ended the stream before it was complete")

    def finalise(self) -> bytes:
        """Finish seen but no terminal marker within the grace period: end it ourselves."""
        if self.closed:
            return b""
        self.closed = True
        return self._finalise()

    def interrupt(self, message: str) -> bytes:
        """The provider went silent after the first token: end the stream with an error event."""
        if self.closed:
            return b""
        self.closed = True
        return self._error(Failure.STREAM_INTERRUPTED, message)

    def _error(self, failure: Failure, message: str) -> bytes:
        self._error_sent = True
        return self._writer.error(failure, message)

    def _finalise(self) -> bytes:
        usage = Usage(input_tokens=self._prompt_tokens, output_tokens=self._units)
        if not self._same:
            out = b"" if self.usage_seen else self._writer.write(usage)
            return out + self._writer.write(Done())
        if self._client is Dialect.ANTHROPIC:
            return _ANTHROPIC_STOP
        out = b""
        if self._include_usage and not self.usage_seen:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "total_tokens": usage.input_tokens + usage.output_tokens,
                },
            }
            out = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        return out + _OPENAI_DONE


def stream_failure(error: StreamError, *, started: bool) -> Failure:
    """The taxonomy class of an error event. Before the first token an error of unknown kind is
    still the provider failing (hop); after it, the stream was interrupted."""
    failure = classify_stream_error(error)
    if failure is Failure.STREAM_INTERRUPTED and not started:
        return Failure.SERVER_ERROR
    return failure
