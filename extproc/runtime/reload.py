"""Policy hot reload's I/O under `rungway up`: noticing an edit to the policy file or directory,
replacing files atomically, and the record of every reload (counted, last outcome, last error).

The order a reload follows (runtime/supervisor.py) is what keeps every request on one revision:
Envoy's resources first (the new revision's clusters and relay routes added, the previous
revisions' kept), then the workers (decide uses the new revision from its next request; a try of
a request decided earlier finds its own revision in the worker's history).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..policy import History, PolicyReloaded, ReloadOutcome

log = logging.getLogger("rungway.policy")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def source_fingerprint(path: Path) -> Fingerprint:
    """What changes when a policy file or any file of a policy directory is written, added,
    removed or renamed (inode, mtime, size); an unreadable source is an empty fingerprint."""
    try:
        paths = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
        return tuple((str(p), (st := p.stat()).st_ino, st.st_mtime_ns, st.st_size) for p in paths)
    except OSError:
        return ()


def written_at(fingerprint: Fingerprint) -> float | None:
    """When the newest file of the source was written."""
    newest = max((mtime for _, _, mtime, _ in fingerprint), default=None)
    return newest / 1e9 if newest is not None else None


def revision_file(socket_path: Path) -> Path:
    """Where a worker under `rungway up` says which revision it serves (its reload's ack)."""
    return socket_path.with_name(socket_path.name + ".revision")


class HandedPolicy:
    """A worker's side of `rungway up`'s hand-over: the history file the supervisor replaces on
    every reload, and the file where the worker says which revision it serves (its ack)."""

    def __init__(self, history_file: Path, socket_path: Path) -> None:
        self.history_file = history_file
        self.ack = revision_file(socket_path)
        self._seen: tuple[int, int] | None = None

    def changed(self) -> History | None:
        """The history, if the file changed since the last call; raises OSError, PolicyError."""
        st = self.history_file.stat()
        if (st.st_ino, st.st_mtime_ns) == self._seen:
            return None
        history = History.decode(self.history_file.read_text())
        self._seen = (st.st_ino, st.st_mtime_ns)
        return history

    def serving(self, stamp: str) -> None:
        write_atomically(self.ack, stamp)


def write_atomically(path: Path, text: str, tmp_dir: Path | None = None) -> None:
    """Readers see the old content or the new, never half: written in `tmp_dir` (same file
    system; outside a directory Envoy watches), then renamed into place."""
    tmp = (tmp_dir or path.parent) / f".{path.parent.name}.{path.name}.tmp"
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)")


def _shown(event: PolicyReloaded | None) -> dict[str, object] | None:
    """An event with every absolute path cut to its last part (`/etc/rungway/policy` → `policy`)."""
    if event is None:
        return None
    out = event.to_dict()
    out["source"] = _PATH.sub(r"\1", event.source)
    out["problems"] = [_PATH.sub(r"\1", p) for p in event.problems]
    return out


class PolicyReloads(Collector):
    """Every reload's outcome: rungway_policy_reloads_total{outcome}, the last one and the last
    error (for /status), and one log line each: the audit trail's hook."""

    def __init__(self) -> None:
        self.counts = {outcome: 0 for outcome in ReloadOutcome}
        self.last: PolicyReloaded | None = None
        self.last_error: PolicyReloaded | None = None

    def record(self, event: PolicyReloaded) -> None:
        self.counts[event.outcome] += 1
        self.last = event
        if event.outcome is ReloadOutcome.REJECTED:
            self.last_error = event
            log.error("policy reload rejected, %s still serves: %s", event.old, json.dumps(event.to_dict()))
        elif event.outcome is ReloadOutcome.APPLIED:
            self.last_error = None
            log.info("policy reload applied, %s → %s: %s", event.old, event.new, json.dumps(event.to_dict()))
        else:
            log.info("policy reload: content unchanged: %s", json.dumps(event.to_dict()))

    def snapshot(self) -> dict[str, object]:
        """For /status, which names no filesystem path (the log line has the full record)."""
        return {
            "reloads": {outcome.value: n for outcome, n in self.counts.items()},
            "last_reload": _shown(self.last),
            # Cleared by the next applied reload: while set, the files on disk are not what serves.
            "error": _shown(self.last_error),
        }

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "rungway_policy_reloads", "Policy reloads by outcome (applied, unchanged, rejected).", labels=["outcome"]
        )
        for outcome, n in self.counts.items():
            family.add_metric([outcome.value], float(n))
        yield family
