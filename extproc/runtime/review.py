"""The review store (E3): degraded answers kept for their tier-0 re-run, and what the re-run
gave. The `ReviewStore` interface, an in-memory implementation, and the SQLite one the pod's
workers (which keep answers) and `rungway up` (which re-runs them and answers the admin API)
share.

A runtime/durable.py file on the pod's local disk (it holds prompts and answers in clear; the
audit trail names them by hash only). Each command's one transaction checks the review's state
against review's transition table, so two re-runners claiming or finishing one review serialise
and exactly one wins. Calls block (fsync): the asyncio shells run them in a thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..core import DegradedAnswer
from ..review import AnswerDiff, ReviewState
from ..review.lifecycle import check
from .durable import DurableFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    kept_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    request BLOB NOT NULL,
    answer BLOB NOT NULL,
    rerun TEXT,
    rerun_answer BLOB
);
CREATE INDEX IF NOT EXISTS reviews_by_state ON reviews (state, kept_at);
CREATE INDEX IF NOT EXISTS reviews_by_tenant ON reviews (tenant, kept_at);
"""


@dataclass(frozen=True, slots=True)
class Rerun:
    """The tier-0 re-run's answer, and how it differs from the degraded one."""

    served_by: str  # provider/model of the tier-0 rung
    answer: bytes  # its body, in the client's dialect
    diff: AnswerDiff
    at: float

    def encode(self) -> str:
        return json.dumps({"served_by": self.served_by, "diff": self.diff.encode(), "at": self.at})

    @classmethod
    def decode(cls, text: str, answer: bytes) -> Rerun:
        raw = json.loads(text)
        return cls(str(raw["served_by"]), answer, AnswerDiff.decode(raw["diff"]), float(raw["at"]))


@dataclass(frozen=True, slots=True)
class ReviewView:
    item: DegradedAnswer
    state: ReviewState
    attempts: int  # re-runs started
    rerun: Rerun | None


class ReviewStore(Protocol):
    """What the workers (keep) and `rungway up` (the rest) need of a store. The contract suite
    (tests/runtime/test_review_store.py) runs over every implementation."""

    def keep(self, item: DegradedAnswer, max_per_tenant: int) -> bool: ...
    def rerunnable(self, now: float, limit: int) -> list[DegradedAnswer]: ...
    def claim(self, review_id: str, now: float, lease_s: float) -> DegradedAnswer | None: ...
    def retry(self, review_id: str, not_before: float) -> None: ...
    def finish(self, review_id: str, rerun: Rerun) -> bool: ...
    def sweep(self, now: float, ttl_s: float) -> list[str]: ...
    def select(self, tenant: str | None, since: float | None, limit: int) -> list[ReviewView]: ...
    def get(self, review_id: str) -> ReviewView | None: ...
    def counts(self) -> dict[ReviewState, int]: ...


def _due(state: ReviewState, not_before: float, lease_until: float, now: float) -> bool:
    if state is ReviewState.PENDING:
        return not_before <= now
    return state is ReviewState.RERUNNING and lease_until <= now  # a lapsed lease


