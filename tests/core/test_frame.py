"""Signed health-bus frames: only a fleet secret's holder is believed, and only once, recently;
any byte string read is either events or a named rejection, never an exception."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from extproc.core import FrameKey, FrameReader, FrameRules, Rejection, seal
from extproc.core.frame import MAX_FRAME_BYTES

T0 = 1_767_225_600.0
SECRET = "fleet-secret-0123456789"
OLD_SECRET = "older-secret-9876543210"
RULES = FrameRules.signed(SECRET)
QUOTA = [{"v": 1, "k": "quota", "key": "primary/gpt-4o", "until": T0 + 86_400, "origin": "attacker"}]


def body(events: list[Any]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()


def nonce(n: int = 1) -> str:
    return f"{n:016x}"


def sealed(events: list[Any] = QUOTA, rules: FrameRules = RULES, at: float = T0, n: int = 1) -> bytes:
    return seal(body(events), rules, at, nonce(n))


def test_a_frame_signed_with_the_fleet_secret_reads_back_its_events() -> None:
    assert FrameReader(RULES).read(sealed(), T0 + 1) == QUOTA


def test_an_unsigned_frame_on_a_signed_bus_is_rejected_for_its_signature() -> None:
    assert FrameReader(RULES).read(body(QUOTA), T0) is Rejection.SIGNATURE


def test_a_frame_signed_with_another_secret_is_rejected_for_its_signature() -> None:
    forged = sealed(rules=FrameRules.signed("attacker-guess-0123456789"))
    assert FrameReader(RULES).read(forged, T0) is Rejection.SIGNATURE


def test_a_changed_body_or_header_breaks_the_signature() -> None:
    frame = sealed()
    assert FrameReader(RULES).read(frame.replace(b"primary", b"secondary"), T0) is Rejection.SIGNATURE
    head, _, rest = frame.partition(b" ")
    key_id, _, rest = rest.partition(b" ")
    stamp, _, rest = rest.partition(b" ")
    later = b" ".join([head, key_id, b"%.3f" % (float(stamp) + 1), rest])
    assert FrameReader(RULES).read(later, T0) is Rejection.SIGNATURE  # the time is signed too


def test_the_previous_secret_still_verifies_so_a_fleet_can_rotate() -> None:
    rotating = FrameRules.signed(SECRET, previous=OLD_SECRET)
    reader = FrameReader(rotating)
    assert reader.read(sealed(rules=FrameRules.signed(OLD_SECRET)), T0) == QUOTA
    assert reader.read(sealed(rules=rotating, n=2), T0) == QUOTA
    # ...and it signs with the current one, which a member that only knows the old one refuses.
    assert FrameReader(FrameRules.signed(OLD_SECRET)).read(sealed(rules=rotating, n=3), T0) is Rejection.SIGNATURE


@pytest.mark.parametrize("age", [30.001, 3600.0, -30.001])
def test_a_frame_older_or_newer_than_the_bound_is_stale(age: float) -> None:
    assert FrameReader(RULES).read(sealed(at=T0), T0 + age) is Rejection.STALE


def test_the_bound_is_configurable() -> None:
    rules = FrameRules.signed(SECRET, max_age_s=5)
    assert FrameReader(rules).read(sealed(rules=rules), T0 + 4.9) == QUOTA
    assert FrameReader(rules).read(sealed(rules=rules), T0 + 5.1) is Rejection.STALE


def test_a_fresh_frame_replayed_is_rejected_and_its_nonce_forgotten_only_once_stale_for_good() -> None:
    reader = FrameReader(RULES)
    frame = sealed()
    assert reader.read(frame, T0) == QUOTA
    assert reader.read(frame, T0 + 29) is Rejection.REPLAYED
    assert reader.read(frame, T0 + 31) is Rejection.STALE
    assert reader.read(sealed(at=T0 + 60), T0 + 61) == QUOTA
    assert "nonces=1" in repr(reader)  # the first frame's nonce is gone


def test_the_nonce_memory_is_bounded() -> None:
    reader = FrameReader(RULES, max_nonces=3)
    for n in range(10):
        assert reader.read(sealed(n=n), T0) == QUOTA
    assert "nonces=3" in repr(reader)


def test_a_frame_over_the_byte_bound_is_rejected_before_anything_is_checked() -> None:
    rules = FrameRules.signed(SECRET, max_bytes=1000)
    assert FrameReader(rules).read(sealed(QUOTA * 20, rules), T0) is Rejection.SIZE
    assert FrameReader(RULES).read(b"x" * (MAX_FRAME_BYTES + 1), T0) is Rejection.SIZE


def test_a_frame_with_too_many_events_is_rejected() -> None:
    rules = FrameRules.signed(SECRET, max_events=3)
    assert FrameReader(rules).read(sealed([{"n": n} for n in range(4)], rules), T0) is Rejection.SIZE


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'"a string"', b"[1, null]", b'{"k":"obs"}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00", b""],
)
def test_a_signed_body_that_is_not_a_list_of_objects_is_malformed(payload: bytes) -> None:
    frame = seal(payload, RULES, T0, nonce())
    assert FrameReader(RULES).read(frame, T0) is Rejection.MALFORMED
    assert FrameReader(FrameRules.unsigned()).read(payload, T0) is Rejection.MALFORMED


def test_a_malformed_signed_body_does_not_use_up_its_nonce() -> None:
    reader = FrameReader(RULES)
    assert reader.read(seal(b"nope", RULES, T0, nonce()), T0) is Rejection.MALFORMED
    assert "nonces=0" in repr(reader)


def test_unsigned_rules_read_the_plain_json_list_and_still_bound_it() -> None:
    rules = FrameRules.unsigned(max_events=2)
    assert seal(body(QUOTA), rules, T0, nonce()) == body(QUOTA)
    assert FrameReader(rules).read(body(QUOTA), T0) == QUOTA
    assert FrameReader(rules).read(body(QUOTA * 3), T0) is Rejection.SIZE


def test_secrets_are_at_least_16_bytes_and_two_keys_must_differ() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes, but was 5"):
        FrameKey.from_secret("short")
    with pytest.raises(ValueError, match="are the same"):
        FrameRules.signed(SECRET, previous=SECRET)
    with pytest.raises(ValueError, match=r"max_age_s must be in \(0, 3600\], but was 0"):
        FrameRules.signed(SECRET, max_age_s=0)


def test_the_secret_never_shows_in_a_repr() -> None:
    assert SECRET not in repr(RULES) and SECRET not in repr(FrameReader(RULES))
    assert RULES.keys[0].id in repr(FrameReader(RULES))


def test_seal_refuses_a_nonce_that_would_break_the_frame() -> None:
    with pytest.raises(ValueError, match="16 lowercase hex digits"):
        seal(b"[]", RULES, T0, "has space ")


def test_verifying_a_largest_hostile_frame_takes_milliseconds() -> None:
    reader = FrameReader(RULES)
    junk = b"RW1 " + RULES.keys[0].id.encode() + b" 1767225600.000 " + nonce().encode() + b" " + b"0" * 64 + b" "
    junk += b"[" * (MAX_FRAME_BYTES - len(junk))
    started = time.perf_counter()
    for _ in range(10):
        assert reader.read(junk, T0) is Rejection.SIGNATURE
    assert (time.perf_counter() - started) / 10 < 0.05


# ---- properties: any bytes in, events or a rejection out --------------------------------------

frames = st.binary(max_size=2048) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([b"RW1 ", b"RW1 " + RULES.keys[0].id.encode() + b" 1767225600.000 " + nonce().encode() + b" "]),
    st.binary(max_size=512),
)


@given(frames)
@example(b"RW1 a b c d e")
@example(b"[" * 5000)
@example(b"1" * 5000)
def test_any_bytes_are_events_or_a_rejection_never_an_exception(data: bytes) -> None:
    for rules in (RULES, FrameRules.unsigned()):
        result = FrameReader(rules).read(data, T0)
        assert isinstance(result, Rejection) or all(isinstance(event, dict) for event in result)


@given(frames)
def test_nothing_but_a_sealed_frame_is_believed_on_a_signed_bus(data: bytes) -> None:
    assert isinstance(FrameReader(RULES).read(data, T0), Rejection)


json_events = st.lists(
    st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=20), max_size=5),
    max_size=20,
)


@given(json_events, st.floats(-29.9, 29.9), st.integers(0, 2**64 - 1))
def test_whatever_a_member_seals_another_reads_back_unchanged(events: list[Any], skew: float, n: int) -> None:
    assert FrameReader(RULES).read(seal(body(events), RULES, T0, f"{n:016x}"), T0 + skew) == events


@given(json_events, st.integers(0, 200), st.integers(0, 255))
def test_flipping_any_byte_of_a_sealed_frame_is_a_rejection(events: list[Any], where: int, bits: int) -> None:
    frame = bytearray(sealed(events))
    index = where % len(frame)
    flipped = frame[index] ^ (bits or 1)
    frame[index] = flipped
    result = FrameReader(RULES).read(bytes(frame), T0)
    # A flip inside the JSON body can leave it parseable, but never verifiable.
    assert isinstance(result, Rejection)
