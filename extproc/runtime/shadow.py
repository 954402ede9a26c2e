"""Continuous verification's calls (D2): each ShadowRequested a first try returns is made here,
through Envoy's side listener (the rescue listener: no ext_proc, Envoy's pools and TLS), off the
client's path. Its answer is judged (filters/shadow.py) and counted; nothing reaches the client
and nothing reaches the health board: a shadow's verdict is a signal for people (a metric and an
alert), not a circuit trip on a handful of samples."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ..core import Clock
from ..filters.effects import ShadowRequested
from ..filters.shadow import ShadowLedger, judge_shadow
from ..policy import Shadow
from .metrics import Metrics
from .rescue import call_rung

log = logging.getLogger("rungway.shadow")
_BODY_CAP = 4 * 1024 * 1024  # a shadow's answer is judged whole; past this it is not an answer


class ShadowCalls:
    """A worker's shadow calls in flight (bounded), and its per-tenant spend ledger."""

    def __init__(
        self,
        settings: Shadow,
        metrics: Metrics,
        clock: Clock,
        socket: Path | None,
        baseline: Callable[[str], float | None],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._socket = socket
        self._baseline = baseline
        self.ledger = ShadowLedger(settings.max_cost_per_tenant_hour)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, shadow: ShadowRequested) -> None:
        """Start the call now, or count why not (no listener, the worker's bound, the budget)."""
        skipped = self._metrics.shadow_skipped
        if self._socket is None:
            skipped.labels("no_listener").inc()
            return
        if len(self._tasks) >= self._settings.max_in_flight:
            skipped.labels("busy").inc()
            return
        if not self.ledger.allows(shadow.tenant, self._clock.wall()):
            skipped.labels("budget").inc()
            return
        try:
            task = asyncio.get_running_loop().create_task(self._run(shadow, self._socket))
        except RuntimeError:  # applied outside the server's loop (a unit test): nothing to run on
            skipped.labels("no_loop").inc()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, shadow: ShadowRequested, socket: Path) -> None:
        started = self._clock.now()
        try:
            async with call_rung(shadow.call, socket) as response:
                status = response.status
                body = await response.content.read(_BODY_CAP)
        except TimeoutError:
            self._count(shadow, "timeout", 0.0)
            return
        except (aiohttp.ClientError, OSError) as exc:
            log.info("shadow call to %s failed: %s", shadow.endpoint, type(exc).__name__)
            self._count(shadow, "unreachable", 0.0)
            return
        elapsed = self._clock.now() - started
        verdict, cost = judge_shadow(
            shadow, status, body, elapsed, self._baseline(shadow.endpoint), self._settings.slow_factor
        )
        self.ledger.spend(shadow.tenant, cost, self._clock.wall())
        self._count(shadow, verdict, cost)
        self._metrics.shadow_latency.labels(self._metrics.endpoint(shadow.endpoint)).observe(elapsed)

    def _count(self, shadow: ShadowRequested, verdict: str, cost: float) -> None:
        m = self._metrics
        endpoint = m.endpoint(shadow.endpoint)
        m.shadow_checks.labels(shadow.ladder, str(shadow.rung), endpoint, verdict).inc()
        if cost:
            m.shadow_cost.labels(m.tenant(shadow.tenant), shadow.ladder, str(shadow.rung)).inc(cost)
        if verdict != "ok":
            log.warning("shadow of %s (%s rung %d): %s", shadow.endpoint, shadow.ladder, shadow.rung, verdict)
