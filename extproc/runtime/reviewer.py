"""The pod's re-runner (E3): re-runs degraded answers on their ladder's tier-0 rung once it is
healthy again, and keeps the tier-0 answer and the diff for review.

One per pod, in `rungway up`, like the deferral drainer. Each pass it deletes reviews older
than `review.ttl_s`, reads the due ones (oldest first), keeps those whose tier-0 rung is usable
on the pod's health board (the supervisor's replica: the same view decide has), claims each
under a lease and POSTs its request to Envoy's listener with the re-run header (`token tenant
review-id`): the same decide → attempt path as any request, pinned to tier 0, never kept for
review again, its answer for this process alone. A 200 from the tier-0 rung is kept with its
diff (the first wins), audited (`rerun`, with both rungs and both answers' hashes) and
counted; anything else goes back to pending with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..audit import Entry, Kind, RungRef
from ..core import DegradedAnswer
from ..core.names import RERUN_HEADER, SERVED_BY, TIER, endpoint_key
from ..health.board import Board
from ..policy import Policy, Review
from ..review import AnswerDiff, Verdict, diff_answers, read_answer, rerun_delay, rerun_verdict
from .review import Rerun, ReviewStore

log = logging.getLogger("rungway.review")

_SWEEP_EVERY_S = 1.0


def tier_0_of(policy: Policy, item: DegradedAnswer) -> tuple[str, str] | None:
    """The endpoint (provider/model) a review is re-run on, and the served-by it must come
    back with; None when its ladder is gone or starts below tier 0 now."""
    rungs = policy.ladders.get(item.ladder)
    if not rungs or policy.tier_of(item.ladder, 0) != 0:
        return None
    rung = rungs[0]
    model = rung.model_for(item.model)
    return endpoint_key(rung.provider, model), f"{rung.provider}/{model}"


class Reviewer:
    def __init__(
        self,
        settings: Review,
        policy: Callable[[], Policy],
        store: ReviewStore,
        board: Board,
        token: str,
        listener: Callable[[], str | None],
        audit: Callable[[Entry], None],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._policy = policy  # the revision serving now (the ladders may change under reloads)
        self.store = store  # the admin API reads it too
        self._board = board
        self._token = token
        self._listener = listener  # Envoy's listener base URL, once it is up
        self._audit = audit
        self._rng = rng or random.Random()
        self._clock = clock  # wall clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._swept_at = float("-inf")
        # Counted here, exported by ReviewCollector: (tenant, outcome) → count.
        self.reruns: dict[tuple[str, str], int] = {}

    async def run(self) -> None:
        policy = self._policy()
        timeout = aiohttp.ClientTimeout(total=policy.route_timeout_s or None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._settings.rerun_every_s)
                    self._wake.clear()
                    try:
                        await self.pass_once(session)
                    except Exception:  # a locked or broken store: the next pass tries again
                        log.exception("review pass failed")
            finally:
                for task in self._running.values():
                    task.cancel()

    async def pass_once(self, session: aiohttp.ClientSession) -> None:
        now = self._clock()
        settings = self._settings
        if now - self._swept_at >= _SWEEP_EVERY_S:
            self._swept_at = now
            for tenant in await asyncio.to_thread(self.store.sweep, now, settings.ttl_s):
                self._count(tenant, "expired")
        base = self._listener()
        free = settings.reruns_in_flight - len(self._running)
        if base is None or free <= 0:
            return
        policy = self._policy()
        due = await asyncio.to_thread(self.store.rerunnable, now, 4 * settings.reruns_in_flight + len(self._running))
        for item in due:
            if free <= 0:
                break
            target = tier_0_of(policy, item)
            if item.id in self._running or target is None or not self._servable(policy, item, target[0], now):
                continue
            claimed = await asyncio.to_thread(self.store.claim, item.id, now, settings.lease_s)
            if claimed is None:
                continue  # re-run or claimed since it was read
            free -= 1
            self._running[item.id] = asyncio.create_task(self._rerun(session, base, claimed, target[1]))

    def _servable(self, policy: Policy, item: DegradedAnswer, key: str, now: float) -> bool:
        """The tier-0 rung is back, as the pod's board sees it (without the board: try it)."""
        return not policy.health.enabled or self._board.usable(key, item.impact, now, first=True) is None

    async def _rerun(self, session: aiohttp.ClientSession, base: str, item: DegradedAnswer, expected: str) -> None:
        policy = self._policy()
        headers = {
            **dict(item.headers),
            "content-type": "application/json",
            RERUN_HEADER: f"{self._token} {item.tenant} {item.id}",
            policy.task_header: item.task,
            policy.impact_header: item.impact.value,
        }
        try:
            try:
                async with session.post(base + item.path, data=item.request, headers=headers) as r:
                    body = await r.read()
                    status, tier, served_by = r.status, r.headers.get(TIER, ""), r.headers.get(SERVED_BY, "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("re-run of review %s did not reach Envoy: %s", item.id, type(exc).__name__)
                status, body, tier, served_by = 0, b"", "", ""
            now = self._clock()
            if rerun_verdict(status, tier, served_by, expected) is Verdict.DONE:
                degraded, original = read_answer(item.dialect, item.answer), read_answer(item.dialect, body)
                diff = diff_answers(degraded, original, item.served_by, served_by)
                first = await asyncio.to_thread(self.store.finish, item.id, Rerun(served_by, body, diff, now))
                self._failures.pop(item.id, None)
                if not first:
                    self._count(item.tenant, "duplicate")
                    return
                self._count(item.tenant, "same" if diff.identical else "differs")
                self._audit(rerun_entry(policy, item, served_by, body, diff, original.output_tokens, now))
            else:
                failures = self._failures[item.id] = self._failures.get(item.id, 0) + 1
                await asyncio.to_thread(self.store.retry, item.id, now + rerun_delay(failures, self._rng))
                self._count(item.tenant, "retried")
        except Exception:  # the store failed: the lease lapses and the review is re-run again
            log.exception("review %s: re-run bookkeeping failed", item.id)
        finally:
            self._running.pop(item.id, None)
            self._wake.set()

    def snapshot(self) -> dict[str, object]:
        """For /status: reviews by state, and the re-runs running now."""
        counts = self.store.counts()
        return {**{state.value: n for state, n in counts.items()}, "rerunning_now": len(self._running)}

    def collector(self) -> ReviewCollector:
        return ReviewCollector(self.store, self)

    def _count(self, tenant: str, outcome: str) -> None:
        self.reruns[(tenant, outcome)] = self.reruns.get((tenant, outcome), 0) + 1


def rerun_entry(
    policy: Policy,
    item: DegradedAnswer,
    served_by: str,
    answer: bytes,
    diff: AnswerDiff,
    tokens: int | None,
    at: float,
) -> Entry:
    """The audit record of a re-run: both rungs, and the request's and both answers' hashes
    (never their text)."""
    source_provider, _, source_model = item.served_by.partition("/")
    provider, _, model = served_by.partition("/")
    return Entry(
        at=at,
        kind=Kind.RERUN,
        tenant=item.tenant,
        task=item.task,
        trigger="recovered",
        source=RungRef(item.ladder, item.rung, source_provider, source_model, item.tier),
        target=RungRef(item.ladder, 0, provider, model, 0),
        policy=policy.stamp,
        request_id=item.request_id,
        prompt_hash=item.prompt_hash,
        tokens=tokens,
        detail={
            "review": item.id,
            "degraded_sha256": hashlib.sha256(item.answer).hexdigest(),
            "rerun_sha256": hashlib.sha256(answer).hexdigest(),
            "same_text": diff.same_text,
            "changes": ",".join(c.field for c in diff.changes),
            "similarity": diff.similarity,
        },
    )


class ReviewCollector(Collector):
    """Reviews by state (read from the store at scrape time) and the re-runner's counts."""

    def __init__(self, store: ReviewStore, reviewer: Reviewer) -> None:
        self.store = store
        self._reviewer = reviewer

    def collect(self) -> Iterator[Metric]:
        reviews = GaugeMetricFamily(
            "rungway_reviews", "Degraded answers kept for review (E3), by state.", labels=["state"]
        )
        for state, n in sorted(self.store.counts().items()):
            reviews.add_metric([state.value], n)
        yield reviews
        reruns = CounterMetricFamily(
            "rungway_reruns",
            "Re-runs of degraded answers on tier 0 after recovery, by outcome: same (the tier-0 answer "
            "matches), differs, retried (tier 0 did not serve it yet), duplicate, expired (review.ttl_s "
            "passed before a re-run).",
            labels=["tenant", "outcome"],
        )
        for (tenant, outcome), n in sorted(self._reviewer.reruns.items()):
            reruns.add_metric([tenant, outcome], n)
        yield reruns
