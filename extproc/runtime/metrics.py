"""Prometheus metrics (A3): what the processors observe, with bounded label sets.

Workers started by `rungway up` share one registry through prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR), so the supervisor's /metrics shows the whole sidecar: counters
and histograms are summed over the workers (dead ones' files included, so nothing goes back).
The workers keep no gauges, whose multiprocess semantics would need a mode each; the gauges
(circuit state, degradation score, retry budget) are the supervisor's own board, read at scrape.
The exception is a count of what is live in the workers (requests held for an approval): a
`livesum` gauge, which counts live processes only.

Names follow the OpenTelemetry GenAI semantic conventions where one exists, as its Prometheus
exporter writes them (`gen_ai.client.operation.duration` in seconds ->
`gen_ai_client_operation_duration_seconds`, attribute `gen_ai.request.model` -> label
`gen_ai_request_model`); our own are `rungway_*`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..filters.effects import TryEnded
    from ..health.board import Board

# Tenant names come from a request header, and model names from the request body: past this many
# distinct ones per process, further ones are counted as "other" so a noisy or hostile client
# cannot blow up the label sets (each value multiplies every series it appears in). Models the
# policy names are always their own label.
MAX_TENANT_LABELS = 200
MAX_MODEL_LABELS = 200
OTHER = "other"
_Metric = TypeVar("_Metric", Counter, Histogram)

# The GenAI conventions' operation name for a chat completion or message (both APIs we serve).
OPERATION = "chat"
# Bucket boundaries the GenAI conventions advise (durations in s, token counts), so that
# dashboards built on them read ours; token buckets stop at 1M (no answer we relay is larger).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
# Per tenant x task class x rung; the model label is the rung's (folded like every model label).
_TRY_LABELS = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "tenant",
    "task",
    "ladder",
    "rung",
]


class LabelBudget:
    """Label values named by clients: the first `limit` distinct ones (and the pinned ones) are
    their own label; any later one has none (the caller counts it as `other`)."""

    def __init__(self, limit: int, pinned: Iterable[str] = ()) -> None:
        self.limit = limit
        self._pinned = set(pinned)
        self._seen: set[str] = set()

    def pin(self, values: Iterable[str]) -> None:
        self._pinned.update(values)

    def label(self, value: str) -> str | None:
        if value in self._pinned or value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_models: int = MAX_MODEL_LABELS) -> None:
        self._tenants = LabelBudget(MAX_TENANT_LABELS)
        self._models = LabelBudget(max_models)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        kw = {"registry": registry} if registry is not None else {}
        self.decisions = Counter(
            "rungway_decisions_total",
            "Requests decided by the sidecar, by outcome (routed, refused, invalid).",
            ["tenant", "task", "ladder", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.attempts = Counter(
            "rungway_attempts_total",
            "Tries on a rung, by outcome (served, hop, failed, propagated).",
            ["ladder", "rung", "provider", "model", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.trips = Counter(
            "rungway_trips_total",
            "Failed tries, by failure class.",
            ["ladder", "rung", "provider", "model", "reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.served = Counter(
            "rungway_served_total",
            "Answers delivered to clients, by tier and whether degraded.",
            ["tenant", "task", "ladder", "tier", "degraded", "rung"],
            **kw,  # type: ignore[arg-type]
        )
        self.output_tokens = Counter(
            "rungway_output_tokens_total",
            "Output tokens each rung produced (what it bills), by the try or rescue that used it.",
            ["ladder", "rung", "endpoint"],
            **kw,  # type: ignore[arg-type]
        )
        self.rescues = Counter(
            "rungway_stream_rescues_total",
            "Streams cut or stalled after their first token, completed from another rung, by outcome "
            "(rescued, rescue_diverged, rescue_error, rescue_cut, rescue_stalled, rescue_unavailable).",
            ["ladder", "from_rung", "to_rung", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.stream_resets = Counter(
            "rungway_stream_resets_total",
            "Provider resets of rescuable streams at the reset shield: shielded (the stream had begun; "
            "ended cleanly so the try rescues it) or passed (nothing had gone out; reset on as it came).",
            ["provider", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.streams = Counter(
            "rungway_streams_total",
            "Streamed answers by how they ended (complete, finalised, interrupted, cut).",
            ["outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.probe_cost = Counter(
            "rungway_probe_cost_total",
            "What synthetic probes cost (the providers' cost_per_1k units), by the rung probed: no tenant's.",
            ["ladder", "rung", "provider"],
            **kw,  # type: ignore[arg-type]
        )
        self.tier_notices = Counter(
            "rungway_tier_notices_total",
            "Tier-change notices POSTed to tenants' notify_url, by outcome (delivered, failed, dropped).",
            ["tenant", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.tier_changes = Counter(
            "rungway_tier_changes_total",
            "Changes of the tier serving a tenant's task class, as each worker served them: degraded "
            "(below the tier before) or recovered (back up, e.g. to tier 0).",
            ["tenant", "task", "direction"],
            **kw,  # type: ignore[arg-type]
        )
        self.reviews_kept = Counter(
            "rungway_reviews_kept_total",
            "Answers served below tier 0 to tenants that re-run them on recovery (E3), by outcome "
            "(kept; full: the tenant's review.max_per_tenant; too_large; failed: the store).",
            ["tenant", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.budget_reached = Counter(
            "rungway_budget_reached_total",
            "Requests of a tenant over its budget (T4), by the limit reached (tokens, cost, cost_rate) and "
            "what happened (refuse: 429; cheaper: the ladder's cheapest permitted rung).",
            ["tenant", "reason", "action"],
            **kw,  # type: ignore[arg-type]
        )
        self.shadow_checks = Counter(
            "rungway_shadow_checks_total",
            "Continuous verification: live requests also sent to another rung, off the client's path, "
            "by that rung's verdict (ok, slow, a failure class, timeout, unreachable).",
            ["ladder", "rung", "endpoint", "verdict"],
            **kw,  # type: ignore[arg-type]
        )
        self.shadow_cost = Counter(
            "rungway_shadow_cost_total",
            "What shadow calls cost (the providers' cost_per_1k units), by tenant and the rung asked.",
            ["tenant", "ladder", "rung"],
            **kw,  # type: ignore[arg-type]
        )
        self.shadow_skipped = Counter(
            "rungway_shadow_skipped_total",
            "Sampled shadow calls not made, by reason (budget, busy, no_listener, no_loop).",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.shadow_latency = Histogram(
            "rungway_shadow_latency_seconds",
            "A shadow call's whole answer time, by endpoint.",
            ["endpoint"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            **kw,  # type: ignore[arg-type]
        )
        self.circuit_transitions = Counter(
            "rungway_circuit_transitions_total",
            "Circuit state changes seen by this process, by endpoint and new state.",
            ["endpoint", "state"],
            **kw,  # type: ignore[arg-type]
        )
        self.tries_refused = Counter(
            "rungway_tries_refused_total",
            "Tries the attempt filter would not serve (e.g. decided under another policy), by reason.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.bus_rejected = Counter(
            "rungway_bus_events_rejected_total",
            "Health-bus frames (or single events) that changed nothing, by reason: signature, stale, "
            "replayed, size, malformed.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.unauthenticated = Counter(
            "rungway_unauthenticated_total",
            "Requests refused with 401 before any provider was called, by reason.",
            ["reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.channel_refused = Counter(
            "rungway_channel_refused_total",
            "ext_proc streams refused for not carrying Envoy's channel token.",
            **kw,  # type: ignore[arg-type]
        )
        self.key_store_reloads = Counter(
            "rungway_key_store_reloads_total",
            "Times a changed client key store was taken without a restart.",
            **kw,  # type: ignore[arg-type]
        )
        self.escalations = Counter(
            "rungway_escalations_total",
            "Answers held for a person's decision (E2), by outcome at the worker: escalated (stored, "
            "202), unavailable (the store failed, 503). `rungway up` counts the decisions "
            "(rungway_escalation_decisions_total) and webhooks (rungway_escalation_webhooks_total).",
            ["tenant", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.deferred = Counter(
            "rungway_deferred_total",
            "Deferrable requests no permitted rung could serve, by outcome at the worker: accepted "
            "(stored, 202), full (the tenant's deferral.max_per_tenant, 429), unavailable (the store "
            "failed, 503).",
            ["tenant", "outcome"],
            **kw,  # type: ignore[arg-type]
        )
        self.sidecar_errors = Counter(
            "rungway_sidecar_errors_total",
            "Exceptions inside the sidecar that were answered with an error instead of a crash.",
            ["filter"],
            **kw,  # type: ignore[arg-type]
        )

        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: one try on a rung, from its start to its answer's end.",
            [*_TRY_LABELS, "error_type"],
            buckets=DURATION_BUCKETS,
            **kw,  # type: ignore[arg-type]
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from a try's start to the first of its answer reaching the client (a stream's "
            "first token, a whole answer's body), for tries that answered.",
            _TRY_LABELS,
            buckets=TTFT_BUCKETS,
            **kw,  # type: ignore[arg-type]
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per try, by gen_ai_token_type (input, output): the provider's usage, else "
            "our estimate of the prompt and the output events a stream delivered.",
            [*_TRY_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            **kw,  # type: ignore[arg-type]
        )
        self.cost = Counter(
            "rungway_cost",
            "What the tries' tokens cost at the policy's cost_per_1k prices (in their currency).",
            ["tenant", "task", "ladder", "rung", "provider"],
            **kw,  # type: ignore[arg-type]
        )

        self.labels_folded = Counter(
            "rungway_label_values_folded_total",
            "Metric updates whose client-named label value (tenant, model) was folded into 'other'.",
            ["label"],
            **kw,  # type: ignore[arg-type]
        )
        self.board_evictions = Counter(
            "rungway_board_evictions_total",
            "Client-named endpoints the health board forgot to stay within max_client_endpoints.",
            **kw,  # type: ignore[arg-type]
        )
        self.tools_removed = Counter(
            "rungway_tools_removed_total",
            "Tries whose rung was offered fewer tools than the request carried, by the rung's tool mode.",
            ["ladder", "rung", "tool_mode"],
            **kw,  # type: ignore[arg-type]
        )
        self.context_trimmed = Counter(
            "rungway_context_trimmed_total",
            "Tries whose history was trimmed to fit the rung's context window.",
            ["ladder", "rung"],
            **kw,  # type: ignore[arg-type]
        )
        self.requests_shed = Counter(
            "rungway_requests_shed_total",
            "Requests answered 503 + Retry-After at once because the worker had max_in_flight in flight.",
            **kw,  # type: ignore[arg-type]
        )
        # T3: a rung's concurrency limit (policy `capacity`), by why it refused.
        self.rungs_limited = Counter(
            "rungway_rung_limited_total",
            "Rungs dropped from a request's route: no slot for its tenant and impact (reason: rung_full, reserved, tenant_share).",
            ["tenant", "impact", "ladder", "rung", "reason"],
            **kw,  # type: ignore[arg-type]
        )
        self.requests_limited = Counter(
            "rungway_requests_limited_total",
            "Requests answered 503 (429 for tenant_share) + Retry-After because no rung of their route had a slot.",
            ["tenant", "impact", "reason"],
            **kw,  # type: ignore[arg-type]
        )

        # T2: requests held waiting for an operator's approval (routing/hold.py).
        self.approval_held = Gauge(
            "rungway_approval_held_requests",
            "Requests held now waiting for an operator's approval, by tenant.",
            ["tenant"],
            multiprocess_mode="livesum",
            **kw,  # type: ignore[arg-type]
        )
        self.approval_holds = Counter(
            "rungway_approval_holds_total",
            "Requests that waited for an operator's approval, by how the wait ended (routed, expired, "
            "gone: the client left) or full (the tenant had approval_max_held held: refused at once).",
            ["tenant", "outcome"],
            **kw,  # type: ignore[arg-type]
        )

    def try_ended(self, ended: TryEnded, system: str, cost: float) -> None:
        """One try's latency, tokens and cost. `system` is the provider's GenAI system name (its
        API dialect, e.g. openai); `cost` what its tokens cost at the policy's prices."""
        tenant, model = self.tenant(ended.tenant), self.model(ended.model)
        error = ended.failure.value if ended.failure is not None else ""
        labels = (OPERATION, system, model, tenant, ended.task, ended.ladder, str(ended.rung))
        self._child(self.operation_duration, (*labels, error)).observe(ended.duration_s)
        if ended.first_token_s is not None:
            self._child(self.time_to_first_token, labels).observe(ended.first_token_s)
        if ended.input_tokens is not None:
            self._child(self.token_usage, (*labels, "input")).observe(ended.input_tokens)
        if ended.output_tokens is not None:
            self._child(self.token_usage, (*labels, "output")).observe(ended.output_tokens)
        if cost > 0:
            self._child(self.cost, (tenant, ended.task, ended.ladder, str(ended.rung), ended.provider)).inc(cost)

    def _child(self, metric: _Metric, values: tuple[str, ...]) -> _Metric:
        """metric.labels(*values), remembered: looking a child up by its labels costs more than
        recording into it. Bounded like the series themselves (which the registry keeps anyway)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def pin_models(self, names: Iterable[str]) -> None:
        """Models the policy names: always their own label, outside the budget."""
        self._models.pin(names)

    def tenant(self, name: str) -> str:
        """The label for a tenant: its name, or "other" once the label budget is spent."""
        return self._fold("tenant", self._tenants.label(name))

    def model(self, name: str) -> str:
        """The label for a model: its name, or "other" once the label budget is spent."""
        return self._fold("model", self._models.label(name))

    def endpoint(self, key: str) -> str:
        """The label for an endpoint (provider/model), its model folded like `model`."""
        provider, _, model = key.partition("/")
        return f"{provider}/{self.model(model)}"

    def _fold(self, label: str, value: str | None) -> str:
        if value is None:
            self.labels_folded.labels(label).inc()
            return OTHER
        return value


class ProbeMetrics:
    """The prober's own counters (the supervisor's process; probes are never tenant traffic).
    Labels are bounded: endpoints by the probe targets (whose client-named models are folded
    like the workers' model labels: targets change over time), outcomes by the failure classes."""

    def __init__(self, pinned_models: Iterable[str] = ()) -> None:
        self._models = LabelBudget(MAX_MODEL_LABELS, pinned_models)
        # Registered into each scrape's registry by the supervisor, next to the workers' metrics.
        self.probes = Counter(
            "rungway_probes_total",
            "Synthetic probes sent, by endpoint and outcome (ok, a failure class, unanswered, error).",
            ["endpoint", "outcome"],
            registry=None,
        )

    def endpoint(self, key: str) -> str:
        provider, _, model = key.partition("/")
        return f"{provider}/{self._models.label(model) or OTHER}"


_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class BoardCollector(Collector):
    """The health board's view as gauges, read at scrape time (served by `rungway up`)."""

    def __init__(self, board: Board, wall: Callable[[], float]) -> None:
        self._board = board
        self._wall = wall

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._wall()
        snapshot = self._board.snapshot(now)
        state = GaugeMetricFamily(
            "rungway_circuit_state", "Circuit per rung endpoint: 0 closed, 1 half-open, 2 open.", labels=["endpoint"]
        )
        score = GaugeMetricFamily(
            "rungway_degradation_score",
            "Degradation score per rung endpoint (1 healthy, 0 unusable).",
            labels=["endpoint"],
        )
        p95 = GaugeMetricFamily(
            "rungway_latency_p95_seconds", "p95 latency over the score window.", labels=["endpoint"]
        )
        quota = GaugeMetricFamily(
            "rungway_quota_exhausted", "1 while a provider's rate limit says it has nothing left.", labels=["endpoint"]
        )
        for rung in snapshot["rungs"]:
            key = rung["endpoint"]
            state.add_metric([key], _STATE_VALUE.get(str(rung["circuit"]["state"]), 0.0))
            score.add_metric([key], float(rung["score"]))
            if rung["p95_s"] is not None:
                p95.add_metric([key], float(rung["p95_s"]))
            quota.add_metric([key], 1.0 if rung["quota_until"] else 0.0)
        budget = snapshot["retry_budget"]
        retries = GaugeMetricFamily(
            "rungway_retry_budget_used_ratio", "Extra tries over the fleet's allowance in the budget window."
        )
        retries.add_metric([], budget["retries"] / budget["allowed"] if budget["allowed"] else 0.0)
        yield from (state, score, p95, quota, retries)


def stream_summary(families: Iterable[Metric]) -> dict[str, object]:
    """/status's view of streamed answers from the workers' counters: how streams ended, and
    each rescue path (from rung → to rung) by outcome, so an operator sees which rung rescued."""
    ended: dict[str, float] = {}
    rescues: dict[tuple[str, str, str], dict[str, float]] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == "rungway_streams_total":
                outcome = sample.labels["outcome"]
                ended[outcome] = ended.get(outcome, 0.0) + sample.value
            elif sample.name == "rungway_stream_rescues_total":
                path = (sample.labels["ladder"], sample.labels["from_rung"], sample.labels["to_rung"])
                by_outcome = rescues.setdefault(path, {})
                outcome = sample.labels["outcome"]
                by_outcome[outcome] = by_outcome.get(outcome, 0.0) + sample.value
    return {
        "ended": {k: int(v) for k, v in sorted(ended.items())},
        "rescues": [
            {"ladder": ladder, "from_rung": int(src), "to_rung": int(dst), **{k: int(v) for k, v in sorted(o.items())}}
            for (ladder, src, dst), o in sorted(rescues.items())
        ],
    }


class EnvoyRestarts(Collector):
    """How often `rungway up` had to restart Envoy, and the requests lost with it."""

    def __init__(self) -> None:
        self.count = 0
        self.lost = 0
        self.in_flight = 0  # Envoy's downstream requests in flight, as last seen
        self.last: dict[str, object] | None = None

    def note(self, exit_reason: str, at: float) -> int:
        lost = self.in_flight
        self.count += 1
        self.lost += lost
        self.in_flight = 0
        self.last = {"at": at, "exit": exit_reason, "requests_lost": lost}
        return lost

    def snapshot(self) -> dict[str, object]:
        return {"restarts": self.count, "requests_lost": self.lost, "last_restart": self.last}

    def collect(self) -> Iterator[CounterMetricFamily]:
        restarts = CounterMetricFamily("rungway_envoy_restarts", "Times rungway up had to restart a dead Envoy.")
        restarts.add_metric([], float(self.count))
        lost = CounterMetricFamily(
            "rungway_envoy_requests_lost", "Requests in flight at Envoy when it died (as last seen, once a second)."
        )
        lost.add_metric([], float(self.lost))
        yield from (restarts, lost)
