"""Rescuing a stream that failed after its first token: the request for the rescue rung, and the
`Splice` that turns the rescue rung's SSE stream into the rest of the stream the client has begun.

Theory of operation. The relay forwards whole events only, so `StreamRelay.delivered` says
exactly what the client has: its text, and the identity (id, model, created, fingerprint; for
Anthropic the content block state) of the stream it is reading. A rescue asks a fallback rung
for the rest, in one of two ways:

- **continue**: the delivered text goes to the rung as a trailing assistant message (a prefill),
  for rungs whose provider declares `Capability.PREFILL`. Anthropic refuses a prefill that ends in
  whitespace, so it is stripped there; the continuation often starts with that whitespace again,
  and the splice drops whatever of it the client already has.
- **regenerate**: the original request goes to the rung, and the splice drops the regenerated text
  until it covers the delivered text (compared as text, not tokens: a delta that straddles the
  end is split; with `PrefixMatch.WHITESPACE`, runs of whitespace compare equal). Text that
  differs from what the client has ends the stream with one error event.

Either way the splice reads the rescue rung's events in its dialect and writes them in the
client's, as the begun stream: no second role chunk or message_start, the begun id and model,
exactly one finish, usage merged, then `[DONE]` / `message_stop`. Anything that goes wrong ends it
with one error event that carries the primary's failure class (the client's stream failed because
the primary did; a failed rescue never masks that) and says why the rescue did not complete.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ..core import Capability, Dialect, Failure
from .protocol import api_pair
from .relay import INVALID_EVENT, Delivered
from .sse import MAX_EVENT_BYTES, SseParser
from .stream import (
    AnthropicStreamReader,
    AnthropicStreamWriter,
    Delta,
    Done,
    Finish,
    FinishReason,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
    classify_stream_error,
)


class RescueStrategy(StrEnum):
    CONTINUE = "continue"  # the delivered text as an assistant prefill
    REGENERATE = "regenerate"  # the original request; the regenerated prefix must match


class PrefixMatch(StrEnum):
    """How regenerated text is compared with what the client has (a policy knob)."""

    WHITESPACE = "whitespace"  # runs of whitespace are equal; leading and trailing ones ignored
    EXACT = "exact"


def rescue_strategy(capabilities: Collection[Capability]) -> RescueStrategy:
    """Continue where the rescue rung's provider says it supports prefill; otherwise regenerate.
    A prefill is never sent to a rung that does not declare it."""
    return RescueStrategy.CONTINUE if Capability.PREFILL in capabilities else RescueStrategy.REGENERATE


def _trailing_space(text: str) -> str:
    return text[len(text.rstrip()) :]


def _prefill_strip(provider: Dialect) -> bool:
    # Anthropic answers 400 to a final assistant message that ends in whitespace.
    return provider.wire is Dialect.ANTHROPIC


def rescue_body(
    client_body: dict[str, Any],
    delivered: Delivered,
    strategy: RescueStrategy,
    client: Dialect,
    provider: Dialect,
    model: str,
) -> dict[str, Any]:
    """The request for the rescue rung, in its provider's dialect, streaming (with usage, so the
    rung's own tokens can be billed to it). Raises ValueError for a stream that cannot be rescued
    and TranslationError like `ApiPair.request`."""
    if not delivered.rescuable:
        raise ValueError(f"the stream cannot be rescued: {delivered.blocked}")
    body = api_pair(client, provider).request(client_body, model)
    body["stream"] = True
    if provider.wire is Dialect.OPENAI:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    if strategy is RescueStrategy.REGENERATE:
        return body
    text = delivered.text
    strip = _prefill_strip(provider)
    messages = list(body.get("messages") or [])
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant" and not last.get("tool_calls"):
        # The client's own prefill: the answer (and so the delivered text) continues it.
        content = last.get("content")
        if isinstance(content, str):
            merged = content + text
            messages[-1] = {**last, "content": merged.rstrip() if strip else merged}
        elif isinstance(content, list):
            block = text.rstrip() if strip else text
            if block:
                messages[-1] = {**last, "content": [*content, {"type": "text", "text": block}]}
        else:
            messages.append({"role": "assistant", "content": text.rstrip() if strip else text})
    else:
        prefill = text.rstrip() if strip else text
        if prefill:  # a whitespace-only prefill is no prefill: the rung starts afresh
            messages.append({"role": "assistant", "content": prefill})
    body["messages"] = messages
    # The continuation may spend only what the whole answer had left (output units are a low
    # estimate of tokens for Anthropic primaries, so this errs on the generous side).
    for field in ("max_tokens", "max_completion_tokens"):
        limit = body.get(field)
        if isinstance(limit, int) and not isinstance(limit, bool):
            body[field] = max(1, limit - delivered.output_units)
    if strip:
        # Anthropic refuses a prefill with extended thinking on; the rest of the text needs none.
        body.pop("thinking", None)
    return body


class SpliceState(StrEnum):
    MATCHING = "matching"  # regenerate: dropping text the client already has
    SPLICING = "splicing"  # forwarding the rest of the answer
    DONE = "done"  # the client's stream is complete
    FAILED = "failed"  # the client's stream ended with one error event


_TRANSITIONS: Final[dict[SpliceState, frozenset[SpliceState]]] = {
    SpliceState.MATCHING: frozenset({SpliceState.SPLICING, SpliceState.FAILED}),
    SpliceState.SPLICING: frozenset({SpliceState.DONE, SpliceState.FAILED}),
    SpliceState.DONE: frozenset(),
    SpliceState.FAILED: frozenset(),
}


class RescueOutcome(StrEnum):
    """Why a rescue did not complete the stream (the error event's `rungway_rescue`)."""

    DIVERGED = "rescue_diverged"  # the regenerated text differs from what the client has
    ERROR = "rescue_error"  # the rescue rung's stream carried an error event, or broke a cap
    CUT = "rescue_cut"  # the rescue rung's stream ended before its finish
    STALLED = "rescue_stalled"  # the rescue rung went silent
    UNAVAILABLE = "rescue_unavailable"  # the rescue call failed before its stream began


@dataclass(frozen=True, slots=True)
class SpliceFailure:
    """Both reasons: the primary's failure (the class the client's error carries) and the rescue's
    (`rescue` is the rescue rung's own failure class, for its health; None when the rung did
    nothing wrong, e.g. it regenerated different text)."""

    primary: Failure
    outcome: RescueOutcome
    rescue: Failure | None
    message: str


class _DivergedError(Exception):
    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


class _PrefixMatcher:
    """Consumes regenerated text until it covers `target`; returns the text after that point."""

    __slots__ = ("_normalise", "_pos", "_space", "_target")

    def __init__(self, target: str, normalise: bool) -> None:
        self._target = target
        self._normalise = normalise
        self._pos = 0  # how much of the target is covered
        self._space = False  # whitespace seen after the last covered character

    @property
    def covered(self) -> int:
        return self._pos

    def feed(self, text: str) -> str | None:
        """The rest of `text` once the target is covered, None if all of it was needed; raises
        _DivergedError at the first difference."""
        target, pos = self._target, self._pos
        if not self._normalise:
            need = target[pos:]
            if text.startswith(need):
                self._pos = len(target)
                return text[len(need) :]
            if need.startswith(text):
                self._pos = pos + len(text)
                return None
            same = 0
            while text[same] == need[same]:
                same += 1
            raise _DivergedError(pos + same)
        space = self._space
        for i, ch in enumerate(text):
            if ch.isspace():
                space = pos > 0  # leading whitespace is not compared
                continue
            if space:
                if target[pos] != " ":
                    raise _DivergedError(pos)
                pos += 1
                space = False
            if target[pos] != ch:
                raise _DivergedError(pos)
            pos += 1
            if pos == len(target):
                self._pos = pos
                return text[i + 1 :]
        self._pos, self._space = pos, space
        return None


_INTERRUPTED: Final = "The response stream was interrupted and could not be completed: "


class Splice:
    """The rescue rung's SSE stream (bytes, any split) → the rest of the client's begun stream.

    Feed it the rescue response's body; when that response ends, call `finish_if_cut()`; if it goes
    silent, `interrupt()`; if the rescue call fails before its stream begins, `fail()`. Each
    returns bytes for the client: whole events only, nothing after the stream is complete or
    failed. `usage` is what the client is told (the delivered part plus the rescue's new tokens);
    `rescue_usage` is the rescue rung's own report, to bill to that rung.
    """

    def __init__(
        self,
        client: Dialect,
        provider: Dialect,
        delivered: Delivered,
        strategy: RescueStrategy,
        *,
        match: PrefixMatch = PrefixMatch.WHITESPACE,
        include_usage: bool,
        delivered_usage: Usage | None = None,
        primary: Failure = Failure.STREAM_INTERRUPTED,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        if client.wire is not delivered.client:
            raise ValueError(f"client must be the delivered stream's dialect {delivered.client}, but was {client}")
        if not delivered.rescuable:
            raise ValueError(f"the stream cannot be rescued: {delivered.blocked}")
        self._delivered = delivered
        self._strategy = strategy
        self._primary = primary
        self._delivered_usage = delivered_usage if delivered_usage is not None else delivered.usage
        self._parser = SseParser(max_event_bytes)
        self._reader: OpenAIStreamReader | AnthropicStreamReader = (
            AnthropicStreamReader() if provider.wire is Dialect.ANTHROPIC else OpenAIStreamReader()
        )
        self._writer: OpenAIStreamWriter | AnthropicStreamWriter
        if client.wire is Dialect.ANTHROPIC:
            self._writer = AnthropicStreamWriter(
                id=delivered.id,
                model=delivered.model,
                begun=True,
                next_block=delivered.next_block,
                open_text_block=delivered.open_block if delivered.open_text else None,
            )
        else:
            self._writer = OpenAIStreamWriter(
                id=delivered.id,
                model=delivered.model,
                created=delivered.created or 0,
                include_usage=include_usage,
                system_fingerprint=delivered.system_fingerprint,
                role_sent=True,
            )
        text = delivered.text
        self._matcher: _PrefixMatcher | None = None
        if strategy is RescueStrategy.CONTINUE:
            # The whitespace a prefill lost: the continuation may begin by re-adding it.
            self._trim = _trailing_space(text) if _prefill_strip(provider) else ""
        elif match is PrefixMatch.EXACT:
            self._trim = ""
            self._matcher = _PrefixMatcher(text, normalise=False) if text else None
        else:
            target = " ".join(text.split())
            self._trim = _trailing_space(text)
            self._matcher = _PrefixMatcher(target, normalise=True) if target else None
        self._state = SpliceState.MATCHING if self._matcher is not None else SpliceState.SPLICING
        self._finish: FinishReason | None = None
        self._rescue_usage: Usage | None = None
        self._rescue_chars = 0  # all text the rescue rung produced
        self._new_chars = 0  # the part of it the client gets
        self._new_units = 0  # content and tool-argument events forwarded
        self.failure: SpliceFailure | None = None
        self.skipped = 0  # rescue events that were not valid JSON

    # ---- reads -------------------------------------------------------------------------------

    @property
    def state(self) -> SpliceState:
        return self._state

    @property
    def rescue_usage(self) -> Usage | None:
        """The rescue rung's usage as it reported it (None if it reported none): its own bill."""
        return self._rescue_usage

    @property
    def usage(self) -> Usage:
        """The usage the client is told: the delivered part's prompt and output, plus the rescue's
        new output tokens. A regenerated prefix the client already had is not counted twice: the
        rung's output tokens are apportioned by the share of its text the client got."""
        reported = self._rescue_usage
        if reported is None:
            new = self._new_units
        elif self._strategy is RescueStrategy.CONTINUE or self._rescue_chars == 0:
            new = reported.output_tokens
        else:
            new = math.ceil(reported.output_tokens * self._new_chars / self._rescue_chars)
        delivered = self._delivered_usage
        return Usage(input_tokens=delivered.input_tokens, output_tokens=delivered.output_tokens + new)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self._state.value,
            "strategy": self._strategy.value,
            "matched_chars": self._matcher.covered if self._matcher is not None else 0,
            "new_chars": self._new_chars,
            "finish": self._finish.value if self._finish is not None else None,
            "outcome": self.failure.outcome.value if self.failure is not None else None,
        }

    def __repr__(self) -> str:
        fields = " ".join(f"{key}={value}" for key, value in self.snapshot().items())
        return f"<Splice {fields}>"

    # ---- commands ----------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """The rescue rung's response body bytes → the client's next bytes."""
        if self._over:
            return b""
        out = bytearray()
        for event in self._parser.feed(chunk):
            deltas = self._reader.read(event)
            if any(isinstance(d, StreamError) and d.type == INVALID_EVENT for d in deltas):
                self.skipped += 1  # one broken event is not the end of the answer (as the relay)
                continue
            for delta in deltas:
                out += self._on(delta)
                if self._over:
                    return bytes(out)
        if self._parser.overflowed:
            limit = self._parser.max_event_bytes
            out += self._fail(RescueOutcome.ERROR, Failure.SCHEMA_ERROR, f"the rescue sent an event over {limit} bytes")
        return bytes(out)

    def finish_if_cut(self) -> bytes:
        """The rescue rung's response ended: complete the stream if the rung finished its answer,
        else end it with an error event."""
        if self._over:
            return b""
        if self._state is SpliceState.SPLICING and self._finish is not None:
            return self._complete()
        return self._fail(RescueOutcome.CUT, Failure.STREAM_INTERRUPTED, "the rescue ended before it was complete")

    def interrupt(self, message: str) -> bytes:
        """The rescue rung went silent past the idle budget."""
        if self._over:
            return b""
        return self._fail(RescueOutcome.STALLED, Failure.STREAM_INTERRUPTED, message)

    def fail(self, failure: Failure, message: str) -> bytes:
        """The rescue call failed before its stream began (an error status, a refused connection),
        classified by the caller."""
        if self._over:
            return b""
        return self._fail(RescueOutcome.UNAVAILABLE, failure, message)

    # ---- internals ---------------------------------------------------------------------------

    @property
    def _over(self) -> bool:
        return self._state is SpliceState.DONE or self._state is SpliceState.FAILED

    def _move(self, to: SpliceState) -> None:
        if to not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"a splice cannot go from {self._state} to {to}")
        self._state = to

    def _on(self, delta: Delta) -> bytes:
        if isinstance(delta, TextDelta):
            return self._text(delta.text)
        if isinstance(delta, (ToolCallStart, ToolCallArgs)):
            if self._state is SpliceState.MATCHING:
                return self._diverged("the regenerated answer calls a tool where the delivered text goes on")
            self._trim = ""
            self._new_units += 1
            return self._writer.write(delta)
        if isinstance(delta, Finish):
            if self._state is SpliceState.MATCHING:
                return self._diverged("the regenerated answer ended before reaching the delivered text")
            if self._finish is not None:
                return b""  # exactly one finish
            self._finish = delta.reason
            self._trim = ""
            return self._writer.write(delta)
        if isinstance(delta, Usage):
            self._rescue_usage = delta
            return b""
        if isinstance(delta, Done):
            if self._state is SpliceState.MATCHING:
                return self._diverged("the regenerated answer ended before reaching the delivered text")
            if self._finish is None:
                return self._fail(RescueOutcome.CUT, Failure.STREAM_INTERRUPTED, "the rescue ended without a finish")
            return self._complete()
        if isinstance(delta, StreamError):
            return self._fail(RescueOutcome.ERROR, classify_stream_error(delta), "the rescue failed: " + delta.message)
        return b""  # MessageStart: the client keeps the begun stream's identity

    def _text(self, text: str) -> bytes:
        self._rescue_chars += len(text)
        matcher = self._matcher
        if self._state is SpliceState.MATCHING and matcher is not None:
            try:
                rest = matcher.feed(text)
            except _DivergedError as diverged:
                return self._diverged(f"regenerated text diverges from the delivered prefix (at char {diverged.at})")
            if rest is None:
                return b""
            self._move(SpliceState.SPLICING)
            text = rest
        trim = self._trim
        if trim:
            # What of the whitespace the client already has the rescue repeats is dropped.
            same, most = 0, min(len(trim), len(text))
            while same < most and text[same] == trim[same]:
                same += 1
            self._trim = trim[same:] if same == len(text) else ""
            text = text[same:]
        if not text:
            return b""
        self._new_chars += len(text)
        self._new_units += 1
        return self._writer.write(TextDelta(text))

    def _complete(self) -> bytes:
        self._move(SpliceState.DONE)
        return self._writer.write(self.usage) + self._writer.write(Done())

    def _diverged(self, message: str) -> bytes:
        return self._fail(RescueOutcome.DIVERGED, None, message)

    def _fail(self, outcome: RescueOutcome, rescue: Failure | None, message: str) -> bytes:
        self._move(SpliceState.FAILED)
        self.failure = SpliceFailure(primary=self._primary, outcome=outcome, rescue=rescue, message=message)
        return self._writer.error(self._primary, _INTERRUPTED + message, extra={"rungway_rescue": outcome.value})
