"""The audit chain: an untouched log always verifies; each kind of tampering is always detected
and named, at the first bad record."""

from __future__ import annotations

import itertools
import json

from hypothesis import assume, given
from hypothesis import strategies as st

from extproc.audit import (
    GENESIS,
    Anchor,
    Broken,
    Chain,
    Entry,
    Intact,
    Kind,
    Line,
    Record,
    RungRef,
    Tampering,
    lines_of,
    prompt_hash,
    verify,
)

PRIMARY = RungRef("main", 0, "primary", "gpt-4o", 0)
SECONDARY = RungRef("main", 1, "secondary", "claude-fallback", 1)

entries = st.builds(
    Entry,
    at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    kind=st.sampled_from(Kind),
    tenant=st.text(max_size=8),
    task=st.sampled_from(["default", "summarize"]),
    trigger=st.sampled_from(["server_error", "timeout", "not_permitted", ""]),
    source=st.sampled_from([None, PRIMARY]),
    target=st.sampled_from([None, SECONDARY]),
    policy=st.just("v1"),
    request_id=st.uuids().map(str),
    prompt_hash=st.binary(max_size=16).map(prompt_hash),
    tokens=st.none() | st.integers(0, 10_000),
    cost=st.none() | st.floats(0, 10, allow_nan=False),
    detail=st.dictionaries(st.sampled_from(["outcome", "n"]), st.text(max_size=5) | st.integers(0, 9), max_size=2),
)


def chained(items: list[Entry]) -> list[bytes]:
    chain = Chain()
    return [chain.append(e).line() for e in items]


def split(data: list[bytes], cuts: list[int]) -> list[Line]:
    """The chain's lines as segments cut at `cuts` (the writer's rotation)."""
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    segments = [(f"s{i}", b"".join(data[a:b])) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    return lines_of(segments)


def broken(lines: list[Line], anchor: Anchor | None = None) -> Broken:
    verdict = verify(lines, anchor)
    assert isinstance(verdict, Broken), verdict
    return verdict


def line_no(verdict: Broken, lines: list[Line]) -> int:
    return [line.where for line in lines].index(verdict.where)


@given(st.lists(entries, max_size=12), st.lists(st.integers(0, 20), max_size=3))
def test_an_untouched_chain_always_verifies_across_any_segments(items: list[Entry], cuts: list[int]) -> None:
    data = chained(items)
    verdict = verify(split(data, cuts))
    assert isinstance(verdict, Intact)
    assert verdict.records == len(items)
    assert verdict.head == (Record.parse(data[-1]).hash if data else GENESIS)


@given(st.lists(entries, min_size=1, max_size=8))
def test_records_round_trip_through_their_line(items: list[Entry]) -> None:
    for line in chained(items):
        record = Record.parse(line)
        assert record.line() == line and record.intact(line)


@given(st.lists(entries, min_size=1, max_size=10), st.data())
def test_an_edit_of_any_field_is_named_at_its_line(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    i = data.draw(st.integers(0, len(lines) - 1))
    raw = json.loads(lines[i])
    field = data.draw(st.sampled_from(["tenant", "trigger", "at", "tokens", "policy", "prompt_hash", "seq", "prev"]))
    raw[field] = data.draw(st.integers(0, 99) if field in ("at", "tokens", "seq") else st.text(max_size=6))
    edited = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assume(edited != lines[i])
    lines[i] = edited
    verdict = broken(lines_of([("s", b"".join(lines))]))
    assert verdict.tampering is Tampering.EDITED
    assert verdict.where == f"s:{i + 1}"


@given(st.lists(entries, min_size=2, max_size=10), st.data())
def test_an_edit_whose_hash_was_recomputed_breaks_the_next_link(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    i = data.draw(st.integers(0, len(lines) - 2))
    old = Record.parse(lines[i])
    forged = Record.make(old.seq, old.prev, Entry(old.entry.at, old.entry.kind, tenant=old.entry.tenant + "x"))
    lines[i] = forged.line()
    verdict = broken(lines_of([("s", b"".join(lines))]))
    assert verdict.tampering is Tampering.EDITED
    assert verdict.where == f"s:{i + 2}"


@given(st.lists(entries, min_size=2, max_size=10), st.data())
def test_a_deleted_record_is_named_where_it_is_missing(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    i = data.draw(st.integers(0, len(lines) - 2))  # the last one: see the anchor test
    del lines[i]
    verdict = broken(lines_of([("s", b"".join(lines))]))
    assert verdict.tampering is Tampering.DELETED
    assert verdict.where == f"s:{i + 1}"


@given(st.lists(entries, min_size=1, max_size=10), st.data())
def test_records_deleted_from_the_end_are_caught_by_an_anchor(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    last = Record.parse(lines[-1])
    kept = data.draw(st.integers(0, len(lines) - 1))
    assert isinstance(verify(lines_of([("s", b"".join(lines))]), Anchor(last.seq, last.hash)), Intact)
    verdict = broken(lines_of([("s", b"".join(lines[:kept]))]), Anchor(last.seq, last.hash))
    assert verdict.tampering is Tampering.DELETED


@given(st.lists(entries, min_size=2, max_size=10), st.data())
def test_reordered_records_are_named_at_the_first_out_of_place(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    i = data.draw(st.integers(0, len(lines) - 2))
    j = data.draw(st.integers(i + 1, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    verdict = broken(lines_of([("s", b"".join(lines))]))
    assert verdict.tampering is Tampering.REORDERED
    assert verdict.where == f"s:{i + 1}"


@given(st.lists(entries, min_size=1, max_size=10), st.data())
def test_an_inserted_line_is_named(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    i = data.draw(st.integers(0, len(lines)))
    extra = data.draw(
        st.sampled_from(lines)  # a copy of a genuine record
        | st.builds(lambda e: Record.make(0, GENESIS, e).line(), entries)  # a forged one
        | st.text(max_size=20).map(lambda t: t.replace("\n", " ").encode() + b"\n")  # anything
    )
    lines.insert(i, extra)
    verdict = broken(lines_of([("s", b"".join(lines))]))
    assert verdict.tampering is Tampering.INSERTED
    assert verdict.where in (f"s:{i + 1}", f"s:{i + 2}")


@given(st.lists(entries, min_size=1, max_size=10), st.data())
def test_a_torn_tail_is_named_at_the_last_line(items: list[Entry], data: st.DataObject) -> None:
    lines = chained(items)
    cut = data.draw(st.integers(1, len(lines[-1]) - 1))
    content = b"".join(lines)[:-cut]
    verdict = broken(lines_of([("s", content)]))
    assert verdict.tampering is Tampering.TORN_TAIL
    assert verdict.where == f"s:{len(lines)}"


def test_a_chain_may_start_late_only_after_a_retention_record() -> None:
    chain = Chain()
    lines = [chain.append(Entry(float(i), Kind.TRIP)).line() for i in range(4)]
    lines.append(chain.append(Entry.retention(5.0, pruned_before=2, segments=1)).line())
    assert isinstance(verify(lines_of([("s", b"".join(lines[2:]))])), Intact)
    too_many = broken(lines_of([("s", b"".join(lines[3:]))]))
    assert (too_many.tampering, too_many.where) == (Tampering.DELETED, "s:1")


def test_a_broken_verdict_reads_as_a_sentence() -> None:
    chain = Chain()
    lines = [chain.append(Entry(float(i), Kind.HOP)).line() for i in range(3)]
    del lines[1]
    assert str(broken(lines_of([("w0.000000000000.jsonl", b"".join(lines))]))) == (
        "w0.000000000000.jsonl:2 (seq 2): deleted: records 1..1 are missing"
    )
