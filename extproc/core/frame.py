"""Health-bus frames: a batch of events, sealed with the fleet's secret (HMAC-SHA256).

Theory of operation. A frame is one line of ASCII fields and a JSON body:

    RW1 <key id> <unix time, ms> <nonce> <hmac hex> <JSON list of events>

The MAC covers the frame with its own field removed, so the header and the body are bound
together, and it is checked before the body is parsed: nobody without a secret gets a byte of
JSON read. The key id names which secret signed it, so a fleet can rotate: members sign with
the current secret and accept the current and the previous one. The time bounds replay to
`max_age_s` (either side of our clock: members' clocks must agree that well), and within it
the nonce does: a reader remembers the nonces it accepted for twice that long.

A reader turns any byte string into either a list of event objects or a `Rejection`, never an
exception, and its work is bounded by `max_bytes` (checked first). Whether each event means
anything is core.events' business; a frame only vouches for who sent it, and when.

`FrameRules.unsigned()` is the explicit insecure mode: the body alone, as before signing, still
bounded and still parsed safely, with no claim about the sender.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAGIC = b"RW1"
MIN_SECRET_BYTES = 16
MAX_FRAME_EVENTS = 256
MAX_FRAME_BYTES = 2 << 20
DEFAULT_MAX_AGE_S = 30.0
MAX_NONCES = 200_000  # nonces remembered (≈ 14 MB); past this the oldest are forgotten early

_TIME = re.compile(rb"[0-9]{1,12}\.[0-9]{3}")
_NONCE = re.compile(rb"[0-9a-f]{16}")
_MAC = re.compile(rb"[0-9a-f]{64}")
_KEY_ID = re.compile(rb"[0-9a-f]{8}")

Event = dict[str, Any]


class Rejection(StrEnum):
    """Why a frame changed nothing (the reason label of rungway_bus_events_rejected_total)."""

    SIGNATURE = "signature"  # unsigned, unknown key, or a MAC that does not match
    STALE = "stale"  # signed, but older (or newer) than max_age_s
    REPLAYED = "replayed"  # signed and fresh, but this nonce was accepted already
    SIZE = "size"  # too many bytes or events
    MALFORMED = "malformed"  # not a frame, or a body that is not a JSON list of objects


@dataclass(frozen=True, slots=True)
class FrameKey:
    """One fleet secret and its id (derived from it, so nobody has to keep the two in step)."""

    id: str
    secret: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str | bytes) -> FrameKey:
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"a bus secret must be at least {MIN_SECRET_BYTES} bytes, but was {len(raw)}")
        return cls(hmac.new(raw, b"rungway bus key id", hashlib.sha256).hexdigest()[:8], raw)


@dataclass(frozen=True, slots=True)
class FrameRules:
    """What a member signs with and accepts. `keys[0]` signs; every key verifies."""

    keys: tuple[FrameKey, ...]
    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = MAX_FRAME_BYTES
    max_events: int = MAX_FRAME_EVENTS

    def __post_init__(self) -> None:
        if not 0 < self.max_age_s <= 3600:
            raise ValueError(f"max_age_s must be in (0, 3600], but was {self.max_age_s}")
        if len({key.id for key in self.keys}) != len(self.keys):
            raise ValueError("the current and previous bus secrets are the same")

    @classmethod
    def signed(cls, current: str | bytes, previous: str | bytes | None = None, **limits: Any) -> FrameRules:
        keys: tuple[FrameKey, ...] = (FrameKey.from_secret(current),)
        if previous is not None:
            keys += (FrameKey.from_secret(previous),)
        return cls(keys, **limits)

    @classmethod
    def unsigned(cls, **limits: Any) -> FrameRules:
        """No signature: anyone who can write to the bus is believed. Only on explicit opt-in."""
        return cls((), **limits)

    @property
    def is_signed(self) -> bool:
        return bool(self.keys)

    def key_ids(self) -> list[str]:
        return [key.id for key in self.keys]


def _mac(secret: bytes, signed_part: bytes) -> bytes:
    return hmac.new(secret, signed_part, hashlib.sha256).hexdigest().encode()


def seal(body: bytes, rules: FrameRules, now: float, nonce: str) -> bytes:
    """A frame for `body` (a JSON list of events, one line), signed with the current key."""
    if not rules.is_signed:
        return body
    if not _NONCE.fullmatch(nonce.encode()):
        raise ValueError(f"a frame nonce is 16 lowercase hex digits, but was {nonce!r}")
    key = rules.keys[0]
    head = b"%s %s %.3f %s " % (MAGIC, key.id.encode(), now, nonce.encode())
    return head + _mac(key.secret, head + body) + b" " + body


class FrameReader:
    """Opens frames for one member: verifies, and remembers accepted nonces (pure: `now` is given)."""

    def __init__(self, rules: FrameRules, max_nonces: int = MAX_NONCES) -> None:
        self.rules = rules
        self._keys = {key.id.encode(): key for key in rules.keys}
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # nonce -> when accepted
        self._max_nonces = max_nonces

    def __repr__(self) -> str:
        mode = f"keys={self.rules.key_ids()}" if self.rules.is_signed else "unsigned"
        return f"<FrameReader {mode} nonces={len(self._seen)}>"

    def read(self, data: bytes, now: float) -> list[Event] | Rejection:
        """The frame's events, or why it was rejected. Never raises."""
        try:
            return self._read(data, now)
        except Exception:  # belt and braces: a hostile frame must never reach the caller's loop
            return Rejection.MALFORMED

    def _read(self, data: bytes, now: float) -> list[Event] | Rejection:
        if not isinstance(data, bytes | bytearray | memoryview):
            return Rejection.MALFORMED
        data = bytes(data)
        if len(data) > self.rules.max_bytes:
            return Rejection.SIZE
        if not self.rules.is_signed:
            return self._body(data)
        parts = data.split(b" ", 5)
        if len(parts) != 6 or parts[0] != MAGIC:
            return Rejection.SIGNATURE  # an unsigned (or foreign) frame on a signed bus
        _, key_id, stamp, nonce, mac, body = parts
        if not (
            _KEY_ID.fullmatch(key_id) and _TIME.fullmatch(stamp) and _NONCE.fullmatch(nonce) and _MAC.fullmatch(mac)
        ):
            return Rejection.SIGNATURE
        key = self._keys.get(key_id)
        signed_part = b"%s %s %s %s " % (MAGIC, key_id, stamp, nonce) + body
        if key is None or not hmac.compare_digest(mac, _mac(key.secret, signed_part)):
            return Rejection.SIGNATURE
        if abs(now - float(stamp)) > self.rules.max_age_s:
            return Rejection.STALE
        self._forget(now)
        if nonce in self._seen:
            return Rejection.REPLAYED
        events = self._body(body)
        if not isinstance(events, Rejection):
            self._seen[nonce] = now
            if len(self._seen) > self._max_nonces:
                self._seen.popitem(last=False)
        return events

    def _forget(self, now: float) -> None:
        # A frame accepted at t carried a time ≥ t - max_age: it is stale for good by t + 2 max_age.
        horizon = now - 2 * self.rules.max_age_s
        while self._seen:
            nonce, at = next(iter(self._seen.items()))
            if at >= horizon:
                break
            del self._seen[nonce]

    def _body(self, body: bytes) -> list[Event] | Rejection:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested past the stack
            return Rejection.MALFORMED
        if not isinstance(data, list) or not all(isinstance(event, dict) for event in data):
            return Rejection.MALFORMED
        if len(data) > self.rules.max_events:
            return Rejection.SIZE
        return data
