"""The pod's drainer: replays deferred requests through Envoy once a permitted rung is healthy.

One per pod, in `rungway up`. Each pass it expires what is too old, reads the due tasks (at most
a few per tenant, so one tenant's backlog cannot crowd out another's), orders them fairly
(deferral.fair_order), keeps those a permitted rung could serve now on the pod's health board
(deferral.servable: routing.choose under the same rules as decide), claims each under a lease
and POSTs it to Envoy's listener with the replay header (`token tenant task-id`): the same
decide → attempt path as any request, never deferred again. The answer is stored (the first
wins), or the task goes back to the queue with a backoff. A drainer killed mid-replay leaves a
lease that lapses: the task is replayed again (at-least-once; the store keeps one answer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..audit import Detail, Entry
from ..core import DeferredTask, Failure, Impact, TaskResult
from ..core.names import ESCALATION_HEADER, REPLAY_HEADER, SERVED_BY, TASK_ID_HEADER
from ..deferral import Verdict, fair_order, replay_verdict, retry_delay, servable
from ..health.board import Board
from ..policy import Policy
from ..routing import HealthView
from .tasks import TaskStore
from .webhook import deliver

log = logging.getLogger("rungway.deferral")

# Due tasks read per tenant per pass: enough to fill the replay slots, few enough that a
# tenant's backlog of thousands costs one short read.
_PER_TENANT = 8
_SWEEP_EVERY_S = 1.0  # TTLs are minutes to days: a second late is nothing


class Drainer:
    def __init__(
        self,
        policy: Policy,
        store: TaskStore,
        board: Board,
        token: str,
        listener: Callable[[], str | None],
        *,
        callback_secret: str | None = None,
        rng: random.Random | None = None,
        audit: Callable[[Entry], None] | None = None,
    ) -> None:
        assert policy.deferral is not None
        self._policy = policy
        self._settings = policy.deferral
        self._store = store
        self._board = board
        self._token = token
        self._listener = listener  # Envoy's listener base URL, once it is up
        self._secret = callback_secret
        self._rng = rng or random.Random()
        self._audit = audit  # the pod's audit chain: each task's outcome (answered, expired)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._callbacks: set[asyncio.Task[None]] = set()
        self._attempts: dict[str, int] = {}
        self._served: dict[str, float] = {}  # tenant → when its last replay started (fairness)
        self._wake = asyncio.Event()
        self._swept_at = float("-inf")  # a replay ended: its slot is free for the next task now
        # Counted here, exported by DeferralCollector: (tenant, outcome) → count.
        self.replays: dict[tuple[str, str], int] = {}
        self.callbacks: dict[str, int] = {}
        self.first_answer_at: float | None = None  # for bench/deferral.py

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._policy.route_timeout_s or None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            failing = False
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._settings.replay_every_s)
                    self._wake.clear()
                    try:
                        await self.pass_once(session)
                    except Exception:  # a locked or broken store, Redis away: the next pass tries again
                        if not failing:  # once per outage, not every pass
                            log.exception("deferral pass failed")
                        failing = True
                    else:
                        if failing:
                            log.info("deferral passes work again")
                        failing = False
            finally:
                for task in [*self._running.values(), *self._callbacks]:
                    task.cancel()

    async def pass_once(self, session: aiohttp.ClientSession) -> None:
        now = time.time()
        settings = self._settings
        if now - self._swept_at >= _SWEEP_EVERY_S:
            self._swept_at = now
            swept = await asyncio.to_thread(self._store.sweep, now, settings.task_ttl_s, settings.result_ttl_s)
            for tenant in swept.expired:
                self._count(tenant, "expired")
            if self._audit is not None:
                for tenant, n in collections.Counter(swept.expired).items():
                    self._audit(Entry.deferral_outcome(now, tenant, "", "expired", {"tasks": n}))
                # An escalation's outcome too (E2): no person decided on it within task_ttl_s.
                for tenant, n in collections.Counter(swept.escalations_expired).items():
                    self._audit(Entry.deferral_outcome(now, tenant, "", "escalation_expired", {"tasks": n}))
        base = self._listener()
        free = settings.replays_in_flight - len(self._running)
        if base is None or free <= 0:
            return
        due = await asyncio.to_thread(self._store.replayable, now, _PER_TENANT)
        views: dict[Impact, HealthView | None] = {}
        for candidate in fair_order(due, self._served):
            if free <= 0:
                break
            if candidate.id in self._running:
                continue
            task = await asyncio.to_thread(self._store.task, candidate.id)
            if task is None:
                continue
            view = views.get(task.impact) or views.setdefault(task.impact, self._health_view(task.impact, now))
            if not servable(self._policy, task, view):
                continue
            claimed = await asyncio.to_thread(self._store.claim, task.id, now, settings.lease_s)
            if claimed is None:
                continue  # answered or claimed since it was read
            free -= 1
            self._served[task.tenant] = now
            self._running[task.id] = asyncio.create_task(self._replay(session, base, claimed))

    def _health_view(self, impact: Impact, now: float) -> HealthView | None:
        if not self._policy.health.enabled:
            return None
        board = self._board

        def view(key: str, first: bool) -> Failure | None:
            unusable = board.usable(key, impact, now, first=first)
            return unusable.reason if unusable is not None else None

        return view

    async def _replay(self, session: aiohttp.ClientSession, base: str, task: DeferredTask) -> None:
        headers = {
            **dict(task.headers),
            "content-type": "application/json",
            REPLAY_HEADER: f"{self._token} {task.tenant} {task.id}",
            self._policy.task_header: task.task,
            self._policy.impact_header: task.impact.value,
        }
        if task.reviewed:  # a person decided on its escalation (E2): never held again, maybe pinned
            headers[ESCALATION_HEADER] = f"rung={task.pin}" if task.pin is not None else "reviewed"
        try:
            try:
                async with session.post(base + task.path, data=task.body, headers=headers) as r:
                    body = await r.read()
                    status = r.status
                    wait = r.headers.get("retry-after", "")
                    kept = tuple(
                        (k.lower(), v)
                        for k, v in r.headers.items()
                        if k.lower().startswith("x-rungway-") or k.lower() == "content-type"
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("replay of deferred task %s did not reach Envoy: %s", task.id, type(exc).__name__)
                status, body, kept, wait = 0, b"", (), ""
            if task.reviewed:
                kept = (*kept, (ESCALATION_HEADER, "redirected" if task.pin is not None else "approved"))
            now = time.time()
            if status and replay_verdict(status, dict(kept).get(SERVED_BY, "")) is Verdict.DONE:
                result = TaskResult(status, kept, body, now)
                first = await asyncio.to_thread(self._store.finish, task.id, result)
                self._count(task.tenant, "answered" if first else "duplicate")
                attempts = self._attempts.pop(task.id, 0) + 1
                if self._audit is not None:
                    detail: Detail = {"task_id": task.id, "status": status, "replays": attempts}
                    served_by = dict(kept).get(SERVED_BY)
                    if served_by:
                        detail["served_by"] = served_by
                    outcome = "answered" if first else "duplicate"
                    self._audit(Entry.deferral_outcome(now, task.tenant, task.task, outcome, detail))
                if first:
                    if self.first_answer_at is None:
                        self.first_answer_at = now
                    url = self._policy.tenant(task.tenant).callback_url
                    if url is not None and self._secret is not None:
                        self._start_callback(url, task, result)
            else:
                attempts = self._attempts[task.id] = self._attempts.get(task.id, 0) + 1
                # A Retry-After (a budget's next window, a rate limit) is waited out in full.
                delay = max(retry_delay(attempts, self._rng), float(wait) if wait.isdigit() else 0.0)
                await asyncio.to_thread(self._store.retry, task.id, now + delay)
                self._count(task.tenant, "retried")
        except Exception:  # the store failed: the lease lapses and the task is replayed again
            log.exception("deferred task %s: replay bookkeeping failed", task.id)
        finally:
            self._running.pop(task.id, None)
            self._wake.set()

    def snapshot(self, now: float) -> dict[str, object]:
        """For /status: the queue's depth and age, and the replays running now. A store that
        cannot be read (a fleet's Redis away) says so rather than failing /status."""
        try:
            depth, oldest = self._store.depth()
        except Exception as exc:
            return {
                "queue_depth": None,
                "oldest_age_s": None,
                "replaying": len(self._running),
                "store_error": type(exc).__name__,
            }
        return {
            "queue_depth": depth,
            "oldest_age_s": round(now - oldest, 3) if oldest is not None else 0.0,
            "replaying": len(self._running),
        }

    def collector(self, clock: Callable[[], float]) -> DeferralCollector:
        return DeferralCollector(self._store, self, clock)

    def _count(self, tenant: str, outcome: str) -> None:
        self.replays[(tenant, outcome)] = self.replays.get((tenant, outcome), 0) + 1

    # ---- callbacks ---------------------------------------------------------------------------

    def _start_callback(self, url: str, task: DeferredTask, result: TaskResult) -> None:
        job = asyncio.create_task(self._callback(url, task, result))
        self._callbacks.add(job)
        job.add_done_callback(self._callbacks.discard)

    async def _callback(self, url: str, task: DeferredTask, result: TaskResult) -> None:
        """POST the answer to the tenant's callback URL, signed, retried with backoff."""
        assert self._secret is not None
        payload = callback_body(task.id, result)
        attempts = self._settings.callback_attempts
        if await deliver(
            url, payload, self._secret, attempts=attempts, rng=self._rng, headers={TASK_ID_HEADER: task.id}
        ):
            self.callbacks["delivered"] = self.callbacks.get("delivered", 0) + 1
            return
        self.callbacks["failed"] = self.callbacks.get("failed", 0) + 1
        log.warning("deferred task %s: callback failed %d times", task.id, attempts)


def callback_body(task_id: str, result: TaskResult) -> bytes:
    """The callback's JSON: the task id, the answer's status, Rungway's flags, and its body
    (JSON when it is JSON, else text)."""
    try:
        answer: object = json.loads(result.body)
    except ValueError:
        answer = result.body.decode(errors="replace")
    body = {"id": task_id, "status": result.status, "headers": dict(result.headers), "body": answer}
    return json.dumps(body, separators=(",", ":")).encode()


class DeferralCollector(Collector):
    """The queue's depth and age (read from the store at scrape time) and the drainer's counts."""

    def __init__(self, store: TaskStore, drainer: Drainer, clock: Callable[[], float]) -> None:
        self._store = store
        self._drainer = drainer
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            found: tuple[int, float | None] | None = self._store.depth()
        except Exception:  # a fleet's Redis away: no depth is better than a scrape that fails
            found = None
        yield GaugeMetricFamily(
            "rungway_deferral_store_up",
            "1 when the deferral store could be read at this scrape, 0 when not (no 202 while it is 0).",
            float(found is not None),
        )
        if found is not None:
            depth, oldest = found
            yield GaugeMetricFamily(
                "rungway_deferral_queue_depth", "Deferred tasks waiting (queued or replaying).", depth
            )
            age = max(0.0, self._clock() - oldest) if oldest is not None else 0.0
            yield GaugeMetricFamily(
                "rungway_deferral_oldest_age_seconds", "Age of the oldest deferred task still waiting (0: none).", age
            )
        replays = CounterMetricFamily(
            "rungway_deferred_replays",
            "Deferred tasks' replays by outcome: answered (the task's answer), duplicate (a second "
            "answer, ignored), retried (no rung served it yet), expired (deferral.task_ttl_s passed).",
            labels=["tenant", "outcome"],
        )
        for (tenant, outcome), n in sorted(self._drainer.replays.items()):
            replays.add_metric([tenant, outcome], n)
        yield replays
        callbacks = CounterMetricFamily(
            "rungway_deferred_callbacks", "Callback POSTs of deferred answers: delivered, failed.", labels=["outcome"]
        )
        for outcome, n in sorted(self._drainer.callbacks.items()):
            callbacks.add_metric([outcome], n)
        yield callbacks