class MemoryReviewStore:
    """In memory (tests, and a `rungway serve` without `rungway up`): the same rules, no disk."""

    def __init__(self) -> None:
        # id → [view, lease_until, not_before]
        self._rows: dict[str, tuple[ReviewView, float, float]] = {}
        self._lock = threading.Lock()

    def keep(self, item: DegradedAnswer, max_per_tenant: int) -> bool:
        with self._lock:
            if item.id in self._rows:
                return True
            if sum(1 for v, _, _ in self._rows.values() if v.item.tenant == item.tenant) >= max_per_tenant:
                return False
            self._rows[item.id] = (ReviewView(item, ReviewState.PENDING, 0, None), 0.0, 0.0)
            return True

    def rerunnable(self, now: float, limit: int) -> list[DegradedAnswer]:
        with self._lock:
            found = [v.item for v, lease, nb in self._rows.values() if _due(v.state, nb, lease, now)]
        return sorted(found, key=lambda i: (i.kept_at, i.id))[:limit]

    def claim(self, review_id: str, now: float, lease_s: float) -> DegradedAnswer | None:
        with self._lock:
            row = self._rows.get(review_id)
            if row is None or not _due(row[0].state, row[2], row[1], now):
                return None
            view = row[0]
            if view.state is not ReviewState.RERUNNING:
                check(view.state, ReviewState.RERUNNING)
            self._rows[review_id] = (
                replace(view, state=ReviewState.RERUNNING, attempts=view.attempts + 1),
                now + lease_s,
                row[2],
            )
            return view.item

    def retry(self, review_id: str, not_before: float) -> None:
        with self._lock:
            row = self._rows.get(review_id)
            if row is not None and row[0].state is ReviewState.RERUNNING:
                check(row[0].state, ReviewState.PENDING)
                self._rows[review_id] = (replace(row[0], state=ReviewState.PENDING), 0.0, not_before)

    def finish(self, review_id: str, rerun: Rerun) -> bool:
        with self._lock:
            row = self._rows.get(review_id)
            if row is None or row[0].state is ReviewState.DONE:
                return False
            check(row[0].state, ReviewState.DONE)
            self._rows[review_id] = (replace(row[0], state=ReviewState.DONE, rerun=rerun), 0.0, 0.0)
            return True

    def sweep(self, now: float, ttl_s: float) -> list[str]:
        with self._lock:
            old = [k for k, (v, _, _) in self._rows.items() if v.item.kept_at <= now - ttl_s]
            expired = [self._rows[k][0].item.tenant for k in old if self._rows[k][0].state is not ReviewState.DONE]
            for k in old:
                del self._rows[k]
        return expired

    def select(self, tenant: str | None, since: float | None, limit: int) -> list[ReviewView]:
        with self._lock:
            views = [
                v
                for v, _, _ in self._rows.values()
                if (tenant is None or v.item.tenant == tenant) and (since is None or v.item.kept_at >= since)
            ]
        return sorted(views, key=lambda v: (v.item.kept_at, v.item.id))[-limit:] if limit > 0 else []

    def get(self, review_id: str) -> ReviewView | None:
        with self._lock:
            row = self._rows.get(review_id)
        return row[0] if row is not None else None

    def counts(self) -> dict[ReviewState, int]:
        out = dict.fromkeys(ReviewState, 0)
        with self._lock:
            for v, _, _ in self._rows.values():
                out[v.state] += 1
        return out


