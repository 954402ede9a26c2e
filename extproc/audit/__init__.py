"""The audit trail (A1), without I/O: the typed record of a decision that left tier 0 (a hop, a
trip, a tier change, a rescue, a refusal, a policy reload...), its canonical JSON line, the hash
chain that links records, and `verify`, which reads chained lines back and names the first bad
record and how it was tampered with (edited, deleted, reordered, inserted, torn tail).

Writing records to disk (the queue, fsync batching, segments, retention) is
`runtime/auditlog.py`'s. May import: core.
"""

from .chain import GENESIS, Chain, Line, lines_of
from .record import Detail, Entry, Kind, Record, RecordError, RungRef, prompt_hash
from .story import incident_trips, line, selected, sentence
from .verify import Anchor, Broken, Intact, Tampering, Verdict, verify

__all__ = [
    "GENESIS",
    "Anchor",
    "Broken",
    "Chain",
    "Detail",
    "Entry",
    "Intact",
    "Kind",
    "Line",
    "Record",
    "RecordError",
    "RungRef",
    "Tampering",
    "Verdict",
    "incident_trips",
    "line",
    "lines_of",
    "prompt_hash",
    "selected",
    "sentence",
    "verify",
]
