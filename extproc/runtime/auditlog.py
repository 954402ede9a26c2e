"""The audit trail on disk: hash-chained JSON-lines segments, one chain per worker process.

Theory of operation. A worker's processors return audit entries as effects; `submit` puts them
on a bounded queue and returns (the request path never waits for a disk). One writer thread
owns the chain: it numbers and hashes each entry (audit.Chain), appends the lines with one
write() per batch (from then on the kernel has them: a kill -9 of the worker loses nothing
written) and fsyncs at most every `fsync_interval_s` (a power cut loses at most that much).
A full queue makes `submit` wait for the writer: backpressure, never a dropped record.

Files: `<chain>.<first seq, 12 digits>.jsonl` in one directory (the supervisor names chains
w0, w1... by worker slot, so a restarted worker continues its own). A segment past
`segment_bytes` is closed and the next one starts with the next seq, its first record naming
the last one's hash. At start, a last line without its newline (a write torn by a crash) is cut
off and a TORN_TAIL record saying so (with the torn bytes' hash) is the first one appended.
Retention deletes whole old segments, after appending a RETENTION record that says from where
the chain now starts, so `verify` still passes and a deletion by anyone else still shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..audit import Anchor, Chain, Entry, Line, Record, RecordError, Verdict, lines_of, verify
from ..policy import AuditSettings

log = logging.getLogger("rungway.audit")

AUDIT_DIR_ENV = "RUNGWAY_AUDIT_DIR"  # set by `rungway up` for its workers
AUDIT_CHAIN_ENV = "RUNGWAY_AUDIT_CHAIN"
_SEGMENT = re.compile(r"^(?P<chain>[A-Za-z0-9_-]+)\.(?P<seq>\d{12})\.jsonl$")
_BATCH = 512  # entries per write()


class AuditLogError(Exception):
    """The log cannot be opened safely (another writer holds the chain, an unreadable tail)."""


class AuditSink(Protocol):
    def submit(self, entry: Entry) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...
    def snapshot(self) -> dict[str, object]: ...


class AuditMetrics:
    """rungway_audit_records_total{kind} and rungway_audit_backlog_records (summed over live
    workers: the alert on a backed-up writer reads it)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw = {"registry": registry} if registry is not None else {}
        self.records = Counter(
            "rungway_audit_records_total",
            "Audit records written to the chain (handed to the kernel), by kind.",
            ["kind"],
            **kw,  # type: ignore[arg-type]
        )
        self.backlog = Gauge(
            "rungway_audit_backlog_records",
            "Audit records waiting for the writer (queued, not yet written).",
            multiprocess_mode="livesum",
            **kw,  # type: ignore[arg-type]
        )


@dataclass
class MemoryAudit:
    """The in-memory sink (tests, and a worker that writes no log): the same chain, no disk."""

    chain: Chain = field(default_factory=Chain)
    records: list[Record] = field(default_factory=list)

    def submit(self, entry: Entry) -> None:
        self.records.append(self.chain.append(entry))

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass

    def snapshot(self) -> dict[str, object]:
        return {"records": len(self.records), "backlog_records": 0, "head": self.chain.head}


def default_dir(state_file: Path | None) -> Path:
    """Where `rungway up` keeps the trail unless told: beside its state file, else in the
    user's state directory ($XDG_STATE_HOME/rungway/audit)."""
    if state_file is not None:
        return state_file.resolve().parent / "audit"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rungway" / "audit"


def segment_name(chain: str, first_seq: int) -> str:
    return f"{chain}.{first_seq:012d}.jsonl"


def segments(directory: Path) -> dict[str, list[tuple[int, Path]]]:
    """Each chain's segment files in `directory`, in seq order."""
    out: dict[str, list[tuple[int, Path]]] = {}
    if not directory.is_dir():
        return out
    for path in directory.iterdir():
        match = _SEGMENT.match(path.name)
        if match:
            out.setdefault(match["chain"], []).append((int(match["seq"]), path))
    return {chain: sorted(files) for chain, files in sorted(out.items())}


def chain_lines(files: list[tuple[int, Path]]) -> list[Line]:
    return lines_of([(path.name, path.read_bytes()) for _, path in files])


