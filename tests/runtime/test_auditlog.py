"""The audit trail on disk: one contract over the in-memory and the file sink; restarts continue
the chain; a torn tail is cut and recorded; segments rotate and retention prunes without
breaking verify; a kill -9 loses nothing the writer acknowledged."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from extproc.audit import GENESIS, Anchor, Broken, Entry, Intact, Kind, Record, Tampering
from extproc.policy import AuditSettings
from extproc.runtime.auditlog import (
    AuditLog,
    AuditLogError,
    AuditMetrics,
    AuditSink,
    MemoryAudit,
    read_records,
    segments,
    verify_dir,
)
from tests.builders import make_sidecar

REPO = Path(__file__).resolve().parents[2]


def entry(i: int, kind: Kind = Kind.HOP) -> Entry:
    return Entry(float(i), kind, tenant="acme", task="default", trigger="server_error", request_id=f"r{i}")


def settings(**changes: object) -> AuditSettings:
    return AuditSettings.model_validate({"fsync_interval_s": 0.01, **changes})


@pytest.fixture(params=["memory", "file"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AuditSink, Callable[[], list[Record]]]]:
    if request.param == "memory":
        memory = MemoryAudit()
        yield memory, lambda: memory.records
        return
    log = AuditLog(tmp_path, "w0", settings()).open()

    def written() -> list[Record]:
        assert log.flush(timeout=10)
        return [r for _, r in read_records(tmp_path)]

    yield log, written
    log.close()


def test_every_sink_chains_what_it_is_given_in_order(sink: tuple[AuditSink, Callable[[], list[Record]]]) -> None:
    audit, written = sink
    for i in range(5):
        audit.submit(entry(i))
    records = written()
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert [r.entry for r in records] == [entry(i) for i in range(5)]
    assert records[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))


def test_a_restarted_writer_continues_its_chain(tmp_path: Path) -> None:
    for batch in range(3):
        log = AuditLog(tmp_path, "w0", settings()).open()
        for i in range(4):
            log.submit(entry(batch * 4 + i))
        log.close()
    (verdict,) = verify_dir(tmp_path).values()
    assert verdict == Intact(
        12, 0, 11, Record.parse((tmp_path / "w0.000000000000.jsonl").read_bytes().splitlines()[-1]).hash
    )


def test_a_second_writer_of_the_same_chain_is_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings()).open()
    with pytest.raises(AuditLogError, match="another process"):
        AuditLog(tmp_path, "w0", settings()).open()
    log.close()
    AuditLog(tmp_path, "w1", settings()).open().close()  # another chain is another file


def test_a_torn_tail_is_cut_and_recorded_with_the_torn_bytes_hash(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings()).open()
    for i in range(3):
        log.submit(entry(i))
    log.close()
    path = tmp_path / "w0.000000000000.jsonl"
    torn = Record.make(3, "f" * 64, entry(3)).line()[:40]
    with open(path, "ab") as f:
        f.write(torn)
    before = verify_dir(tmp_path)["w0"]
    assert isinstance(before, Broken) and before.tampering is Tampering.TORN_TAIL
    log = AuditLog(tmp_path, "w0", settings()).open()
    log.submit(entry(4))
    log.close()
    assert isinstance(verify_dir(tmp_path)["w0"], Intact)
    records = [r for _, r in read_records(tmp_path)]
    assert [r.entry.kind for r in records] == [Kind.HOP] * 3 + [Kind.TORN_TAIL, Kind.HOP]
    assert records[3].entry.detail == {
        "segment": path.name,
        "torn_bytes": len(torn),
        "torn_sha256": hashlib.sha256(torn).hexdigest(),
    }


def test_segments_rotate_and_each_starts_with_the_previous_ones_last_hash(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings(segment_bytes=4096)).open()
    for i in range(200):
        log.submit(entry(i))
    log.close()
    files = segments(tmp_path)["w0"]
    assert len(files) > 2
    for (_, earlier), (first_seq, later) in itertools.pairwise(files):
        last = Record.parse(earlier.read_bytes().splitlines()[-1])
        first = Record.parse(later.read_bytes().splitlines()[0])
        assert (first.seq, first.prev) == (first_seq, last.hash) == (last.seq + 1, last.hash)
    verdict = verify_dir(tmp_path)["w0"]
    assert isinstance(verdict, Intact) and verdict.records == 200


def test_retention_prunes_old_segments_says_so_and_still_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings(segment_bytes=4096, max_bytes=12_000)).open()
    for i in range(300):
        log.submit(entry(i))
    log.close()
    files = segments(tmp_path)["w0"]
    assert files[0][0] > 0  # the oldest segments are gone
    verdict = verify_dir(tmp_path)["w0"]
    assert isinstance(verdict, Intact) and verdict.first_seq == files[0][0]
    retention = [r for _, r in read_records(tmp_path) if r.entry.kind is Kind.RETENTION]
    assert retention and int(retention[-1].entry.detail["pruned_before"]) == files[0][0]
    files[0][1].unlink()  # and anyone else's deletion still shows
    broken = verify_dir(tmp_path)["w0"]
    assert isinstance(broken, Broken) and broken.tampering is Tampering.DELETED


def test_a_full_queue_holds_the_submitter_back_and_drops_nothing(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    log = AuditLog(tmp_path, "w0", settings(queue_records=2), metrics).open()
    for i in range(500):
        log.submit(entry(i, Kind.TRIP if i % 2 else Kind.HOP))
    assert log.flush(timeout=10)
    log.close()
    assert isinstance(verify_dir(tmp_path)["w0"], Intact)
    assert registry.get_sample_value("rungway_audit_records_total", {"kind": "hop"}) == 250
    assert registry.get_sample_value("rungway_audit_records_total", {"kind": "trip"}) == 250
    assert registry.get_sample_value("rungway_audit_backlog_records") == 0


_CHILD = """
import sys
from pathlib import Path
from extproc.audit import Entry, Kind
from extproc.policy import AuditSettings
from extproc.runtime.auditlog import AuditLog

