"""Server-sent events: an incremental parser (bytes in, events out) and an encoder.

The parser follows the WHATWG event-stream rules that both providers rely on: lines end with
CRLF, LF or CR; a blank line ends an event; `data` lines are joined with LF; comment lines and
unknown fields are ignored; an event without any `data` line is not dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass

_CR = 0x0D
_LF = 0x0A
# The longest event (or line) the parser holds while waiting for its end. One event carries one
# delta: the largest real ones — a whole tool call's arguments from servers that do not stream
# them, a server tool's result block — are tens of KB. A provider sending an endless line, or
# lines without the blank line that ends an event, would otherwise grow the buffer for as long as
# it keeps sending; past this the stream is malformed.
MAX_EVENT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str | None = None

    def encode(self) -> bytes:
        parts = [f"event: {self.event}\n"] if self.event is not None else []
        # Any line break inside the data would end the field early: send each line as its own
        # `data` field, which the reader joins back with LF.
        data = self.data.replace("\r\n", "\n").replace("\r", "\n")
        parts.extend(f"data: {line}\n" for line in data.split("\n"))
        parts.append("\n")
        return "".join(parts).encode()


class SseParser:
    """Turns a byte stream, split anywhere, into complete events. An event in progress over
    `max_event_bytes` sets `overflowed`, drops what was held and ends the parse: every later
    feed returns nothing."""

    __slots__ = ("_buffer", "_data", "_event", "_has_data", "_scan", "_skip_lf", "max_event_bytes", "overflowed")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflowed = False
        self._buffer = bytearray()  # bytes of the event in progress
        self._scan = 0  # offset in _buffer up to which lines have been interpreted
        self._skip_lf = False  # the last line ended with CR: an LF right after it belongs to it
        self._event: str | None = None
        self._data: list[str] = []
        self._has_data = False

    @property
    def pending(self) -> bytes:
        """Bytes received since the last event boundary (an incomplete event, if non-empty)."""
        return bytes(self._buffer)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self.overflowed:
            return []
        buffer = self._buffer
        buffer += chunk
        events: list[SseEvent] = []
        pos = self._scan
        end = len(buffer)
        while pos < end:
            if self._skip_lf:
                self._skip_lf = False
                if buffer[pos] == _LF:
                    if pos == 0:  # the CR ended an event: keep `pending` free of its LF
                        del buffer[0]
                        end -= 1
                    else:
                        pos += 1
                    continue
            lf = buffer.find(b"\n", pos)
            cr = buffer.find(b"\r", pos, lf if lf >= 0 else end)
            brk = cr if cr >= 0 else lf
            if brk < 0:
                break  # an incomplete line: wait for more bytes
            line = bytes(buffer[pos:brk])
            pos = brk + 1
            if buffer[brk] == _CR:
                self._skip_lf = True
            if line:
                self._field(line)
                continue
            # A blank line ends the event, dispatched or not; what follows starts afresh.
            if self._has_data:
                events.append(SseEvent(data="\n".join(self._data), event=self._event))
            self._event = None
            self._data = []
            self._has_data = False
            del buffer[:pos]
            end -= pos
            pos = 0
        self._scan = pos
        if len(buffer) > self.max_event_bytes:
            # The events completed before it still count; the stream ends after them.
            self.overflowed = True
            buffer.clear()
            self._data = []
            self._scan = 0
        return events

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment (keep-alives)
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
            self._has_data = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        # id, retry and unknown fields carry nothing a translator needs
