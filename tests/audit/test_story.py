"""One request's story from the trail: its failed tries, in order, as a drill replays them."""

from __future__ import annotations

from extproc.audit import Entry, Kind, RungRef, incident_trips, sentence
from extproc.core import Failure

PRIMARY = RungRef("main", 0, "primary", "gpt-4o", 0)
SECOND = RungRef("main", 1, "secondary", "claude", 1)


def test_an_incidents_trips_come_in_the_order_they_happened_and_only_its_own() -> None:
    entries = [
        Entry(3.0, Kind.TRIP, trigger="timeout", source=SECOND, request_id="r1"),
        Entry(1.0, Kind.TRIP, trigger="server_error", source=PRIMARY, request_id="r1"),
        Entry(2.0, Kind.HOP, trigger="server_error", source=PRIMARY, target=SECOND, request_id="r1"),
        Entry(1.5, Kind.TRIP, trigger="rate_limited", source=PRIMARY, request_id="r2"),
        Entry(4.0, Kind.TRIP, trigger="not-a-failure", source=SECOND, request_id="r1"),
    ]
    assert incident_trips(entries, "r1") == [(0, Failure.SERVER_ERROR), (1, Failure.TIMEOUT)]
    assert incident_trips(entries, "unknown") == []


def test_deferrals_and_approvals_read_as_sentences() -> None:
    accepted = Entry(
        1.0, Kind.DEFERRAL, "acme", "batch", "accepted", detail={"task_id": "task_x", "reason": "not_permitted"}
    )
    assert sentence(accepted) == "deferred (not_permitted): accepted, task task_x"
    full = Entry(1.0, Kind.DEFERRAL, "acme", "batch", "full", detail={"task_id": "task_y", "reason": "not_permitted"})
    assert sentence(full) == "deferred (not_permitted): full"
    answered = Entry.deferral_outcome(2.0, "acme", "batch", "answered", {"task_id": "task_x", "status": 200})
    assert sentence(answered) == "deferred task task_x replayed: answered (HTTP 200)"
    assert sentence(Entry.deferral_outcome(3.0, "acme", "", "expired", {"tasks": 2})) == (
        "2 deferred task(s) expired unanswered"
    )
    granted = Entry.approval(4.0, "granted", "clinic", None, {"tier": 2, "until": 9.0, "by": "ops"})
    assert sentence(granted) == "approval to serve down to tier 2 for every task granted (by ops)"
    revoked = Entry.approval(5.0, "revoked", "clinic", "summarize", {"tier": 3, "until": 9.0, "by": "ops"})
    assert sentence(revoked) == "approval to serve down to tier 3 for task summarize revoked (by ops)"
