"""Reading a chain back: intact, or the first bad record and what was done to it.

A record is sound when its line is exactly its canonical encoding and its hash is the hash of
what it says. Walking the lines in order, each sound record must carry the next seq and name the
previous record's hash. The first line that does not is the verdict, classified by what the
rest of the chain shows:

- a line that is not sound, or a sound one whose link to its predecessor is wrong: EDITED
  (unless the chain resumes right after it, as if it were not there: INSERTED);
- a seq already seen, or a seq that appears twice: INSERTED;
- a seq ahead of the expected one, where the expected one comes later: REORDERED;
- a seq ahead of the expected one that never comes: DELETED;
- a last line without its newline: TORN_TAIL.

A chain starts at seq 0 (prev GENESIS), or later only when one of its own RETENTION records
says the records before were deleted by policy. Deleting whole records from the end leaves a
shorter chain that is still sound: an `Anchor` (a seq and hash known from elsewhere: /status,
an export) catches that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .chain import GENESIS, Line
from .record import Kind, Record, RecordError


class Tampering(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TORN_TAIL = "torn_tail"


@dataclass(frozen=True, slots=True)
class Intact:
    records: int
    first_seq: int | None  # None for an empty chain
    last_seq: int | None
    head: str  # the last record's hash (GENESIS for an empty chain)


@dataclass(frozen=True, slots=True)
class Broken:
    where: str  # "segment:line" of the first bad record
    seq: int | None  # what that line claims, when it can be read
    tampering: Tampering
    detail: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{self.where}{seq}: {self.tampering.value}: {self.detail}"


Verdict = Intact | Broken


@dataclass(frozen=True, slots=True)
class Anchor:
    """A record known to be in the chain (from outside the log)."""

    seq: int
    hash: str


def verify(lines: Sequence[Line], anchor: Anchor | None = None) -> Verdict:
    records = [_sound(line) for line in lines]
    seqs = Counter(r.seq for r in records if r is not None)
    pruned = max(
        (
            int(r.entry.detail.get("pruned_before", 0))
            for r in records
            if r is not None and r.entry.kind is Kind.RETENTION
        ),
        default=0,
    )
    # Where the chain starts: at 0, or where its own retention record says earlier records
    # were pruned (what the lines claim, sound or not: an edited first record is an edit).
    claimed = {s for s in map(_claimed_seq, lines) if s is not None}
    start = min(claimed) if claimed and 0 not in claimed and min(claimed) <= pruned else 0
    expected, prev = start, GENESIS if start == 0 else None
    found_anchor = anchor is None
    for i, (line, record) in enumerate(zip(lines, records, strict=True)):
        following = records[i + 1] if i + 1 < len(records) else None
        resumes = following is not None and following.seq == expected and (prev is None or following.prev == prev)
        if not line.complete:
            return Broken(
                line.where, record.seq if record else None, Tampering.TORN_TAIL, "the line was not written whole"
            )
        if record is None:
            claims = _claimed_seq(line)
            # Not even a record, and nothing after it: appended.
            inserted = resumes or (claims is None and following is None and i + 1 == len(lines))
            kind = Tampering.INSERTED if inserted else Tampering.EDITED
            return Broken(line.where, claims, kind, "the line is not its record's canonical, hashed form")
        if record.seq == expected:
            if prev is not None and record.prev != prev:
                kind = Tampering.INSERTED if resumes else Tampering.EDITED
                return Broken(line.where, record.seq, kind, "it does not name the hash of the record before it")
        elif record.seq < expected or seqs[record.seq] > 1:
            return Broken(line.where, record.seq, Tampering.INSERTED, f"seq {record.seq} appears more than once")
        elif any(r is not None and r.seq == expected for r in records[i + 1 :]):
            return Broken(
                line.where, record.seq, Tampering.REORDERED, f"seq {expected} was expected here, and comes later"
            )
        else:
            return Broken(
                line.where, record.seq, Tampering.DELETED, f"records {expected}..{record.seq - 1} are missing"
            )
        if anchor is not None and record.seq == anchor.seq:
            if record.hash != anchor.hash:
                return Broken(line.where, record.seq, Tampering.EDITED, "its hash is not the anchored one")
            found_anchor = True
        expected, prev = record.seq + 1, record.hash
    if not found_anchor:
        assert anchor is not None
        return Broken(
            lines[-1].where if lines else "(empty)",
            anchor.seq,
            Tampering.DELETED,
            f"the anchored record seq {anchor.seq} is missing from the end",
        )
    last = records[-1] if records else None
    return Intact(len(lines), start if last else None, last.seq if last else None, last.hash if last else GENESIS)


def _sound(line: Line) -> Record | None:
    try:
        record = Record.parse(line.data)
    except RecordError:
        return None
    return record if record.intact(line.data if line.complete else line.data + b"\n") else None


def _claimed_seq(line: Line) -> int | None:
    try:
        return Record.parse(line.data).seq
    except RecordError:
        return None
