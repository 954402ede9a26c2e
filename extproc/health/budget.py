"""The fleet's retry budget: extra tries stay within ratio x requests + floor per window, so an
outage never becomes a retry storm (every replica counts every replica's requests and retries)."""

from __future__ import annotations

from collections import deque

from ..policy import HealthSettings

_CAP = 100_000


class RetryBudget:
    def __init__(self, settings: HealthSettings) -> None:
        self._settings = settings
        self._requests: deque[tuple[float, int]] = deque(maxlen=_CAP)  # (at, how many)
        self._retries: deque[float] = deque(maxlen=_CAP)

    def note_requests(self, at: float, count: int) -> None:
        self._requests.append((at, count))

    def note_retry(self, at: float) -> None:
        self._retries.append(at)

    def tick(self, now: float) -> None:
        """Forget what has left the window."""
        cutoff = now - self._settings.retry_budget_window_s
        while self._requests and self._requests[0][0] < cutoff:
            self._requests.popleft()
        while self._retries and self._retries[0] < cutoff:
            self._retries.popleft()

    def counts(self, now: float) -> tuple[int, int]:
        """Requests and retries within the window ending at `now` (a query)."""
        cutoff = now - self._settings.retry_budget_window_s
        return sum(n for at, n in self._requests if at >= cutoff), sum(1 for at in self._retries if at >= cutoff)

    def allowed(self, requests: int) -> float:
        return self._settings.retry_budget_ratio * requests + self._settings.retry_budget_floor

    def retries_allowed(self, now: float) -> bool:
        requests, retries = self.counts(now)
        return retries < self.allowed(requests)

    def snapshot(self, now: float) -> dict[str, float]:
        requests, retries = self.counts(now)
        return {
            "window_s": self._settings.retry_budget_window_s,
            "requests": requests,
            "retries": retries,
            "allowed": self.allowed(requests),
        }
