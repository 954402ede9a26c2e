"""Small state files that people edit with a command and workers follow (the client key store,
approvals): replaced atomically (a reader sees the old file or the new one, never half), edited
under a lock (two commands at once never write back what the other just removed), and re-read
by each worker when they change — a broken rewrite never replaces the last good value."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("rungway.state")


def read_text(path: Path, error: type[Exception], what: str) -> str | None:
    """The file's text; None when it does not exist yet (an empty state); `error` naming `what`
    when it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read the {what} {path}: {exc.strerror}") from None


def write_atomic(path: Path, text: str) -> None:
    """Replace the file at `path` with `text`, 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def editing(path: Path) -> Iterator[None]:
    """One editor of the file at a time (a lock file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class WatchedFile(Generic[T]):
    """A state file's value as last read well. `read` raises `error` for a broken file: at
    construction that stops the start; on refresh the last good value stays (logged)."""

    def __init__(self, path: Path, read: Callable[[Path], T], error: type[Exception], what: str) -> None:
        self.path = path
        self._read = read
        self._error = error
        self._what = what
        self._stamp = _stamp(path)
        self.value: T = read(path)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when a new value was taken."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self._read(self.path)
        except self._error as exc:
            log.error("%s not reloaded, the last good one stays: %s", self._what, exc)
            return False
        self.value = value
        log.info("%s reloaded", self._what)
        return True
