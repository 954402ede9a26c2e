"""Where a worker keeps the rungs' capacity ledger (routing/capacity.py): in its own memory, or,
under `rungway up`, in one file all the pod's workers share, so that limits and tenant shares
hold for the pod, whichever worker decides a request and whichever runs its try.

Envoy picks a worker per ext_proc stream (round robin), so a request's decide and its try
usually run in different workers: a per-worker ledger would count a reservation in one and the
try in another, and split every tenant's share into lumps (bench/ISOLATION.md measured a quiet
tenant at 77 % success alone with two workers). The shared file is read and rewritten whole
under an exclusive flock (a few tens of microseconds; only requests on a ladder with a limited
rung pay it). A worker that dies cannot free its tries: entries of processes no longer alive
are dropped, checked at most every `_REAP_EVERY_S`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from ..routing.capacity import Ledger

log = logging.getLogger("rungway.slots")
_REAP_EVERY_S: Final = 1.0


class LedgerStore(Protocol):
    def read(self, now: float) -> Ledger:
        """The ledger as it is now (a copy for a shared store: never written back)."""
        ...

    def change(self, now: float) -> contextlib.AbstractContextManager[Ledger]:
        """The ledger to run commands on; what they change is kept when the block ends."""
        ...


class LocalLedger:
    """One worker's own ledger (`rungway serve` alone, and tests)."""

    def __init__(self) -> None:
        self.ledger = Ledger()

    def read(self, now: float) -> Ledger:
        return self.ledger

    @contextlib.contextmanager
    def change(self, now: float) -> Iterator[Ledger]:
        yield self.ledger


class SharedLedger:
    """The pod's ledger in a file every worker opens (0600, in `rungway up`'s private directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._reaped_at = float("-inf")

    def close(self) -> None:
        self._file.close()

    def read(self, now: float) -> Ledger:
        with self._locked(fcntl.LOCK_SH):
            return self._load()

    @contextlib.contextmanager
    def change(self, now: float) -> Iterator[Ledger]:
        with self._locked(fcntl.LOCK_EX):
            ledger = self._load()
            if now - self._reaped_at >= _REAP_EVERY_S:
                self._reaped_at = now
                ledger.forget({owner for owner in ledger.owners() if _alive(owner)})
            yield ledger
            data = json.dumps(ledger.encode(now), separators=(",", ":")).encode()
            self._file.seek(0)
            self._file.write(data)
            self._file.truncate(len(data))

    @contextlib.contextmanager
    def _locked(self, kind: int) -> Iterator[None]:
        fcntl.flock(self._file.fileno(), kind)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def _load(self) -> Ledger:
        self._file.seek(0)
        data = self._file.read()
        if not data:
            return Ledger()
        try:
            return Ledger.decode(json.loads(data))
        except ValueError as exc:  # a foreign or broken file: start over rather than stop serving
            log.warning("capacity ledger %s unreadable, starting empty: %s", self.path, exc)
            return Ledger()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
