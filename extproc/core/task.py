"""A deferred request and its answer: the records that cross from the worker that accepted a
request (202) to the store, and from the store to the pod's drainer that replays it.

Both are stored as a JSON header (one encode/decode pair, versioned, strict) beside the body
bytes. Decoding raises ContractError on anything missing, mistyped or of another version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .dialect import Dialect
from .fields import ContractError
from .impact import Impact

TASK_VERSION = 1
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DeferredTask:
    """A request accepted for later: everything a replay through Envoy needs, and nothing of the
    client's credentials (the replay is authenticated as Rungway, on the tenant's behalf)."""

    id: str
    tenant: str
    task: str
    impact: Impact
    dialect: Dialect  # the client's
    path: str
    model: str
    headers: Headers  # what the replay must carry again (anthropic-version, anthropic-beta)
    body: bytes
    accepted_at: float  # wall clock
    # An escalated request a person decided on (E2): its replay is never escalated again, and a
    # redirect pins it to one rung of its ladder.
    reviewed: bool = False
    pin: int | None = None

    def encode(self) -> str:
        extra: dict[str, object] = {}
        if self.reviewed:
            extra["reviewed"] = True
        if self.pin is not None:
            extra["pin"] = self.pin
        return json.dumps(
            {
                **extra,
                "v": TASK_VERSION,
                "id": self.id,
                "tenant": self.tenant,
                "task": self.task,
                "impact": self.impact.value,
                "dialect": self.dialect.value,
                "path": self.path,
                "model": self.model,
                "headers": [list(h) for h in self.headers],
                "accepted_at": self.accepted_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str, body: bytes) -> DeferredTask:
        raw = json_record(text, TASK_VERSION)
        try:
            return cls(
                id=_str(raw, "id"),
                tenant=_str(raw, "tenant"),
                task=_str(raw, "task"),
                impact=Impact(_str(raw, "impact")),
                dialect=Dialect(_str(raw, "dialect")),
                path=_str(raw, "path"),
                model=_str(raw, "model"),
                headers=_headers(raw),
                body=body,
                accepted_at=_number(raw, "accepted_at"),
                reviewed=_optional_flag(raw, "reviewed"),
                pin=_optional_index(raw, "pin"),
            )
        except ValueError as exc:
            raise ContractError(f"deferred task: {exc}") from None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The answer a replay got, kept for the client to fetch (status, Rungway's flags, body)."""

    status: int
    headers: Headers
    body: bytes
    finished_at: float

    def encode(self) -> str:
        return json.dumps(
            {
                "v": TASK_VERSION,
                "status": self.status,
                "headers": [list(h) for h in self.headers],
                "finished_at": self.finished_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str, body: bytes) -> TaskResult:
        raw = json_record(text, TASK_VERSION)
        status = raw.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ContractError(f"task result.status: {status!r} is not an HTTP status")
        return cls(status, _headers(raw), body, _number(raw, "finished_at"))


def json_record(text: str, version: int, kind: str = "task record") -> dict[str, Any]:
    """A stored record's JSON object, of `version` (the stores' records: tasks, escalations)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ContractError(f"{kind}: not JSON") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{kind}: not an object")
    if raw.get("v") != version:
        raise ContractError(f"{kind}: version {raw.get('v')!r}, expected {version}")
    return raw


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ContractError(f"task record.{key}: {value!r} is not a string")
    return value


def _number(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ContractError(f"task record.{key}: {value!r} is not a number")
    return float(value)


def _optional_flag(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ContractError(f"task record.{key}: {value!r} is not true or false")
    return value


def _optional_index(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ContractError(f"task record.{key}: {value!r} is not a rung index")
    return value


def _headers(raw: dict[str, Any]) -> Headers:
    value = raw.get("headers")
    if not isinstance(value, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h) for h in value
    ):
        raise ContractError(f"task record.headers: {value!r} is not a list of name/value pairs")
    return tuple((h[0], h[1]) for h in value)
