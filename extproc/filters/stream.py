"""The stream side of a try: a streamed answer's bytes between the provider and the client.

The response headers are held until the first token (an error event before it still falls back
to the next rung); what the relay produced meanwhile waits with them. A non-200 or non-SSE answer
to a stream request is held whole (capped) and judged like a JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..policy import Policy
from ..translate import StreamRelay

# An error answer held back while a stream request is judged: cap what we buffer of it.
MAX_ERROR_BODY = 256 * 1024


@dataclass
class StreamTry:
    relay: StreamRelay | None  # a 200 event stream
    last_chunk_at: float
    error_body: bytearray | None = None  # anything else, held to be judged
    pending: bytearray = field(default_factory=bytearray)  # relayed before the headers went out

    @classmethod
    def of_events(cls, relay: StreamRelay, now: float) -> StreamTry:
        return cls(relay=relay, last_chunk_at=now)

    @classmethod
    def of_error(cls, now: float) -> StreamTry:
        return cls(relay=None, last_chunk_at=now, error_body=bytearray())

    def hold_error(self, chunk: bytes) -> None:
        assert self.error_body is not None
        room = MAX_ERROR_BODY - len(self.error_body)
        if room > 0:
            self.error_body += chunk[:room]

    def take_pending(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out

    def wake_at(self, policy: Policy) -> float | None:
        """When the sidecar must act on its own: the stall watchdog after the first token, or
        the grace for a terminal marker after a finish event. Before the first token, Envoy's
        per-try timeout is the budget."""
        relay = self.relay
        if relay is None or relay.closed or not relay.started:
            return None
        wait = policy.stream_finish_grace_s if relay.finished else policy.stream_stall_s
        return self.last_chunk_at + wait