def verify_dir(directory: Path, anchors: Mapping[str, Anchor] | None = None) -> dict[str, Verdict]:
    """Every chain in `directory`, verified (each against its anchor, if one is given); an
    anchored chain that is missing altogether is reported as deleted."""
    anchors = anchors or {}
    found = segments(directory)
    out: dict[str, Verdict] = {chain: verify(chain_lines(files), anchors.get(chain)) for chain, files in found.items()}
    for chain in anchors.keys() - found.keys():
        out[chain] = verify([], anchors[chain])
    return out


def read_records(directory: Path) -> Iterator[tuple[str, Record]]:
    """Every readable record in `directory`, chain by chain (unreadable lines are verify's)."""
    for chain, files in segments(directory).items():
        for line in chain_lines(files):
            if line.complete:
                with contextlib.suppress(RecordError):
                    yield chain, Record.parse(line.data)


class AuditLog:
    """One worker's chain in `directory`, written by a background thread (see the module)."""

    def __init__(
        self,
        directory: Path,
        chain: str,
        settings: AuditSettings,
        metrics: AuditMetrics | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", chain):
            raise AuditLogError(f"a chain name is letters, digits, - and _, not {chain!r}")
        self.directory = directory
        self.name = chain
        self.settings = settings
        self.metrics = metrics
        self._wall = wall
        # The queue: a deque (an append costs the event loop no lock) and one condition for
        # waking the writer, a submitter held back by a full queue, and flush() / sync().
        self._pending: deque[Entry] = deque()
        self._lock = threading.Condition()
        self._idle = False  # the writer waits for records
        self._stopping = False
        self._submitted = 0
        self._written = 0
        self._synced = 0
        self._chain = Chain()
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._segment = ""
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    # ---- opening ---------------------------------------------------------------------------

    def open(self) -> AuditLog:
        """Take the chain (an exclusive lock), repair a torn tail, and start the writer."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / f"{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditLogError(f"another process writes audit chain {self.name!r} in {self.directory}") from None
        files = segments(self.directory).get(self.name, [])
        first: list[Entry] = []
        if files:
            path = files[-1][1]
            torn, last = _tail(path)
            if torn:
                log.warning("audit chain %s: cut %d torn byte(s) from %s", self.name, len(torn), path.name)
                first.append(Entry.torn_tail(self._wall(), path.name, torn))
            if last is not None:
                self._chain = Chain.after(last)
            elif len(files) > 1 or files[-1][0] != 0:
                raise AuditLogError(f"audit segment {path.name} has no readable last record")
            self._open_segment(path)
        else:
            self._open_segment(self.directory / segment_name(self.name, 0))
        self._thread = threading.Thread(target=self._run, name=f"audit-{self.name}", daemon=True)
        self._thread.start()
        for entry in first:
            self.submit(entry)
        return self

    def _open_segment(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._segment = path.name
        _sync_dir(self.directory)  # the new file's name survives a power cut too

    # ---- the request side -------------------------------------------------------------------

    def submit(self, entry: Entry) -> None:
        """Queue `entry` for the writer; waits only when the queue is full (backpressure).
        One submitting thread (the worker's event loop)."""
        if len(self._pending) >= self.settings.queue_records:
            with self._lock:
                while len(self._pending) >= self.settings.queue_records and self._failed is None:
                    self._lock.wait(0.5)
        if self._failed is not None:
            # Fail closed: the effect's request fails (a sidecar error) rather than go unaudited.
            raise AuditLogError(f"the audit writer failed: {self._failed}")
        self._submitted += 1
        self._pending.append(entry)
        if self._idle:
            with self._lock:
                self._lock.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (the kernel has it)."""
        return self._wait(lambda: self._written >= self._submitted, timeout)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is on disk (fsynced)."""
        target = self._submitted
        return self._wait(lambda: self._synced >= target, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: done() or self._failed is not None, timeout) and self._failed is None

    def close(self) -> None:
        """Write and fsync everything queued, then stop the writer."""
        if self._thread is not None:
            with self._lock:
                self._stopping = True
                self._lock.notify_all()
            self._thread.join()
            self._thread = None
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "chain": self.name,
                "segment": self._segment,
                "records": self._chain.seq,
                "head": self._chain.head,
                "backlog_records": len(self._pending),
                "written": self._written,
                "synced": self._synced,
                "failed": str(self._failed) if self._failed else None,
            }

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.fsync_interval_s
        synced_at = time.monotonic()
        try:
            while True:
                with self._lock:
                    while not self._pending and not self._stopping:
                        timeout = None
                        if self._synced < self._written:
                            timeout = synced_at + interval - time.monotonic()
                            if timeout <= 0:
                                break  # what was written is due to be fsynced
                        self._idle = True
                        self._lock.wait(timeout)
                        self._idle = False
                    stop = self._stopping
                batch: list[Entry] = []
                while self._pending and len(batch) < _BATCH:
                    batch.append(self._pending.popleft())
                if batch:
                    self._write(batch)
                if self.metrics is not None:
                    self.metrics.backlog.set(len(self._pending))
                stop = stop and not self._pending
                if stop or time.monotonic() - synced_at >= interval:
                    self._fsync()
                    synced_at = time.monotonic()
                if stop:
                    return
        except BaseException as exc:  # a full disk, an I/O error: loud, and no silent drops
            log.exception("audit chain %s: the writer failed", self.name)
            with self._lock:
                self._failed = exc
                self._lock.notify_all()

    def _write(self, entries: list[Entry], *, own: bool = False) -> None:
        """Chain and append `entries`, starting the next segment wherever one fills up."""
        lines: list[bytes] = []
        size = 0
        for i, e in enumerate(entries, start=1):
            line = self._chain.append(e).line()
            lines.append(line)
            size += len(line)
            if self._size + size >= self.settings.segment_bytes:
                self._append(lines, entries[i - len(lines) : i], own)
                lines, size = [], 0
                self._rotate()
        if lines:
            self._append(lines, entries[len(entries) - len(lines) :], own)

    def _append(self, lines: list[bytes], entries: list[Entry], own: bool) -> None:
        """Write `lines` (of `entries`); `own`: the writer's records, which nobody submitted."""
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        if self.metrics is not None:
            for kind, n in Tally(e.kind for e in entries).items():
                self.metrics.records.labels(kind.value).inc(n)
        with self._lock:
            self._written += 0 if own else len(entries)
            self._lock.notify_all()

    def _fsync(self) -> None:
        with self._lock:
            written = self._written
        if self._synced < written:
            os.fsync(self._fd)
        with self._lock:
            self._synced = written
            self._lock.notify_all()

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._open_segment(self.directory / segment_name(self.name, self._chain.seq))
        self._prune()

    def _prune(self) -> None:
        """Delete old segments as retention says, after recording it in the chain."""
        s = self.settings
        if s.max_age_s is None and s.max_bytes is None:
            return
        every = segments(self.directory).get(self.name, [])
        files = every[:-1]  # never the current segment
        total = sum(path.stat().st_size for _, path in files) + self._size
        now = self._wall()
        doomed: list[Path] = []
        kept_from = None
        for i, (_, path) in enumerate(files):
            stat = path.stat()
            too_old = s.max_age_s is not None and now - stat.st_mtime > s.max_age_s
            too_big = s.max_bytes is not None and total > s.max_bytes
            if not (too_old or too_big):
                break
            doomed.append(path)
            total -= stat.st_size
            kept_from = every[i + 1][0]
        if not doomed or kept_from is None:
            return
        self._write([Entry.retention(now, kept_from, len(doomed))], own=True)
        self._fsync()
        for path in doomed:
            path.unlink()
        _sync_dir(self.directory)
        log.info("audit chain %s: retention deleted %d segment(s) before seq %d", self.name, len(doomed), kept_from)


def _tail(path: Path) -> tuple[bytes, Record | None]:
    """Cut a torn last line off `path` (returned), and read its last whole record."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        span = 64 * 1024
        while True:
            start = max(0, size - span)
            f.seek(start)
            data = f.read()
            cut = data.rfind(b"\n")
            # Enough to hold the last whole line (or the file's start is in view).
            if start == 0 or data.rfind(b"\n", 0, cut) >= 0:
                break
            span *= 4
        torn = data[cut + 1 :]
        if torn:
            f.truncate(start + cut + 1)
            f.flush()
            os.fsync(f.fileno())
        whole = data[: cut + 1]
        if not whole:
            return torn, None
        last = whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1 :]
        try:
            return torn, Record.parse(last)
        except RecordError:
            raise AuditLogError(f"the last record of {path.name} is unreadable: run `rungway audit verify`") from None


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
