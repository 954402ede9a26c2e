"""Where a worker keeps the rungs' capacity ledger (routing/capacity.py): in its own memory, or,
under `rungway up`, in one file all the pod's workers share, so that limits and tenant shares
hold for the pod, whichever worker decides a request and whichever runs its try. The count of
requests held for an approval (routing/hold.py) is kept the same way, in a file of its own.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from ..routing.capacity import Ledger
from ..routing.hold import HeldCount

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


class _Shared(Protocol):
    """What a pod-shared state must offer its file: its workers (to reap the dead) and encoding."""

    def owners(self) -> set[int]: ...
    def forget(self, owners: set[int]) -> None: ...


S = TypeVar("S", bound=_Shared)


class _SharedFile(Generic[S]):
    """A pod's state in a file every worker opens (0600, in `rungway up`'s private directory),
    read and rewritten whole under a flock; the entries of workers no longer alive are dropped."""

    def __init__(
        self, path: Path, empty: Callable[[], S], decode: Callable[[Any], S], encode: Callable[[S, float], Any]
    ) -> None:
        self.path = path
        self._empty, self._decode, self._encode = empty, decode, encode
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._reaped_at = float("-inf")

    def close(self) -> None:
        self._file.close()

    def read(self, now: float) -> S:
        with self._locked(fcntl.LOCK_SH):
            return self._load()

    @contextlib.contextmanager
    def change(self, now: float) -> Iterator[S]:
        with self._locked(fcntl.LOCK_EX):
            state = self._load()
            if now - self._reaped_at >= _REAP_EVERY_S:
                self._reaped_at = now
                state.forget({owner for owner in state.owners() if _alive(owner)})
            yield state
            data = json.dumps(self._encode(state, now), separators=(",", ":")).encode()
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

    def _load(self) -> S:
        self._file.seek(0)
        data = self._file.read()
        if not data:
            return self._empty()
        try:
            return self._decode(json.loads(data))
        except ValueError as exc:  # a foreign or broken file: start over rather than stop serving
            log.warning("%s unreadable, starting empty: %s", self.path, exc)
            return self._empty()


class SharedLedger(_SharedFile[Ledger]):
    """The pod's capacity ledger."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Ledger, Ledger.decode, Ledger.encode)


class HoldStore(Protocol):
    """Where the requests held for an approval are counted (routing/hold.py's HeldCount)."""

    def read(self, now: float) -> HeldCount: ...
    def change(self, now: float) -> contextlib.AbstractContextManager[HeldCount]: ...


class LocalHolds:
    """One worker's own count (`rungway serve` alone, and tests)."""

    def __init__(self) -> None:
        self.count = HeldCount()

    def read(self, now: float) -> HeldCount:
        return self.count

    @contextlib.contextmanager
    def change(self, now: float) -> Iterator[HeldCount]:
        yield self.count


class SharedHolds(_SharedFile[HeldCount]):
    """The pod's count of held requests: `approval_max_held` is the pod's, whichever worker holds."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, HeldCount, HeldCount.decode, lambda held, now: held.encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
