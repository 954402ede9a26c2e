"""The hash chain: each record names the one before it by hash, and carries a sequence number.

A chain may span several segment files (the writer rotates them): a new segment starts with a
record whose `prev` is the previous segment's last hash, so a verifier reads the segments of a
chain in order as one sequence of lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .record import Entry, Record

GENESIS = "0" * 64  # the `prev` of a chain's first record


@dataclass(slots=True)
class Chain:
    """Where a chain stands: the next record's seq and the last record's hash."""

    seq: int = 0
    head: str = GENESIS

    @classmethod
    def after(cls, last: Record) -> Chain:
        """The chain continued after its last record (a writer's restart)."""
        return cls(last.seq + 1, last.hash)

    def append(self, entry: Entry) -> Record:
        record = Record.make(self.seq, self.head, entry)
        self.seq, self.head = record.seq + 1, record.hash
        return record


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a chain's segments, where it was found, and whether it ended with a newline
    (a line without one is a torn write)."""

    where: str  # "segment:line", 1-based
    data: bytes
    complete: bool


def lines_of(segments: Sequence[tuple[str, bytes]]) -> list[Line]:
    """A chain's lines, from its segments (name, content) in order."""
    out: list[Line] = []
    for name, content in segments:
        parts = content.split(b"\n")
        for number, data in enumerate(parts[:-1], start=1):
            out.append(Line(f"{name}:{number}", data + b"\n", True))
        if parts[-1]:
            out.append(Line(f"{name}:{len(parts)}", parts[-1], False))
    return out