class SqliteReviewStore:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self._file = DurableFile(path, _SCHEMA, busy_timeout_s)
        self._db, self._lock = self._file.db, self._file.lock

    def close(self) -> None:
        self._file.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.write()

    def _state(self, db: sqlite3.Connection, review_id: str) -> tuple[ReviewState, float, float] | None:
        row = db.execute("SELECT state, not_before, lease_until FROM reviews WHERE id = ?", (review_id,)).fetchone()
        return (ReviewState(row[0]), row[1], row[2]) if row is not None else None

    # ---- commands ----------------------------------------------------------------------------

    def keep(self, item: DegradedAnswer, max_per_tenant: int) -> bool:
        with self._write() as db:
            if db.execute("SELECT 1 FROM reviews WHERE id = ?", (item.id,)).fetchone() is not None:
                return True
            kept = db.execute("SELECT count(*) FROM reviews WHERE tenant = ?", (item.tenant,)).fetchone()[0]
            if kept >= max_per_tenant:
                return False
            db.execute(
                "INSERT INTO reviews (id, tenant, state, kept_at, record, request, answer) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.tenant,
                    ReviewState.PENDING.value,
                    item.kept_at,
                    item.encode(),
                    item.request,
                    item.answer,
                ),
            )
            return True

    def rerunnable(self, now: float, limit: int) -> list[DegradedAnswer]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record, request, answer FROM reviews"
                " WHERE (state = ? AND not_before <= ?) OR (state = ? AND lease_until <= ?)"
                " ORDER BY kept_at, id LIMIT ?",
                (ReviewState.PENDING.value, now, ReviewState.RERUNNING.value, now, limit),
            ).fetchall()
        return [DegradedAnswer.decode(*row) for row in rows]

    def claim(self, review_id: str, now: float, lease_s: float) -> DegradedAnswer | None:
        with self._write() as db:
            found = self._state(db, review_id)
            if found is None or not _due(found[0], found[1], found[2], now):
                return None
            if found[0] is not ReviewState.RERUNNING:
                check(found[0], ReviewState.RERUNNING)
            db.execute(
                "UPDATE reviews SET state = ?, attempts = attempts + 1, lease_until = ? WHERE id = ?",
                (ReviewState.RERUNNING.value, now + lease_s, review_id),
            )
            row = db.execute("SELECT record, request, answer FROM reviews WHERE id = ?", (review_id,)).fetchone()
        return DegradedAnswer.decode(*row)

    def retry(self, review_id: str, not_before: float) -> None:
        with self._write() as db:
            found = self._state(db, review_id)
            if found is not None and found[0] is ReviewState.RERUNNING:
                check(found[0], ReviewState.PENDING)
                db.execute(
                    "UPDATE reviews SET state = ?, not_before = ?, lease_until = 0 WHERE id = ?",
                    (ReviewState.PENDING.value, not_before, review_id),
                )

    def finish(self, review_id: str, rerun: Rerun) -> bool:
        with self._write() as db:
            found = self._state(db, review_id)
            if found is None or found[0] is ReviewState.DONE:
                return False
            check(found[0], ReviewState.DONE)
            db.execute(
                "UPDATE reviews SET state = ?, rerun = ?, rerun_answer = ? WHERE id = ?",
                (ReviewState.DONE.value, rerun.encode(), rerun.answer, review_id),
            )
            return True

    def sweep(self, now: float, ttl_s: float) -> list[str]:
        with self._write() as db:
            expired = [
                row[0]
                for row in db.execute(
                    "SELECT tenant FROM reviews WHERE state != ? AND kept_at <= ?",
                    (ReviewState.DONE.value, now - ttl_s),
                )
            ]
            db.execute("DELETE FROM reviews WHERE kept_at <= ?", (now - ttl_s,))
        return expired

    # ---- queries -----------------------------------------------------------------------------

    def select(self, tenant: str | None, since: float | None, limit: int) -> list[ReviewView]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM (SELECT record, request, answer, state, attempts, rerun, rerun_answer, kept_at, id"
                " FROM reviews WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR kept_at >= ?)"
                " ORDER BY kept_at DESC, id DESC LIMIT ?) ORDER BY kept_at, id",
                (tenant, tenant, since, since, max(limit, 0)),
            ).fetchall()
        return [_view(row) for row in rows]

    def get(self, review_id: str) -> ReviewView | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record, request, answer, state, attempts, rerun, rerun_answer FROM reviews WHERE id = ?",
                (review_id,),
            ).fetchone()
        return _view(row) if row is not None else None

    def counts(self) -> dict[ReviewState, int]:
        out = dict.fromkeys(ReviewState, 0)
        with self._lock:
            for state, n in self._db.execute("SELECT state, count(*) FROM reviews GROUP BY state"):
                out[ReviewState(state)] = int(n)
        return out


def _view(row: tuple[object, ...]) -> ReviewView:
    record, request, answer, state, attempts, rerun, rerun_answer = row[:7]
    assert isinstance(record, str) and isinstance(request, bytes) and isinstance(answer, bytes)
    assert isinstance(state, str) and isinstance(attempts, int)
    done = Rerun.decode(rerun, rerun_answer) if isinstance(rerun, str) and isinstance(rerun_answer, bytes) else None
    return ReviewView(DegradedAnswer.decode(record, request, answer), ReviewState(state), attempts, done)


def summary(view: ReviewView) -> dict[str, object]:
    """A review as `GET /reviews` lists it: who, when, which rungs, whether they differ — no text."""
    item, rerun = view.item, view.rerun
    return {
        "id": item.id,
        "tenant": item.tenant,
        "task": item.task,
        "state": view.state.value,
        "kept_at": item.kept_at,
        "served_by": item.served_by,
        "tier": item.tier,
        "reason": item.reason,
        "attempts": view.attempts,
        "request_id": item.request_id,
        "prompt_hash": item.prompt_hash,
        "rerun_by": rerun.served_by if rerun else None,
        "rerun_at": rerun.at if rerun else None,
        "same_text": rerun.diff.same_text if rerun else None,
        "changes": [c.field for c in rerun.diff.changes] if rerun else None,
        "similarity": rerun.diff.similarity if rerun else None,
    }


def detail(view: ReviewView) -> dict[str, object]:
    """A review as `GET /reviews/<id>` shows it: the summary, the request, both answers (JSON
    when they are JSON, else text) and the diff."""
    rerun = view.rerun
    return {
        **summary(view),
        "policy": view.item.policy,
        "request": _readable(view.item.request),
        "degraded_answer": _readable(view.item.answer),
        "rerun_answer": _readable(rerun.answer) if rerun else None,
        "diff": rerun.diff.encode() if rerun else None,
    }


def _readable(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")
