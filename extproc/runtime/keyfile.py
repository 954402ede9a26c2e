"""The client key store on disk: read at start (a broken store stops the start), then re-read
when the file changes, so a new key works and a revoked one stops within a second, without a
restart. A broken rewrite never replaces the last good store."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from ..identity import ID_BYTES, SECRET_BYTES, ClientKey, KeyStore, KeyStoreError, issue
from .statefile import WatchedFile, editing, read_text, write_atomic


def read_store(path: Path) -> KeyStore:
    """The store at `path` (an absent file is an empty store); KeyStoreError if unreadable."""
    text = read_text(path, KeyStoreError, "key store")
    return KeyStore() if text is None else KeyStore.parse(text)


def write_store(path: Path, store: KeyStore) -> None:
    """Replace the store atomically (a reader sees the old or the new file, never half), 0600."""
    write_atomic(path, store.encode())


def add_key(path: Path, tenant: str, *, expires: float | None = None, label: str = "") -> tuple[str, ClientKey]:
    """Issue a key for `tenant` into the store at `path` (`rungway keys new`): the key, shown
    only now, and its stored record."""
    plaintext, key = issue(
        tenant, time.time(), secrets.token_bytes(ID_BYTES + SECRET_BYTES), expires=expires, label=label
    )
    with editing(path):
        write_store(path, read_store(path).with_key(key))
    return plaintext, key


def revoke_key(path: Path, key_id: str) -> None:
    """Remove a key from the store (`rungway keys revoke`); KeyStoreError if there is none."""
    with editing(path):
        write_store(path, read_store(path).without(key_id))


class KeyFile(WatchedFile[KeyStore]):
    """The key store as workers follow it (`value`), re-read within a second of a change."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, read_store, KeyStoreError, "key store")
