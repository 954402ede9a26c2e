from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.translate import SseEvent, SseParser


def feed_in_pieces(raw: bytes, cuts: list[int]) -> tuple[list[SseEvent], bytes]:
    parser = SseParser()
    events: list[SseEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(raw)]:
        events += parser.feed(raw[start:cut])
        start = max(start, cut)
    return events, parser.pending


def test_parser_joins_multi_line_data_and_keeps_the_event_name() -> None:
    parser = SseParser()
    events = parser.feed(b"event: delta\ndata: one\ndata: two\n\n")
    assert events == [SseEvent(data="one\ntwo", event="delta")]
    assert parser.pending == b""


def test_parser_accepts_crlf_and_bare_cr_line_ends() -> None:
    parser = SseParser()
    events = parser.feed(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n")
    assert events == [SseEvent("a"), SseEvent("b"), SseEvent("c")]
    assert parser.pending == b""


def test_parser_ignores_comments_ids_retries_and_unknown_fields() -> None:
    parser = SseParser()
    raw = b": keep-alive\n\nid: 7\nretry: 100\nfoo: bar\ndata:x\n\n"
    assert parser.feed(raw) == [SseEvent("x")]


def test_parser_does_not_dispatch_an_event_without_data() -> None:
    parser = SseParser()
    assert parser.feed(b"event: ping\n\ndata:\n\n") == [SseEvent("")]


def test_parser_strips_one_space_after_the_colon_only() -> None:
    parser = SseParser()
    assert parser.feed(b"data:  two spaces\n\n") == [SseEvent(" two spaces")]


def test_parser_keeps_an_incomplete_event_pending() -> None:
    parser = SseParser()
    assert parser.feed(b'event: a\ndata: {"x"') == []
    assert parser.pending == b'event: a\ndata: {"x"'
    assert parser.feed(b": 1}\n\n") == [SseEvent(data='{"x": 1}', event="a")]
    assert parser.pending == b""


def test_parser_does_not_leave_the_lf_of_a_split_crlf_pending() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r\n\r") == [SseEvent("a")]
    assert parser.feed(b"\n") == []
    assert parser.pending == b""


def test_parser_replaces_invalid_utf8_instead_of_raising() -> None:
    assert SseParser().feed(b"data: \xff\n\n") == [SseEvent("\ufffd")]


def test_encode_writes_one_data_field_per_line() -> None:
    assert SseEvent("a\nb", "x").encode() == b"event: x\ndata: a\ndata: b\n\n"
    assert SseEvent("{}").encode() == b"data: {}\n\n"


# Field values that survive the wire unchanged: no line breaks, no leading space.
_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
).filter(lambda s: not s.startswith(" "))
_events = st.builds(
    SseEvent,
    data=st.lists(_values, min_size=1, max_size=3).map("\n".join),
    event=st.none() | _values.filter(bool),
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[SseEvent], bytes]:
    events = draw(st.lists(_events, max_size=8))
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    parts = []
    for event in events:
        if draw(st.booleans()):
            parts.append(b": comment" + newline)
        parts.append(event.encode().replace(b"\n", newline))
    return events, b"".join(parts)


@settings(suppress_health_check=[HealthCheck.too_slow])  # Unicode tables on first use
@given(_streams(), st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_parser_gives_the_same_events_however_the_bytes_are_split(
    stream: tuple[list[SseEvent], bytes], cuts: list[int]
) -> None:
    expected, raw = stream
    events, pending = feed_in_pieces(raw, cuts)
    assert events == expected
    assert pending == b""
    assert feed_in_pieces(raw, list(range(len(raw)))) == (expected, b"")


@given(
    st.binary(max_size=300),
    st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_parser_splitting_never_changes_the_events_of_arbitrary_bytes(raw: bytes, cuts: list[int]) -> None:
    assert feed_in_pieces(raw, cuts) == feed_in_pieces(raw, [])


def test_an_endless_line_overflows_the_parser_instead_of_growing_its_buffer() -> None:
    parser = SseParser(max_event_bytes=1024)
    assert parser.feed(b"data: " + b"x" * 1000) == []
    assert not parser.overflowed
    assert parser.feed(b"x" * 100) == []
    assert parser.overflowed and parser.pending == b""
    assert parser.feed(b"\n\n" + b"data: late\n\n") == []  # the parse has ended


def test_lines_without_the_blank_line_that_ends_an_event_overflow_too() -> None:
    parser = SseParser(max_event_bytes=1024)
    for _ in range(100):
        parser.feed(b": junk comment that never ends the event\n")
    assert parser.overflowed


def test_events_completed_before_an_overflow_are_still_dispatched() -> None:
    parser = SseParser(max_event_bytes=64)
    assert parser.feed(b"data: a\n\ndata: " + b"y" * 100) == [SseEvent("a")]
    assert parser.overflowed


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_the_parser_never_holds_more_than_its_cap(chunks: list[bytes]) -> None:
    parser = SseParser(max_event_bytes=256)
    for chunk in chunks:
        parser.feed(chunk)
        # At most the cap, plus nothing: an overflow drops what was held.
        assert len(parser.pending) <= 256
