"""Load shedding: how many requests one worker has in flight, and whether it takes another.

A request is in flight at the worker from the moment its decide routed it (a reservation) until
its try's ext_proc stream ends; a retry is a new try of the same request. decide's stream ends
within milliseconds, so the count cannot be its streams: routed requests hold a reservation
until a try starts, and a reservation not taken up within `RESERVATION_S` lapses (its try went
to another worker of the pod, or never started). Each worker counts on its own; Envoy spreads
streams over the workers round robin, so each sees about its share.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Final

# A routed request's first try starts a few milliseconds after decide answers; a second is long.
RESERVATION_S: Final = 1.0


@dataclass
class Admission:
    limit: int  # policy.max_in_flight
    tries: int = 0  # attempt streams open on this worker
    _reserved: deque[float] = field(default_factory=deque)  # when each waiting request was routed

    # ---- commands ----------------------------------------------------------------------------

    def routed(self, now: float) -> None:
        self._expire(now)
        self._reserved.append(now)

    def try_started(self, now: float) -> None:
        self._expire(now)
        if self._reserved:
            self._reserved.popleft()
        self.tries += 1

    def try_ended(self) -> None:
        self.tries = max(0, self.tries - 1)

    def _expire(self, now: float) -> None:
        while self._reserved and self._reserved[0] < now - RESERVATION_S:
            self._reserved.popleft()

    # ---- queries -----------------------------------------------------------------------------

    def in_flight(self, now: float) -> int:
        waiting = len(self._reserved) - bisect_left(self._reserved, now - RESERVATION_S)
        return self.tries + waiting

    def full(self, now: float) -> bool:
        """Would one more request exceed the limit?"""
        return self.in_flight(now) >= self.limit

    def snapshot(self, now: float) -> dict[str, int]:
        return {"limit": self.limit, "in_flight": self.in_flight(now), "tries": self.tries}
