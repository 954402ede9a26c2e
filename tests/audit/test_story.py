"""One request's story from the trail: its failed tries, in order, as a drill replays them."""

from __future__ import annotations

from extproc.audit import Entry, Kind, RungRef, incident_trips
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
