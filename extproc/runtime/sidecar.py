"""What every processor of one worker process shares: the serving policy, provider keys,
metrics, the clock, and the health board fed through the health bus. It is the processors'
`Worker` (reads) and applies the effects they return (writes)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..audit import Kind
from ..core import (
    BusEvent,
    CircuitChanged,
    Clock,
    ContractError,
    DegradedAnswer,
    Failure,
    Impact,
    Observation,
    QuotaSignal,
    Rejection,
    RequestsDecided,
    Spent,
    SystemClock,
    decode_event,
)
from ..core.names import PROBE_TENANT, endpoint_key
from ..filters.deferral import task_answer
from ..filters.effects import (
    Arrived,
    Audited,
    BudgetReached,
    CapacityShed,
    Decided,
    Deferred,
    Effect,
    Escalated,
    HalfOpenAdmitted,
    HoldEnded,
    HoldStarted,
    KeptForReview,
    RequestCounted,
    Rescued,
    RescueRequested,
    Reshaped,
    RungFreed,
    RungLimited,
    RungTaken,
    Served,
    ShadowRequested,
    Shed,
    SlotReserved,
    StreamEnded,
    TaskQueried,
    Tried,
    Tripped,
    TryEnded,
    TryRefused,
    Unauthenticated,
)
from ..filters.trail import audited
from ..filters.wire import ProcessingResponse
from ..health.board import Board
from ..health.circuit import Transition
from ..identity import KeyStore
from ..policy import (
    REQUESTED_MODEL,
    Budget,
    Credential,
    CredentialError,
    History,
    Policy,
    PolicyError,
    resolve_credentials,
)
from ..routing import HealthView
from ..routing.approval import Approvals
from ..routing.capacity import Denial, Holder, Limits
from ..routing.hold import HoldOutcome
from ..routing.spend import OverBudget, SpendLedger
from ..routing.tiers import TierChange, TierWatch
from .admission import Admission
from .approvals import ApprovalsFile
from .auditlog import AuditSink
from .bus import HealthBus, InProcessBus
from .escalations import EscalationStore, SqliteEscalations
from .fleettasks import deferral_store
from .keyfile import KeyFile
from .metrics import OTHER, Metrics
from .reload import HandedPolicy
from .rescue import RESCUE_SOCKET_ENV
from .review import ReviewStore, SqliteReviewStore
from .shadow import ShadowCalls
from .shield import SHIELD_SOCKET_ENV
from .slots import HoldStore, LedgerStore, LocalHolds, LocalLedger, SharedHolds, SharedLedger
from .tasks import TaskStore
from .webhook import deliver

log = logging.getLogger("rungway.health")

# Set by `rungway up` for its workers: the shared secret that lets its probes pick a rung,
# and the pod-local health hub's Unix socket.
PROBE_TOKEN_ENV = "RUNGWAY_PROBE_TOKEN"
HUB_ENV = "RUNGWAY_HEALTH_HUB"
# The secret Envoy sends on every ext_proc stream (EnvoySettings.channel_token).
CHANNEL_TOKEN_ENV = "RUNGWAY_CHANNEL_TOKEN"
HUB_SECRET_ENV = "RUNGWAY_HEALTH_HUB_SECRET"  # the hub's signing secret, made by `rungway up` per run
# The file `rungway up`'s workers share the rungs' capacity ledger in (runtime/slots.py).
SLOTS_ENV = "RUNGWAY_SLOTS"
# And the file they count the requests held for an approval in (routing/hold.py).
HOLDS_ENV = "RUNGWAY_HOLDS"
_REQUEST_COUNT_EVERY_S = 0.25
# How often the board is ticked for decide. Its queries already see circuit timers as due, and
# observations move it at once; a tick moves only what time alone changes (scores of aging
# windows, departures, SLO timers), which a few tens of ms cannot change in a way that matters.
# Ticking per request would walk every endpoint on every request.
_TICK_EVERY_S = 0.05
# Tier-change notices being delivered at once, per worker, and attempts at each.
_MAX_NOTICES_IN_FLIGHT = 64
_NOTICE_ATTEMPTS = 4
# How long a deferral's store write may wait for the write lock: well under Envoy's ext_proc
# message timeout (1 s), so the client hears our 503 rather than a timeout.
STORE_WAIT_S = 0.5


def configured_baselines(policy: Policy) -> dict[str, float]:
    """Latency baselines the policy states, by endpoint; a `$requested` rung's applies to
    every model it serves (`provider/*`)."""
    out: dict[str, float] = {}
    for rungs in policy.ladders.values():
        for rung in rungs:
            if rung.baseline_latency_s is not None:
                model = "*" if rung.model == REQUESTED_MODEL else rung.model
                out[endpoint_key(rung.provider, model)] = rung.baseline_latency_s
    return out


def configured_endpoints(policy: Policy) -> frozenset[str]:
    """Endpoints the policy names with a fixed model: the board never evicts them."""
    return frozenset(
        endpoint_key(rung.provider, rung.model)
        for rungs in policy.ladders.values()
        for rung in rungs
        if rung.model != REQUESTED_MODEL
    )


def rung_limits(policy: Policy) -> dict[tuple[str, int], Limits]:
    """The concurrency limits of the rungs that have a `capacity` (T3), by (ladder, rung)."""
    return {
        (name, i): Limits.of(rung.capacity)
        for name, rungs in policy.ladders.items()
        for i, rung in enumerate(rungs)
        if rung.capacity is not None
    }


def budget_ledger(policy: Policy) -> SpendLedger:
    """A ledger whose windows are the tenants' budgets' (tenant_defaults' for everyone else)."""
    return SpendLedger(*budget_windows(policy))


def budget_windows(policy: Policy) -> tuple[dict[str, float], float]:
    windows = {name: t.budget.window_s for name, t in policy.tenants.items() if t.budget is not None}
    default = policy.tenant_defaults.budget
    return windows, default.window_s if default is not None else 3600.0


def read_bus_event(raw: dict[str, Any]) -> BusEvent | None:
    """A typed event from the bus's JSON, or None (logged) for anything malformed or foreign."""
    try:
        return decode_event(raw)
    except ContractError as exc:
        log.debug("bus event dropped: %s", exc)
        return None


@dataclass
class Sidecar:
    policy: Policy
    keys: dict[str, SecretStr | None]
    metrics: Metrics
    clock: Clock = field(default_factory=SystemClock)
    bus: HealthBus = field(default_factory=InProcessBus)
    probe_token: str = field(default_factory=lambda: os.environ.get(PROBE_TOKEN_ENV) or secrets.token_hex(16))
    channel_token: str = field(default_factory=lambda: os.environ.get(CHANNEL_TOKEN_ENV) or secrets.token_hex(16))
    rng: random.Random = field(default_factory=random.Random)
    key_file: KeyFile | None = None
    approvals_file: ApprovalsFile | None = None
    # The audit trail's sink (runtime/auditlog.py); None writes none.
    audit: AuditSink | None = None
    # Envoy's rescue listener (runtime/rescue.py): set by `rungway up` for its workers.
    rescue_socket: Path | None = field(
        default_factory=lambda: Path(os.environ[RESCUE_SOCKET_ENV]) if os.environ.get(RESCUE_SOCKET_ENV) else None
    )
    # This worker's reset shield (runtime/shield.py): set by `rungway up` for its workers.
    shield_socket: Path | None = field(
        default_factory=lambda: Path(os.environ[SHIELD_SOCKET_ENV]) if os.environ.get(SHIELD_SOCKET_ENV) else None
    )
    # The deferral queue (policy.deferral): accepted requests are stored here before their 202.
    tasks: TaskStore | None = None
    # Answers served below tier 0 kept for their re-run on recovery (policy.review, E3).
    reviews: ReviewStore | None = None
    # Escalated requests (policy.escalation), in the deferral store's file.
    escalations: EscalationStore | None = None
    # Under `rungway up`: where the supervisor hands over new revisions (runtime/reload.py).
    handed: HandedPolicy | None = None
    # The rungs' capacity ledger: the pod's under `rungway up` (every worker's), else this one's.
    ledger: LedgerStore = field(
        default_factory=lambda: (
            SharedLedger(Path(os.environ[SLOTS_ENV])) if os.environ.get(SLOTS_ENV) else LocalLedger()
        )
    )
    # Requests held for an approval: the pod's count under `rungway up`, else this worker's.
    holds: HoldStore = field(
        default_factory=lambda: SharedHolds(Path(os.environ[HOLDS_ENV])) if os.environ.get(HOLDS_ENV) else LocalHolds()
    )
    key_store: KeyStore = field(init=False)
    # The current revision (`policy`) and the previous ones requests in flight were decided under.
    history: History = field(init=False)
    approvals: Approvals = field(init=False)
    board: Board = field(init=False)
    admission: Admission = field(init=False)
    shadows: ShadowCalls = field(init=False)
    spend: SpendLedger = field(init=False)
    _limits: dict[tuple[str, int], Limits] = field(init=False)
    tiers: TierWatch = field(default_factory=TierWatch, init=False)
    _notices: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _keeping: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _pid: int = field(default_factory=os.getpid, init=False)  # whose tries these are, in the ledger
    _requests_unsent: int = field(default=0, init=False)
    _requests_sent_at: float = field(default=float("-inf"), init=False)
    _spend_unsent: dict[str, tuple[int, float]] = field(default_factory=dict, init=False)
    _spend_sent_at: float = field(default=float("-inf"), init=False)
    _ticked_at: float = field(default=float("-inf"), init=False)
    _evictions_counted: int = field(default=0, init=False)
    _holding: int = field(default=0, init=False)  # requests this worker holds for an approval

    def __post_init__(self) -> None:
        self.history = History(self.policy)
        configured = configured_endpoints(self.policy)
        self.board = Board(self.policy.health, configured_baselines(self.policy), configured)
        self.metrics.pin_models(key.partition("/")[2] for key in configured)
        self.admission = Admission(self.policy.max_in_flight)
        self.spend = budget_ledger(self.policy)
        self.shadows = ShadowCalls(
            self.policy.shadow, self.metrics, self.clock, self.rescue_socket, lambda key: self.baseline(key, False)
        )
        self._limits = rung_limits(self.policy)
        self.bus.subscribe(self._on_event)
        self.key_store = self.key_file.value if self.key_file is not None else KeyStore()
        self.approvals = self.approvals_file.value if self.approvals_file is not None else Approvals()
        self.bus.on_reject(self._count_rejection)

    @classmethod
    def start(
        cls, policy: Policy, metrics: Metrics, clock: Clock | None = None, bus: HealthBus | None = None
    ) -> Sidecar:
        """Raises KeyStoreError for an unreadable or broken key store."""
        store = policy.clients.key_store
        return cls(
            policy,
            resolve_credentials(policy),
            metrics,
            clock or SystemClock(),
            bus or InProcessBus(),
            key_file=KeyFile(store) if policy.clients.auth == "keys" and store is not None else None,
            tasks=deferral_store(policy.deferral, wait_s=STORE_WAIT_S) if policy.deferral is not None else None,
            escalations=(
                SqliteEscalations(policy.deferral.store, STORE_WAIT_S)
                if policy.deferral is not None and policy.deferral.store is not None and policy.escalation is not None
                else None
            ),
            approvals_file=ApprovalsFile(policy.approvals) if policy.approvals is not None else None,
            reviews=SqliteReviewStore(policy.review.store) if policy.review is not None else None,
        )

    def every_second(self) -> None:
        """The server's once-a-second chores: take a changed key store or approvals file, and
        tell the bus the spend still unsent."""
        self._publish_spend(self.clock.wall(), due=True)
        if self.key_file is not None and self.key_file.refresh():
            self.key_store = self.key_file.value
            self.metrics.key_store_reloads.inc()
        self.refresh_approvals()

    def refresh_approvals(self) -> None:
        """Take a changed approvals file (every second; every tenth while a request is held)."""
        if self.approvals_file is not None and self.approvals_file.refresh():
            self.approvals = self.approvals_file.value

    def holding(self) -> bool:
        """Whether a request is held waiting for an approval at this worker."""
        return self._holding > 0

    def reload(self, history: History) -> bool:
        """Serve `history.current` from the next request on; requests decided under a previous
        revision it keeps finish under theirs. False when it is what this worker serves already.
        Raises PolicyError (credentials) before changing anything."""
        if [p.stamp for p in history.all()] == [p.stamp for p in self.history.all()]:
            return False
        keys: dict[str, SecretStr | None] = {}
        for policy in reversed(history.all()):  # the current revision's keys win
            keys.update(resolve_credentials(policy))
        current = history.current
        self.keys = keys
        self.history = history
        self.policy = current
        self.admission.limit = current.max_in_flight
        self.spend.resize(*budget_windows(current))
        self._limits = rung_limits(current)
        configured = configured_endpoints(current)
        self.board.reconfigure(configured_baselines(current), configured)
        self.metrics.pin_models(key.partition("/")[2] for key in configured)
        return True

    def refresh_policy(self) -> None:
        """Take a history `rungway up` handed over since the last call (called every few tens of
        ms by the server, and at once by policy_for); a bad one is logged and changes nothing."""
        if self.handed is None:
            return
        try:
            history = self.handed.changed()
            if history is not None:
                if self.reload(history):
                    logging.getLogger("rungway.policy").info("policy %s now serves", self.policy.stamp)
                self.handed.serving(self.policy.stamp)
        except (OSError, PolicyError) as exc:
            logging.getLogger("rungway.policy").error("policy history not taken: %s", exc)

    # ---- reads (the processors' Worker) ------------------------------------------------------

    def policy_for(self, stamp: str) -> Policy | None:
        found = self.history.get(stamp)
        if found is None:
            # Decide and the tries of one request may run on different workers: another worker
            # may have taken the supervisor's newest revision a moment before this one. The
            # supervisor wrote it before any worker could decide under it.
            self.refresh_policy()
            found = self.history.get(stamp)
        return found

    @property
    def auditing(self) -> bool:
        return self.audit is not None

    def key_for(self, provider: str) -> str | None:
        key = self.keys.get(provider)
        return key.get_secret_value() if key is not None else None

    def health_view(self, impact: Impact) -> HealthView | None:
        if not self.policy.health.enabled:
            return None
        now = self.clock.wall()
        if now - self._ticked_at >= _TICK_EVERY_S:
            self._ticked_at = now
            self._announce_all(self.board.tick(now))  # time moved: timers, windows, departures
        board = self.board

        def view(key: str, first: bool) -> Failure | None:
            unusable = board.usable(key, impact, now, first=first)
            return unusable.reason if unusable is not None else None

        return view

    def half_open(self, key: str) -> bool:
        return self.board.half_open(key, self.clock.wall())

    def retries_allowed(self) -> bool:
        return not self.policy.health.enabled or self.board.retries_allowed(self.clock.wall())

    def baseline(self, key: str, stream: bool) -> float | None:
        endpoint = self.board.endpoints.get(key)
        return self.board.baseline(endpoint, stream) if endpoint is not None else None

    def health_score(self, key: str) -> float | None:
        if not self.policy.health.enabled:
            return None
        endpoint = self.board.endpoints.get(key)
        return self.board.score(endpoint, self.clock.wall()).value if endpoint is not None else None

    def over_budget(self, tenant: str, budget: Budget | None) -> OverBudget | None:
        return self.spend.over(tenant, budget, self.clock.wall())

    def overloaded(self) -> bool:
        return self.admission.full(self.clock.now())

    def held(self, tenant: str) -> int:
        return self.holds.read(self.clock.now()).held(tenant)

    def capacity(self, ladder: str, rung: int, holder: Holder) -> Denial | None:
        limits = self._limits.get((ladder, rung))
        if limits is None:
            return None
        now = self.clock.now()
        return self.ledger.read(now).admits((ladder, rung), limits, holder, now)

    # ---- the gRPC loop's stream lifetimes (load shedding) ------------------------------------

    def try_started(self) -> None:
        self.admission.try_started(self.clock.now())

    def try_ended(self) -> None:
        self.admission.try_ended()

    # ---- writes: the effects processors return ------------------------------------------------

    def apply(self, effects: Iterable[Effect]) -> None:
        m = self.metrics
        for effect in effects:
            match effect:
                case Observation():
                    self._observe(effect)
                    if effect.output_tokens and not effect.probe:
                        m.output_tokens.labels(effect.ladder, str(effect.rung), m.endpoint(effect.key)).inc(
                            effect.output_tokens
                        )
                case QuotaSignal():
                    self.bus.publish(effect.encode())
                case Decided(tenant, task, ladder, outcome, _):
                    m.decisions.labels(m.tenant(tenant), task, ladder, outcome).inc()
                case Unauthenticated(reason):
                    m.unauthenticated.labels(reason).inc()
                case BudgetReached(tenant, reason, action):
                    m.budget_reached.labels(m.tenant(tenant), reason, action).inc()
                case RequestCounted():
                    self._note_request()
                case Arrived():
                    self.admission.routed(self.clock.now())  # in flight until its try starts
                case Shed():
                    m.requests_shed.inc()
                case HoldStarted(tenant):
                    self._holding += 1
                    with self.holds.change(self.clock.now()) as held:
                        held.take(tenant, self._pid)
                    m.approval_held.labels(m.tenant(tenant)).inc()
                case HoldEnded(tenant, outcome):
                    if outcome is not HoldOutcome.FULL:
                        self._holding -= 1
                        with self.holds.change(self.clock.now()) as held:
                            held.free(tenant, self._pid)
                        m.approval_held.labels(m.tenant(tenant)).dec()
                    m.approval_holds.labels(m.tenant(tenant), outcome.value).inc()
                case SlotReserved(ladder, rung, tenant, impact) if (ladder, rung) in self._limits:
                    with self.ledger.change(now := self.clock.now()) as ledger:
                        ledger.reserve((ladder, rung), Holder(tenant, impact), now)
                case RungTaken(ladder, rung, tenant, impact) if (ladder, rung) in self._limits:
                    with self.ledger.change(now := self.clock.now()) as ledger:
                        ledger.take((ladder, rung), Holder(tenant, impact), now, self._pid)
                case RungFreed(ladder, rung, tenant, impact) if (ladder, rung) in self._limits:
                    with self.ledger.change(self.clock.now()) as ledger:
                        ledger.free((ladder, rung), Holder(tenant, impact), self._pid)
                case RungLimited(ladder, rung, tenant, impact, reason):
                    with self.ledger.change(now := self.clock.now()) as ledger:
                        ledger.refused((ladder, rung), tenant, now)
                    m.rungs_limited.labels(m.tenant(tenant), impact.value, ladder, str(rung), reason).inc()
                case CapacityShed(tenant, impact, reason):
                    m.requests_limited.labels(m.tenant(tenant), impact.value, reason).inc()
                case SlotReserved() | RungTaken() | RungFreed():
                    pass  # a rung without a capacity limit: nothing to count
                case HalfOpenAdmitted(key):
                    self._announce_all(self.board.admit(key, self.clock.wall()))
                case Tried(ladder, rung, provider, model, outcome):
                    m.attempts.labels(ladder, str(rung), provider, m.model(model), outcome).inc()
                case Tripped(ladder, rung, provider, model, reason):
                    m.trips.labels(ladder, str(rung), provider, m.model(model), reason.value).inc()
                case Served(tenant, task, ladder, tier, degraded, rung):
                    m.served.labels(m.tenant(tenant), task, ladder, str(tier), str(degraded).lower(), str(rung)).inc()
                    self._notice_tier(effect)
                case KeptForReview(item):
                    self._keep_for_review(item)
                case Reshaped(ladder, rung, tool_mode, tools_removed, trimmed):
                    if tools_removed:
                        m.tools_removed.labels(ladder, str(rung), tool_mode).inc()
                    if trimmed:
                        m.context_trimmed.labels(ladder, str(rung)).inc()
                case TryEnded():
                    self._measure(effect)
                case StreamEnded(outcome):
                    m.streams.labels(outcome).inc()
                case TryRefused(reason, _):
                    m.tries_refused.labels(reason).inc()
                case Rescued(ladder, from_rung, to_rung, outcome):
                    m.rescues.labels(ladder, str(from_rung), str(to_rung), outcome).inc()
                case RescueRequested():
                    pass  # the stream's own loop makes the call (runtime/server.py)
                case ShadowRequested():
                    self.shadows.submit(effect)
                case Audited(entry):
                    if self.audit is not None:
                        self.audit.submit(entry)  # waits only if the writer is a full queue behind
                case Deferred() | Escalated() | TaskQueried():
                    pass  # the stream's own loop does these (runtime/server.py)

    async def settle(self, effect: Deferred | Escalated | TaskQueried) -> ProcessingResponse:
        """The answer a processor left to the runtime's I/O. A deferral's 202 is returned only
        once the task is committed to the store (fsynced): nothing acknowledged can be lost."""
        tasks = self.tasks
        if isinstance(effect, TaskQueried):
            view = None
            if tasks is not None:
                try:
                    view = await asyncio.to_thread(tasks.lookup, effect.task_id, effect.tenant)
                except Exception:  # an unreadable store answers like an unknown task, and is logged
                    log.exception("deferral store lookup failed")
            return task_answer(view, effect.task_id, effect.tenant, effect.dialect, effect.policy_version)
        if isinstance(effect, Escalated):
            return await self._hold(effect)
        outcome, answer = "unavailable", effect.unavailable
        if tasks is not None:
            try:
                if await asyncio.to_thread(tasks.accept, effect.task, effect.capacity):
                    outcome, answer = "accepted", effect.accepted
                else:
                    outcome, answer = "full", effect.full
            except Exception:  # a full disk or a broken file: the client hears 503, never a 202
                log.exception("deferral store write failed")
        self.metrics.deferred.labels(self.metrics.tenant(effect.task.tenant), outcome).inc()
        if effect.entry is not None and self.audit is not None:
            self.audit.submit(replace(effect.entry, trigger=outcome))
        return answer

    async def _hold(self, effect: Escalated) -> ProcessingResponse:
        """An answer held for a person (E2): its 202 only once task, escalation and candidate
        are committed to the store (fsynced)."""
        outcome, answer = "unavailable", effect.unavailable
        if self.escalations is not None:
            try:
                await asyncio.to_thread(self.escalations.escalate, effect.task, effect.escalation, effect.candidate)
                outcome, answer = "escalated", effect.accepted
            except Exception:  # a full disk or a broken file: the client hears 503, never a 202
                log.exception("escalation store write failed")
        self.metrics.escalations.labels(self.metrics.tenant(effect.task.tenant), outcome).inc()
        if effect.entry is not None and self.audit is not None:
            self.audit.submit(replace(effect.entry, detail={**effect.entry.detail, "outcome": outcome}))
        return answer

    def _keep_for_review(self, item: DegradedAnswer) -> None:
        """Keep a degraded answer for its re-run on recovery (E3): written off the request's
        path (the client has its answer already), counted by outcome."""
        review, store = self.policy.review, self.reviews
        kept = self.metrics.reviews_kept
        tenant = self.metrics.tenant(item.tenant)
        if review is None or store is None:
            return
        if max(len(item.request), len(item.answer)) > review.max_bytes:
            kept.labels(tenant, "too_large").inc()
            return

        async def write() -> None:
            try:
                outcome = "kept" if await asyncio.to_thread(store.keep, item, review.max_per_tenant) else "full"
            except Exception:  # a full disk or a broken file: the answer is not kept, and it is logged
                log.exception("review store write failed")
                outcome = "failed"
            kept.labels(tenant, outcome).inc()

        try:
            job = asyncio.get_running_loop().create_task(write())
        except RuntimeError:  # applied outside the server's loop (a unit test): written at once
            kept.labels(tenant, "kept" if store.keep(item, review.max_per_tenant) else "full").inc()
            return
        self._keeping.add(job)
        job.add_done_callback(self._keeping.discard)

    def _notice_tier(self, served: Served) -> None:
        """The tier serving a tenant's task class, per worker: a change is counted, a recovery
        audited (E3), and a tenant with a notify_url hears of it (T2): a signed POST, retried,
        off the request's path. Each worker tells of what it served."""
        rungs = self.policy.ladders.get(served.ladder, [])
        rung = rungs[served.rung] if served.rung < len(rungs) else None
        served_by = f"{rung.provider}/{rung.model}" if rung is not None else served.ladder
        now = self.clock.wall()
        change = self.tiers.served(
            served.tenant, served.task, served.tier, now, served_by, (served.ladder, served.rung)
        )
        if change is None:
            return
        self.metrics.tier_changes.labels(self.metrics.tenant(change.tenant), change.task, change.direction).inc()
        if change.direction == "recovered":
            self._audit_recovery(served, change)
        url = self.policy.tenant(served.tenant).notify_url
        secret = self.policy.notify_secret
        if url is None or secret is None:
            return
        notices = self.metrics.tier_notices
        if len(self._notices) >= _MAX_NOTICES_IN_FLIGHT:
            notices.labels(self.metrics.tenant(change.tenant), "dropped").inc()
            return
        payload = json.dumps(
            {"tenant": change.tenant, "task": change.task, "from_tier": change.previous, "tier": change.tier,
             "direction": change.direction, "served_by": change.served_by, "at": change.at,
             "policy": self.policy.stamp},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        try:
            task = asyncio.get_running_loop().create_task(self._send_notice(url, payload, secret, change.tenant))
        except RuntimeError:  # applied outside the server's loop (a unit test): nothing to send on
            notices.labels(self.metrics.tenant(change.tenant), "dropped").inc()
            return
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _audit_recovery(self, served: Served, change: TierChange) -> None:
        """A task class served at a higher tier again (back to tier 0 after an outage): a
        `tier_change` record with trigger `recovered`, from the rung it was served by before."""
        decision = served.decision
        if self.audit is None or decision is None:
            return
        policy = self.policy_for(decision.policy) or self.policy
        source = None
        if change.previous_rung is not None and change.previous_rung[0] == served.ladder:
            source = change.previous_rung[1]
        if source is not None and source >= len(policy.ladders.get(served.ladder, [])):
            source = None
        entry = audited(
            policy, decision, Kind.TIER_CHANGE, change.at, "recovered", source=source, target=served.rung,
            detail={"from_tier": change.previous, "tier": change.tier, "direction": change.direction},
        )  # fmt: skip
        self.audit.submit(entry.entry)

    async def _send_notice(self, url: str, payload: bytes, secret: Credential, tenant: str) -> None:
        try:
            key = secret.resolve().get_secret_value()
            delivered = await deliver(url, payload, key, attempts=_NOTICE_ATTEMPTS, rng=self.rng)
        except CredentialError as exc:
            log.error("tier notice not signed: %s", exc)
            delivered = False
        self.metrics.tier_notices.labels(self.metrics.tenant(tenant), "delivered" if delivered else "failed").inc()

    def _measure(self, ended: TryEnded) -> None:
        provider = self.policy.providers.get(ended.provider)
        system = provider.dialect.value if provider is not None else OTHER
        cost = provider.cost_per_1k.of(ended.input_tokens or 0, ended.output_tokens or 0) if provider else 0.0
        if ended.tenant == PROBE_TENANT:  # a synthetic probe: the rung's cost, no tenant's traffic
            if cost > 0:
                self.metrics.probe_cost.labels(ended.ladder, str(ended.rung), ended.provider).inc(cost)
            return
        self.metrics.try_ended(ended, system, cost)
        tokens = (ended.input_tokens or 0) + (ended.output_tokens or 0)
        if tokens or cost:  # the tenant's budget (T4): every try that reached a provider, at its price
            self._spend(Spent(ended.tenant, self.clock.wall(), tokens, cost))

    def _observe(self, observation: Observation) -> None:
        self._announce_all(self.board.observe(observation, self.clock.wall()))
        self.bus.publish(observation.encode())
        self._publish_outbox()

    def _spend(self, spent: Spent) -> None:
        """A try's cost to its tenant: this replica's ledger now, every other's through the bus
        in aggregate (every member decodes every event: one per try would not scale)."""
        self.spend.record(spent.tenant, spent.tokens, spent.cost, spent.at)
        tokens, cost = self._spend_unsent.get(spent.tenant, (0, 0.0))
        self._spend_unsent[spent.tenant] = (tokens + spent.tokens, cost + spent.cost)
        self._publish_spend(spent.at)

    def _publish_spend(self, now: float, *, due: bool = False) -> None:
        """The spend not yet told, one Spent per tenant, at most every _REQUEST_COUNT_EVERY_S
        (or now, `due`: the server's once-a-second call, so a last burst is not kept back)."""
        if not self._spend_unsent or (not due and now - self._spend_sent_at < _REQUEST_COUNT_EVERY_S):
            return
        for tenant, (tokens, cost) in self._spend_unsent.items():
            self.bus.publish(Spent(tenant, now, tokens, cost).encode())
        self._spend_unsent.clear()
        self._spend_sent_at = now

    def _note_request(self) -> None:
        """Count a decided request for the fleet's retry budget; published in aggregate (every
        member of the bus decodes every event, so one event per request would not scale)."""
        self._requests_unsent += 1
        now = self.clock.wall()
        if now - self._requests_sent_at >= _REQUEST_COUNT_EVERY_S:
            self.bus.publish(RequestsDecided(now, self._requests_unsent).encode())
            self._requests_unsent = 0
            self._requests_sent_at = now

    # ---- events in and out -----------------------------------------------------------------

    def _on_event(self, raw: dict[str, Any]) -> None:
        if raw.get("origin") == self.bus.origin and raw.get("k") in (Observation.KIND, Spent.KIND):
            return  # applied already, as an object, by _observe() / _spend()
        event = read_bus_event(raw)
        if event is None:
            self._count_rejection(Rejection.MALFORMED.value)
            return
        if isinstance(event, Spent):
            self.spend.record(event.tenant, event.tokens, event.cost, event.at)
            return
        self._announce_all(self.board.apply(event, self.clock.wall()))
        self._publish_outbox()

    def _count_rejection(self, reason: str) -> None:
        self.metrics.bus_rejected.labels(reason).inc()

    def _announce_all(self, transitions: Iterable[tuple[str, Transition]]) -> None:
        """Every board command's result passes here: its transitions, and its evictions."""
        evicted = self.board.evictions - self._evictions_counted
        if evicted:
            self.metrics.board_evictions.inc(evicted)
            self._evictions_counted = self.board.evictions
        for key, t in transitions:
            # `rungway up` logs transitions once, from its own replica of the board.
            log.debug("circuit %s: %s → %s (%s)", key, t.source.value, t.target.value, t.reason)
            self.metrics.circuit_transitions.labels(self.metrics.endpoint(key), t.target.value).inc()
            # Boards derive state from observations; this event is for dashboards and logs.
            self.bus.publish(CircuitChanged(key, t.at, t.source.value, t.target.value, t.reason).encode())

    def _publish_outbox(self) -> None:
        for event in self.board.drain_outbox():
            self.bus.publish(event.encode())
