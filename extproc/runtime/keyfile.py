"""The client key store on disk: read at start (a broken store stops the start), then re-read
when the file changes, so a new key works and a revoked one stops within a second, without a
restart. A broken rewrite never replaces the last good store."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..identity import ID_BYTES, SECRET_BYTES, ClientKey, KeyStore, KeyStoreError, issue

log = logging.getLogger("rungway.keys")


def read_store(path: Path) -> KeyStore:
    """The store at `path` (an absent file is an empty store); KeyStoreError if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return KeyStore()
    except OSError as exc:
        raise KeyStoreError(f"cannot read the key store {path}: {exc.strerror}") from None
    return KeyStore.parse(text)


def write_store(path: Path, store: KeyStore) -> None:
    """Replace the store atomically (a reader sees the old or the new file, never half), 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(store.encode())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[None]:
    """One editor of the store at a time (a lock file beside it): two `rungway keys` commands
    at once must not write back a key the other just revoked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add_key(path: Path, tenant: str, *, expires: float | None = None, label: str = "") -> tuple[str, ClientKey]:
    """Issue a key for `tenant` into the store at `path` (`rungway keys new`): the key, shown
    only now, and its stored record."""
    plaintext, key = issue(
        tenant, time.time(), secrets.token_bytes(ID_BYTES + SECRET_BYTES), expires=expires, label=label
    )
    with _editing(path):
        write_store(path, read_store(path).with_key(key))
    return plaintext, key


def revoke_key(path: Path, key_id: str) -> None:
    """Remove a key from the store (`rungway keys revoke`); KeyStoreError if there is none."""
    with _editing(path):
        write_store(path, read_store(path).without(key_id))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class KeyFile:
    path: Path
    store: KeyStore = field(init=False)
    _stamp: tuple[int, int, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._stamp = _stamp(self.path)
        self.store = read_store(self.path)

    def refresh(self) -> bool:
        """Re-read the store if the file changed; True when a new store was taken."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            store = read_store(self.path)
        except KeyStoreError as exc:
            log.error("key store not reloaded, the last good one stays: %s", exc)
            return False
        self.store = store
        log.info("key store reloaded: %d key(s)", len(store.keys))
        return True
