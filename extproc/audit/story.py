"""Records as a person reads them (`rungway audit show`), and which records a query selects."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..core import Failure
from .record import Entry, Kind, Record, RungRef


def selected(
    records: Iterable[tuple[str, Record]], *, tenant: str | None, since: float | None
) -> list[tuple[str, Record]]:
    """The (chain, record) pairs of `tenant` (any when None) at or after wall time `since`,
    oldest first."""
    out = [
        (chain, r)
        for chain, r in records
        if (tenant is None or r.entry.tenant == tenant) and (since is None or r.entry.at >= since)
    ]
    return sorted(out, key=lambda pair: (pair[1].entry.at, pair[0], pair[1].seq))


def _rung(ref: RungRef | None) -> str:
    return f"{ref.provider}/{ref.model} (tier {ref.tier})" if ref else "?"


def sentence(entry: Entry) -> str:
    src, dst, why = _rung(entry.source), _rung(entry.target), entry.trigger or "unknown"
    match entry.kind:
        case Kind.TRIP:
            return f"a try on {src} failed: {why}"
        case Kind.HOP:
            return f"hopped from {src} to {dst} ({why})"
        case Kind.TIER_CHANGE if why == "recovered":
            return f"served by {dst} again, back from tier {entry.detail.get('from_tier', '?')}"
        case Kind.RERUN:
            same = "the same text" if entry.detail.get("same_text") else "a different text"
            changed = entry.detail.get("changes") or "nothing else"
            return f"re-run on {dst} after recovery: {same} than {src}'s, changed {changed} (review {entry.detail.get('review', '?')})"
        case Kind.TIER_CHANGE:
            tokens = f", {entry.tokens} output tokens" if entry.tokens is not None else ""
            return f"served by {dst} instead of {src} ({why}{tokens})"
        case Kind.RESCUE:
            return f"stream cut on {src}; rescue by {dst}: {entry.detail.get('outcome', '?')}"
        case Kind.TOOL_MODE:
            return f"{dst} got no {entry.detail.get('removed', '?')} (tool mode {why})"
        case Kind.TRIM:
            return f"{entry.detail.get('messages', '?')} earlier message(s) left out to fit {dst}"
        case Kind.REFUSED:
            return f"refused: no permitted rung ({why}): {entry.detail.get('message', '')}"
        case Kind.EXHAUSTED:
            return f"no rung could serve it; the client got {why}"
        case Kind.POLICY_RELOAD:
            return f"policy {entry.detail.get('previous', '?')} → {entry.policy} ({why})"
        case Kind.DEFERRAL:
            task = entry.detail.get("task_id", "")
            if why in ("accepted", "full", "unavailable"):
                reason = entry.detail.get("reason", "?")
                return f"deferred ({reason}): {why}" + (f", task {task}" if why == "accepted" else "")
            if why == "expired":
                return f"{entry.detail.get('tasks', '?')} deferred task(s) expired unanswered"
            if why == "escalation_expired":
                return f"{entry.detail.get('tasks', '?')} escalated task(s) expired without a person's decision"
            return f"deferred task {task} replayed: {why} (HTTP {entry.detail.get('status', '?')})"
        case Kind.APPROVAL:
            scope = f"task {entry.task}" if entry.task else "every task"
            tier = entry.detail.get("tier", "?")
            return f"approval to serve down to tier {tier} for {scope} {why} (by {entry.detail.get('by', '?')})"
        case Kind.TORN_TAIL:
            return f"the writer cut {entry.detail.get('torn_bytes')} torn byte(s) from {entry.detail.get('segment')}"
        case Kind.RETENTION:
            return f"retention deleted {entry.detail.get('segments')} segment(s) before seq {entry.detail.get('pruned_before')}"
        case Kind.ESCALATED:
            return f"answer of {dst} held for a person ({why}): task {entry.detail.get('task_id', '?')}"
        case Kind.APPROVED:
            return f"task {entry.detail.get('task_id', '?')} approved by {entry.detail.get('by', '?')} ({why})"
        case Kind.REDIRECTED:
            return f"task {entry.detail.get('task_id', '?')} redirected to {dst} by {entry.detail.get('by', '?')}"
        case Kind.REJECTED:
            return f"task {entry.detail.get('task_id', '?')} rejected by {entry.detail.get('by', '?')}"


def line(record: Record) -> str:
    """One line of the story: when, who, what, which request."""
    e = record.entry
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at)) + f".{int(e.at * 1000) % 1000:03d}Z"
    who = f"{e.tenant}/{e.task}" if e.tenant else "-"
    request = f"  [request {e.request_id[:12]} prompt {e.prompt_hash[:12]}]" if e.request_id else ""
    policy = f" policy {e.policy}" if e.policy else ""
    return f"{when} {who:<24} {e.kind.value:<12} {sentence(e)}{policy}{request}"


def incident_trips(entries: Iterable[Entry], request_id: str) -> list[tuple[int, Failure]]:
    """One request's failed tries from its records, in the order they happened: (rung, failure
    class). What a drill fixture stages again to replay the incident (drills.fixture_from_incident)."""
    trips = sorted((e for e in entries if e.request_id == request_id and e.kind is Kind.TRIP), key=lambda e: e.at)
    out: list[tuple[int, Failure]] = []
    for e in trips:
        if e.source is None:
            continue
        try:
            out.append((e.source.rung, Failure(e.trigger)))
        except ValueError:
            continue  # a trigger that is not a failure class stages nothing
    return out