log = AuditLog(Path(sys.argv[1]), "w0", AuditSettings(fsync_interval_s=0.05)).open()
n = 0
while True:
    for _ in range(50):
        log.submit(Entry(float(n), Kind.TRIP, tenant="acme", trigger="timeout", request_id=str(n)))
        n += 1
    log.flush()
    print(n, flush=True)  # acknowledged: the kernel has these
"""


def test_kill_9_of_a_writing_process_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    acknowledged = 0
    for round_ in range(3):  # a kill, a restart that continues the chain, another kill
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        acked = 0
        for _ in range(5 + 7 * round_):
            acked = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        acknowledged += acked
        verdict = verify_dir(tmp_path)["w0"]
        if isinstance(verdict, Broken):  # only a write cut mid-line may be found; the next start cuts it
            assert verdict.tampering is Tampering.TORN_TAIL
        trips = [r for _, r in read_records(tmp_path) if r.entry.kind is Kind.TRIP]
        assert len(trips) >= acknowledged
        if round_ == 0:
            assert {int(r.entry.request_id) for r in trips} >= set(range(acked))
    AuditLog(tmp_path, "w0", settings()).open().close()
    assert isinstance(verify_dir(tmp_path)["w0"], Intact)


def test_the_sidecar_hands_audited_effects_to_its_sink() -> None:
    from extproc.filters.effects import Audited

    sidecar = make_sidecar()
    sidecar.audit = MemoryAudit()
    sidecar.apply([Audited(entry(1)), Audited(entry(2, Kind.TRIP))])
    assert [r.entry.kind for r in sidecar.audit.records] == [Kind.HOP, Kind.TRIP]


def test_anchors_catch_records_or_whole_chains_deleted_from_the_end(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings()).open()
    for i in range(3):
        log.submit(entry(i))
    log.close()
    path = tmp_path / "w0.000000000000.jsonl"
    last = Record.parse(path.read_bytes().splitlines()[-1])
    anchors = {"w0": Anchor(last.seq, last.hash), "w1": Anchor(0, "0" * 64)}
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    assert isinstance(verify_dir(tmp_path)["w0"], Intact)  # shorter, and sound
    verdicts = verify_dir(tmp_path, anchors)
    assert {chain: v.tampering for chain, v in verdicts.items() if isinstance(v, Broken)} == {
        "w0": Tampering.DELETED,
        "w1": Tampering.DELETED,
    }


def test_a_failed_writer_is_loud_and_refuses_more_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w0", settings()).open()
    read_only = os.open(os.devnull, os.O_RDONLY)
    os.dup2(read_only, log._fd)  # the disk goes away under the writer: its next write fails
    os.close(read_only)
    log.submit(entry(0))
    assert log.flush(timeout=10) is False
    with pytest.raises(AuditLogError, match="writer failed"):
        log.submit(entry(1))
    assert log.snapshot()["failed"]
    log.close()
