"""A durable SQLite file a store keeps its rows in (the deferral queue, escalations, reviews).

WAL with `synchronous=FULL`, so a COMMIT has been fsynced before it returns: what a store
acknowledged survives `kill -9` and a power cut. The file is created 0600 (it holds prompts in
clear; the WAL files inherit the mode). One connection, shared by the store's threads under a
lock; every command is one `BEGIN IMMEDIATE` transaction (`write`), rolled back whole on error."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DurableFile:
    def __init__(self, path: Path, schema: str, busy_timeout_s: float = 30.0) -> None:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self.db.executescript(schema)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (fsynced) when the block ends, rolled back if it raises."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
