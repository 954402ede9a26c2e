"""The downstream filter: one processor per client request, deciding the ladder.

Envoy's json_to_metadata has already lifted the body's model / stream / JSON-mode fields into
metadata, so most requests are decided on the request-headers message alone; the body is asked
for only when the answer depends on whether the request carries tools.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from ..audit import Entry, Kind, prompt_hash
from ..core import CLIENT_STATUS, Decision, DeferredTask, Dialect, Failure, Impact, PassedThrough, Refused
from ..core.names import (
    ANTHROPIC_MESSAGES_PATH,
    CLUSTER_HEADER,
    ESCALATION_HEADER,
    INVALID,
    META_DECISION,
    META_REQUEST,
    MISSING,
    OPENAI_CHAT_PATH,
    PEER_ATTRIBUTE,
    POLICY_VERSION,
    PROBE_HEADER,
    PROBE_TENANT,
    REPLAY_HEADER,
    RERUN_HEADER,
    TASKS_PATH,
    UNAUTHENTICATED_TENANT,
    cluster_name,
    direct_cluster,
    endpoint_key,
)
from ..deferral import deferrable, may_wait
from ..escalation import armed, hands_off
from ..identity import Identity, Unknown
from ..routing.capacity import Denial, Holder
from ..routing.hold import (
    CHECK_EVERY_S,
    ENVOY_MARGIN_S,
    HoldOutcome,
    awaits_approval,
    hold_until,
    holds_full,
    remaining_timeout_s,
)
from ..routing.ladder import NeedBody, Refusal, RequestFeatures, Route, choose, reroute
from ..translate import api_pair, load_json, provider_header_scrub, redact_error_body, render_error
from .caller import foreign_headers, identify, repeated_credential
from .deferral import deferral, task_answer, task_id_of
from .effects import (
    Arrived,
    Audited,
    BudgetReached,
    CapacityShed,
    Decided,
    Effect,
    HalfOpenAdmitted,
    HoldEnded,
    HoldStarted,
    RequestCounted,
    RescueItem,
    RungLimited,
    SlotReserved,
    TaskQueried,
    Unauthenticated,
)
from .flags import own_answer_headers
from .shed import over_capacity, shed
from .wire import (
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    attributes,
    common,
    header_map,
    immediate,
    namespace,
    request_body_response,
    request_headers_response,
    response_body_response,
    response_headers_response,
    wait_longer,
    with_metadata,
    with_mode,
)
from .worker import Worker

_ASK_FOR_BODY = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.BUFFERED,
    response_header_mode=Mode.SKIP,
    response_body_mode=Mode.NONE,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
# A passed-through request: its answer is read (headers, and the body whole: model lists and
# token counts are small) so that nothing of the provider's key reaches the client.
_READ_THE_ANSWER = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.NONE,
    response_header_mode=Mode.SEND,
    response_body_mode=Mode.BUFFERED,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
# Headers a deferred request's replay must carry again (never a credential).
_REPLAYED_HEADERS = ("anthropic-version", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class _DeferNow:
    """No permitted rung can serve this deferrable request now: store it, answer 202."""

    reason: Failure


@dataclass(frozen=True, slots=True)
class _Held:
    """A request held for an operator's approval (routing/hold.py): Envoy waits for the answer
    to the message it sent last (the headers, or the body)."""

    until: float  # monotonic: then the refusal is sent
    refusal: Refusal  # what the client reads if no approval comes
    body_phase: bool


# How a client's error message names the limit a tenant reached (routing/spend.py's reasons).
_BUDGET_NAMES = {"tokens": "token", "cost": "cost", "cost_rate": "cost-per-minute"}


class DecideProcessor:
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._policy = worker.policy
        self._effects: list[Effect] = []
        self._features: RequestFeatures | None = None
        self._dialect = Dialect.OPENAI
        self._include_usage = False
        self._response_format = ""
        self._anthropic: dict[str, str] = {}
        self._identity: Identity | None = None
        self._scrub: list[str] = []
        self._status = 0
        self._path = ""
        self._replay: str | None = None  # the task id, when this request replays a deferred one
        self._rerun: str | None = None  # the review id, when this request re-runs a degraded answer (E3)
        # A replay after a person's decision on an escalation (E2): never escalated again; a
        # redirect pins it to one rung.
        self._reviewed = False
        # ladder.choose's Route from the headers, when one was needed there (_shed_at_once).
        self._chosen: Route | None = None
        self._pin: int | None = None
        self._deferring: Failure | None = None  # why, once decided to defer (awaiting the body)
        self._request_id: str | None = None  # for the audit trail, when it is on
        self._prompt_hash: str | None = None
        self._arrived_at = 0.0  # monotonic: a held request's route timeout counts from here
        self._held: _Held | None = None
        self._held_s = 0.0  # how long the request was held for an approval, once it was

    def dispatch(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        # An answer that waits on the runtime's I/O (a deferral's store write, a task lookup)
        # is None here: the runtime sends it (runtime/server.py, the effect says which).
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            answer = self.request_headers(request)
            return [answer] if answer is not None else []
        if kind == "request_body":
            answer = self.request_body(request)
            return [answer] if answer is not None else []
        if kind == "response_headers" and self._identity is not None:
            return [self.response_headers(request)]
        if kind == "response_body" and self._identity is not None:
            return [self.response_body(request)]
        raise ValueError(f"decide does not process {kind}")

    def drain_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    def deadline(self) -> float | None:
        # Every message is answered at once, but for a request held for an approval: it is
        # decided again every CHECK_EVERY_S, under the approvals in force then.
        if self._held is None:
            return None
        return min(self._held.until, self._worker.clock.now() + CHECK_EVERY_S)

    def on_rescue(self, item: RescueItem) -> list[ProcessingResponse]:
        return []  # decide never rescues

    def rescuing(self) -> bool:
        return False

    def on_deadline(self) -> list[ProcessingResponse]:
        held = self._held
        if held is None:
            return []
        f = self._features
        assert f is not None
        self._features = replace(f, approved_tier=self._approved_tier(f.tenant, f.task))
        result = self._route()
        now = self._worker.clock.now()
        if isinstance(result, Route):
            self._end_hold(HoldOutcome.ROUTED, now)
            return [self._answer(result, body_phase=held.body_phase)]
        if isinstance(result, NeedBody):  # an approved rung refuses tools: the body says
            self._end_hold(HoldOutcome.ROUTED, now)
            return [with_mode(request_headers_response(), _ASK_FOR_BODY)]
        if isinstance(result, CapacityShed):
            self._end_hold(HoldOutcome.ROUTED, now)
            return [self._over_capacity(result)]
        # Still refused (or deferrable only now: its body was not kept): wait on, up to `until`.
        if now < held.until:
            return []
        self._end_hold(HoldOutcome.EXPIRED, now)
        return [self._answer(result if isinstance(result, Refusal) else held.refusal, body_phase=held.body_phase)]

    def on_close(self) -> None:
        if self._held is not None:  # the client went away (or Envoy ended the stream) while held
            self._end_hold(HoldOutcome.GONE, self._worker.clock.now())

    def on_failure(self) -> None:
        pass

    def request_headers(self, request: ProcessingRequest) -> ProcessingResponse | None:
        if self._worker.overloaded():  # load shedding: before any other work (filters/shed.py)
            answer, effect = shed(request, self._policy)
            self._effects.append(effect)
            return answer
        policy = self._policy
        worker = self._worker
        self._arrived_at = worker.clock.now()
        headers = header_map(request.request_headers)
        path = headers.get(":path", "").split("?", 1)[0]
        self._path = path
        self._dialect = Dialect.ANTHROPIC if path == ANTHROPIC_MESSAGES_PATH else Dialect.OPENAI
        peer = str(attributes(request).get(PEER_ATTRIBUTE, ""))
        probe = headers.get(PROBE_HEADER)
        if probe is not None:
            # `rungway up`'s synthetic probe: its token is its credential.
            token = probe.partition(" ")[0].encode()
            # Bytes: compare_digest refuses non-ASCII text, and the header is the client's to choose.
            genuine = secrets.compare_digest(token, worker.probe_token.encode())
            who = Identity(PROBE_TENANT, "", self._dialect) if genuine else Unknown.UNKNOWN
        elif (replay := headers.get(REPLAY_HEADER)) is not None:
            who = self._replay_identity(replay)
            if self._replay is not None:
                self._review(headers.get(ESCALATION_HEADER))
        elif (rerun := headers.get(RERUN_HEADER)) is not None:
            who = self._rerun_identity(rerun)
        else:
            names = (h.key for h in request.request_headers.headers.headers)
            repeated = repeated_credential(names)
            who = identify(policy, worker.key_store, headers, peer, worker.clock.wall(), repeated=repeated)
        if isinstance(who, Unknown):
            self._effects.append(Unauthenticated(who.name.lower()))
            return self._refuse(Failure.UNAUTHENTICATED, who.value, "unauthenticated")
        self._identity = who
        self._scrub = foreign_headers(headers, policy)
        if path.startswith(TASKS_PATH) and headers.get(":method") == "GET":
            return self._query_task(path)
        if path not in (OPENAI_CHAT_PATH, ANTHROPIC_MESSAGES_PATH):
            return self._pass_through(headers)
        if probe is None:
            self._effects.append(Arrived())  # in flight from now (load shedding)
        fields = namespace(request, META_REQUEST)
        model = fields.get("model")
        if model == INVALID:
            return self._refuse(Failure.CLIENT_ERROR, "the request body is not a valid JSON object", "invalid")
        if not isinstance(model, str) or model == MISSING or not model:
            return self._refuse(Failure.CLIENT_ERROR, "the request needs a JSON body with a 'model' field", "invalid")
        task = headers.get(policy.task_header) or policy.default_task
        if task not in policy.tasks:
            task = policy.default_task
        length = headers.get("content-length")
        max_tokens = fields.get("max_tokens", fields.get("max_completion_tokens"))
        if max_tokens is not None and not _is_token_count(max_tokens):
            return self._refuse(Failure.CLIENT_ERROR, "max_tokens must be a positive integer", "invalid")
        self._features = RequestFeatures(
            dialect=self._dialect,
            model=model,
            stream=fields.get("stream") is True,
            json_mode=fields.get("response_format") in ("json_object", "json_schema"),
            max_tokens=int(max_tokens) if isinstance(max_tokens, float) else None,
            body_bytes=int(length) if length and length.isdigit() else None,
            tenant=who.tenant,
            task=task,
            impact=policy.impact_for(who.tenant, task, headers.get(policy.impact_header)),
            approved_tier=self._approved_tier(who.tenant, task),
        )
        self._include_usage = fields.get("include_usage") is True
        # An Anthropic client's API version and betas, for rungs that speak Anthropic too
        # (the attempt filter scrubs provider headers on every try).
        self._anthropic = {name: headers[name] for name in ("anthropic-version", "anthropic-beta") if name in headers}
        self._response_format = str(fields.get("response_format", ""))
        if probe is not None:
            return self._answer(self._probe_route(probe), body_phase=False)
        budget = policy.tenant(who.tenant).budget
        over = worker.over_budget(who.tenant, budget) if budget is not None else None
        if budget is not None and over is not None:
            self._effects.append(BudgetReached(who.tenant, over.reason, budget.over))
            if budget.over == "refuse" and self._may_defer and may_wait(policy, self._features):
                # Deferrable work waits for the budget's next window instead (the drainer's
                # replays are refused 429 until then and wait out its Retry-After).
                self._deferring = Failure.BUDGET_EXCEEDED
                return with_mode(request_headers_response(), _ASK_FOR_BODY)
            if budget.over == "refuse":
                message = (
                    f"tenant {who.tenant!r} has reached its {_BUDGET_NAMES[over.reason]} budget "
                    f"({over.spent:g} of {over.limit:g}); retry after {over.retry_after_s}s"
                )
                return self._refuse(Failure.BUDGET_EXCEEDED, message, "over_budget", retry_after=over.retry_after_s)
            self._features = replace(self._features, cheapest_only=True)
        if self._worker.auditing:
            # Every audit record names the request (Envoy's x-request-id) and, unless the policy
            # says not to, the hash of its body: decided on the body, then.
            self._request_id = headers.get("x-request-id", "")
            if policy.audit.prompt_hash:
                # A request no rung has a slot for is shed now: a shed is no audited decision,
                # and reading its body would make a noisy tenant's flood of them dearer (T3).
                if (no_slot := self._shed_at_once()) is not None:
                    return self._over_capacity(no_slot)
                return with_mode(request_headers_response(), _ASK_FOR_BODY)
        result = self._route()
        if isinstance(result, NeedBody):
            return with_mode(request_headers_response(), _ASK_FOR_BODY)
        if isinstance(result, _DeferNow):
            self._deferring = result.reason  # the body is what gets stored
            return with_mode(request_headers_response(), _ASK_FOR_BODY)
        if isinstance(result, CapacityShed):
            return self._over_capacity(result)
        if isinstance(result, Refusal) and (held := self._hold(result, body_phase=False)) is not None:
            return held
        return self._answer(result, body_phase=False)

    def request_body(self, request: ProcessingRequest) -> ProcessingResponse | None:
        assert self._features is not None
        if self._request_id is not None:
            self._prompt_hash = prompt_hash(request.request_body.body)
        if self._deferring is not None:
            return self._defer(request.request_body.body, self._deferring)
        try:
            body = load_json(request.request_body.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._refuse(Failure.CLIENT_ERROR, "the request body is not a valid JSON object", "invalid")
        self._features = replace(self._features, has_tools=bool(body.get("tools")))
        result = self._route()
        assert not isinstance(result, NeedBody)
        if isinstance(result, _DeferNow):
            return self._defer(request.request_body.body, result.reason)
        if isinstance(result, CapacityShed):
            return self._over_capacity(result)
        if isinstance(result, Refusal) and (held := self._hold(result, body_phase=True)) is not None:
            return held
        return self._answer(result, body_phase=True)

    @property
    def _may_defer(self) -> bool:
        """Rungway's own replays and re-runs are never deferred again."""
        return self._replay is None and self._rerun is None

    def _rerun_identity(self, header: str) -> Identity | Unknown:
        """`token tenant review-id`: `rungway up` re-runs a degraded answer on its tenant's
        behalf (E3; the client's key is never stored); its token is the probes' secret."""
        token, _, rest = header.partition(" ")
        tenant, _, review_id = rest.rpartition(" ")
        if not secrets.compare_digest(token.encode(), self._worker.probe_token.encode()) or not tenant or not review_id:
            return Unknown.UNKNOWN
        self._rerun = review_id
        return Identity(tenant, "", self._dialect)

    def _pinned_to_tier_0(self, route: Route) -> Route | Refusal:
        """A re-run goes to its ladder's tier-0 rung or nowhere: never a fallback (E3)."""
        f = self._features
        assert f is not None
        if route.rungs[0] != 0 or self._policy.tier_of(route.ladder, 0) != 0:
            return Refusal(Failure.SERVER_ERROR, "the tier-0 rung cannot serve this re-run now", transient=True)
        return reroute(self._policy, route, (0,), f.stream, skip_reason=None, canary=False)

    def _approved_tier(self, tenant: str, task: str) -> int | None:
        # Only a tenant whose policy asks for approvals has its approvals looked up.
        if self._policy.tenant(tenant).approval_beyond_tier is None:
            return None
        return self._worker.approvals.approved_tier(tenant, task, self._worker.clock.wall())

    def _hold(self, refusal: Refusal, *, body_phase: bool) -> ProcessingResponse | None:
        """Hold a refused request that an approval could let through, when the tenant's policy
        says to wait for one (routing/hold.py): Envoy is asked to wait for the answer instead."""
        f = self._features
        assert f is not None
        policy = self._policy
        if not self._may_defer or self._held_s or not awaits_approval(policy, f, refusal):
            return None
        now = self._worker.clock.now()
        until = hold_until(policy, f.tenant, now)
        if until is None:
            return None
        if holds_full(policy, f.tenant, self._worker.held(f.tenant)):
            self._effects.append(HoldEnded(f.tenant, HoldOutcome.FULL))
            return None
        self._held = _Held(until, refusal, body_phase)
        self._effects.append(HoldStarted(f.tenant))
        return wait_longer(until - now + ENVOY_MARGIN_S)

    def _end_hold(self, outcome: HoldOutcome, now: float) -> None:
        f = self._features
        assert f is not None and self._held is not None
        self._held = None
        self._held_s = max(now - self._arrived_at, 1e-3)
        self._effects.append(HoldEnded(f.tenant, outcome))

    def _replay_identity(self, header: str) -> Identity | Unknown:
        """`token tenant task-id`: `rungway up` replays a deferred request on its tenant's behalf
        (the client's key is never stored); its token is the probes' secret."""
        token, _, rest = header.partition(" ")
        tenant, _, task_id = rest.rpartition(" ")
        if not secrets.compare_digest(token.encode(), self._worker.probe_token.encode()) or not tenant or not task_id:
            return Unknown.UNKNOWN
        self._replay = task_id
        return Identity(tenant, "", self._dialect)

    def _review(self, header: str | None) -> None:
        """A replay's escalation header (only `rungway up`'s replays carry one): `reviewed`, or
        `rung=N` for a redirect to rung N of the request's ladder."""
        if header is None:
            return
        self._reviewed = True
        value = header.removeprefix("rung=")
        if value != header and value.isascii() and value.isdigit():
            self._pin = int(value)

    def _pinned(self, route: Route | Refusal | NeedBody) -> Route | Refusal | NeedBody:
        """A redirect's route: the named rung alone, whatever the health board thinks of it (a
        person chose it), if the tenant's rules permit it for this request."""
        f = self._features
        assert f is not None and self._pin is not None
        permitted = choose(self._policy, f, None)
        if isinstance(permitted, NeedBody):
            return permitted
        if isinstance(permitted, Route) and self._pin in permitted.rungs:
            return reroute(self._policy, permitted, (self._pin,), f.stream)
        return Refusal(Failure.NOT_PERMITTED, f"rung {self._pin} may not serve this request under the tenant's policy")

    def _query_task(self, path: str) -> ProcessingResponse | None:
        """A deferred task's state or answer, for its own tenant only (the runtime reads it)."""
        who = self._identity
        assert who is not None
        self._dialect = who.dialect
        policy = self._policy
        task_id = task_id_of(path)
        if task_id is None or policy.deferral is None:
            return task_answer(None, path.removeprefix(TASKS_PATH)[:64], who.tenant, who.dialect, policy.stamp)
        self._effects.append(TaskQueried(who.tenant, task_id, who.dialect, policy.stamp))
        return None

    def _defer(self, raw: bytes, reason: Failure) -> ProcessingResponse | None:
        """Hand the request to the runtime to store; it answers 202 only once it is stored."""
        f = self._features
        policy = self._policy
        assert f is not None and policy.deferral is not None
        try:
            body = load_json(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._refuse(Failure.CLIENT_ERROR, "the request body is not a valid JSON object", "invalid")
        task = DeferredTask(
            id="task_" + secrets.token_urlsafe(18),
            tenant=f.tenant,
            task=f.task,
            impact=f.impact,
            dialect=f.dialect,
            path=self._path,
            model=f.model,
            headers=tuple((name, self._anthropic[name]) for name in _REPLAYED_HEADERS if name in self._anthropic),
            body=bytes(raw),
            accepted_at=self._worker.clock.wall(),
        )
        self._effects.append(Decided(f.tenant, f.task, "", "deferred", policy.stamp))
        entry = None
        if self._worker.auditing:
            entry = Entry(
                at=task.accepted_at,
                kind=Kind.DEFERRAL,
                tenant=f.tenant,
                task=f.task,
                policy=policy.stamp,
                request_id=self._request_id or "",
                prompt_hash=self._prompt_hash or "",
                detail={"task_id": task.id, "reason": reason.value},
            )
        self._effects.append(deferral(task, policy.deferral.max_per_tenant, reason, policy.stamp, entry))
        return None

    def _route(self) -> Route | Refusal | NeedBody | _DeferNow | CapacityShed:
        """The ladder choice, shaped by the health board: unwell rungs skipped, a canary share
        sent to fallback rungs, no retries once the fleet's retry budget is spent."""
        f = self._features
        assert f is not None
        worker = self._worker
        # The headers' choice (_shed_at_once) stands: a Route chosen without the body never
        # depended on the tools the body names.
        result = self._chosen or choose(self._policy, f, worker.health_view(f.impact))
        if self._pin is not None:
            result = self._pinned(result)
        if self._may_defer and deferrable(self._policy, f, result):
            return _DeferNow(Failure.NOT_PERMITTED if isinstance(result, Refusal) else Failure.SERVER_ERROR)
        if not isinstance(result, Route):
            return result
        if self._rerun is not None:
            pinned = self._pinned_to_tier_0(result)
            if isinstance(pinned, Refusal):
                return pinned
            result = pinned
        health = self._policy.health
        if (
            self._rerun is None
            and health.enabled
            and health.canary_share > 0
            and f.impact is not Impact.REVENUE_CRITICAL
            and result.skip_reason is None
            and len(result.rungs) > 1
            and not worker.half_open(self._first_endpoint(result))
            and worker.rng.random() < health.canary_share
        ):
            result = reroute(self._policy, result, result.rungs[1:], f.stream, canary=True)
        limited = self._within_capacity(result)
        if isinstance(limited, CapacityShed):
            # A request that may wait waits (stored, 202) rather than being shed (T3 with E1).
            return _DeferNow(Failure.RATE_LIMITED) if self._may_defer and may_wait(self._policy, f) else limited
        result = limited
        if result.tries > 1 and not worker.retries_allowed():
            result = replace(result, tries=1)
        self._effects.append(SlotReserved(result.ladder, result.rungs[0], f.tenant, f.impact))
        if health.enabled and health.circuit.live_half_open and worker.half_open(first := self._first_endpoint(result)):
            # The health view let it through: this request holds one of the circuit's probe slots.
            self._effects.append(HalfOpenAdmitted(first))
        self._effects.append(RequestCounted())
        return result

    def _shed_at_once(self) -> CapacityShed | None:
        """The shed `_route` would come to, known from the headers alone; None when the request
        may get a slot, or may be deferred, held, pinned or re-run instead (decided on the body)."""
        f = self._features
        assert f is not None
        if self._pin is not None or self._rerun is not None or (self._may_defer and may_wait(self._policy, f)):
            return None
        result = choose(self._policy, f, self._worker.health_view(f.impact))
        if not isinstance(result, Route) or (self._may_defer and deferrable(self._policy, f, result)):
            return None
        self._chosen = result  # decided again on the body only by what the body adds
        mark = len(self._effects)
        limited = self._within_capacity(result)
        if isinstance(limited, CapacityShed):
            return limited
        del self._effects[mark:]  # counted again when the body's decision is taken
        return None

    def _shadowed(self, route: Route) -> bool:
        """Whether this request is in the continuous-verification sample (never a probe's)."""
        share = self._policy.shadow.share
        ladder = self._policy.ladders[route.ladder]
        return (
            share > 0
            and not route.probe
            and self._rerun is None
            and len(ladder) > 1
            and self._worker.rng.random() < share
        )

    def _within_capacity(self, route: Route) -> Route | CapacityShed:
        """The route without the rungs that have no slot for this tenant and impact (T3)."""
        f = self._features
        assert f is not None
        holder = Holder(f.tenant, f.impact)
        kept: list[int] = []
        denials: list[Denial] = []
        for i in route.rungs:
            denial = self._worker.capacity(route.ladder, i, holder)
            if denial is None:
                kept.append(i)
            else:
                denials.append(denial)
                self._effects.append(RungLimited(route.ladder, i, f.tenant, f.impact, denial.value))
        if not denials:
            return route
        if not kept:
            # The reason that says most: the tenant's own share, then slots kept for others.
            why = next(d for d in (Denial.TENANT_SHARE, Denial.RESERVED, Denial.RUNG_FULL) if d in denials)
            return CapacityShed(f.tenant, f.impact, why.value)
        skip = route.skip_reason
        if kept[0] != route.rungs[0] and skip is None:
            skip = Failure.RATE_LIMITED  # the first rung is at its concurrency limit for this request
        return reroute(self._policy, route, tuple(kept), f.stream, skip_reason=skip)

    def _over_capacity(self, shed: CapacityShed) -> ProcessingResponse:
        f = self._features
        assert f is not None
        self._effects.append(shed)
        self._effects.append(Decided(f.tenant, f.task, "", "shed", self._policy.stamp))
        tenant_share = shed.reason == Denial.TENANT_SHARE
        why = (
            f"tenant {f.tenant!r} holds its share of every rung that could serve this request"
            if tenant_share
            else f"no rung has capacity for {f.impact.value} requests now"
        )
        return over_capacity(self._policy, self._dialect, f.tenant, f.task, why, tenant_share=tenant_share)

    def _first_endpoint(self, route: Route) -> str:
        assert self._features is not None
        first = self._policy.ladders[route.ladder][route.rungs[0]]
        return endpoint_key(first.provider, first.model_for(self._features.model))

    def _probe_route(self, header: str) -> Route | Refusal:
        """`token ladder rung`: a synthetic probe of one rung (its token was checked already)."""
        ladder, _, index = header.partition(" ")[2].partition(" ")
        rungs = self._policy.ladders.get(ladder)
        if rungs is None or not index.isascii() or not index.isdigit():
            return Refusal(Failure.CLIENT_ERROR, "invalid probe")
        i = int(index)
        if i >= len(rungs):
            return Refusal(Failure.CLIENT_ERROR, "invalid probe")
        return Route(
            ladder=ladder,
            rungs=(i,),
            cluster=cluster_name(ladder, (i,), False),
            tries=1,
            skip_reason=None,
            probe=True,
        )

    def _answer(self, result: Route | Refusal, *, body_phase: bool) -> ProcessingResponse:
        f = self._features
        assert f is not None
        if isinstance(result, Refusal):
            if self._request_id is not None and result.failure is not Failure.CLIENT_ERROR:
                self._audit_refusal(result)  # no rung may serve it (a malformed request is not a decision)
            return self._refuse(result.failure, result.message, "refused", ladder="")
        policy = self._policy
        if not result.probe:  # probes are counted by the prober (rungway_probes_total), never as a tenant's
            self._effects.append(Decided(f.tenant, f.task, result.ladder, "routed", policy.stamp))
        routing = {CLUSTER_HEADER: result.cluster, "x-envoy-max-retries": str(result.tries - 1)}
        started = self._worker.clock.now()
        if self._held_s and (left := remaining_timeout_s(policy, self._held_s)) is not None:
            # Envoy's route timer starts only now: what the hold spent comes off it.
            routing["x-envoy-upstream-rq-timeout-ms"] = str(max(1, round(left * 1000)))
            started = self._arrived_at
        c = common(routing, remove=self._scrub)
        response = request_body_response(c) if body_phase else request_headers_response(c)
        anthropic = self._anthropic if f.dialect is Dialect.ANTHROPIC else {}
        decision = Decision(
            policy=policy.stamp,
            ladder=result.ladder,
            rungs=result.rungs,
            cluster=result.cluster,
            tries=result.tries,
            tenant=f.tenant,
            task=f.task,
            impact=f.impact,
            dialect=f.dialect,
            model=f.model,
            stream=f.stream,
            include_usage=self._include_usage,
            body_bytes=f.body_bytes or 0,
            skip=result.skip_reason,
            canary=result.canary,
            probe=result.probe,
            response_format=self._response_format,
            anthropic_version=anthropic.get("anthropic-version"),
            anthropic_beta=anthropic.get("anthropic-beta"),
            decided_ms=started * 1000,
            shadow=self._shadowed(result),
            request_id=self._request_id,
            prompt_hash=self._prompt_hash,
            rerun=self._rerun is not None,
            # Never a replay (its drainer keeps the deferred task: an escalation would be a new
            # task its client never hears of, the replay's 202 replayed again) nor a re-run.
            escalate=(
                armed(policy, f.tenant, f.task, f.impact, stream=f.stream, probe=result.probe, reviewed=self._reviewed)
                is not None
                or hands_off(policy, f.task, stream=f.stream, probe=result.probe, reviewed=self._reviewed)
            )
            and self._may_defer,
        )
        return with_metadata(response, META_DECISION, decision.encode())

    def _audit_refusal(self, refusal: Refusal) -> None:
        f = self._features
        assert f is not None
        entry = Entry(
            at=self._worker.clock.wall(),
            kind=Kind.REFUSED,
            tenant=f.tenant,
            task=f.task,
            trigger=refusal.failure.value,
            policy=self._policy.stamp,
            request_id=self._request_id or "",
            prompt_hash=self._prompt_hash or "",
            detail={"message": refusal.message},
        )
        self._effects.append(Audited(entry))

    def _pass_through(self, headers: dict[str, str]) -> ProcessingResponse:
        """Another path of a provider's API (model lists, token counting): untranslated, to the
        provider of the dialect the caller's key came in, with that provider's key only."""
        who = self._identity
        assert who is not None
        policy = self._policy
        self._dialect = who.dialect
        method, path = headers.get(":method", ""), headers.get(":path", "/")
        if not policy.passthrough.allows(method, path):
            message = f"{method} {path.split('?', 1)[0]} is not served through Rungway (policy passthrough.paths)"
            return self._refuse(Failure.CLIENT_ERROR, message, "refused")
        name = policy.passthrough_provider(who.dialect)
        if name is None:
            message = f"no {who.dialect.value} provider is configured for {headers.get(':path', '')!r}"
            return self._refuse(Failure.CLIENT_ERROR, message, "refused")
        provider = policy.providers[name]
        rules = policy.tenant(who.tenant)
        if rules.regions is not None and provider.region not in rules.regions:
            # A pass-through carries the prompt too (count_tokens): residency holds here as well.
            region = provider.region or "unknown"
            reason = f"{rules.message}: region {region} is outside tenant {who.tenant!r}'s residency"
            return self._refuse(Failure.NOT_PERMITTED, reason, "refused")
        pair = api_pair(who.dialect, provider.dialect)
        set_headers = {
            CLUSTER_HEADER: direct_cluster(name),
            ":path": provider.path_prefix.removesuffix("/v1") + headers.get(":path", "/"),
            **pair.auth_headers(
                self._worker.key_for(name),
                anthropic_version=headers.get("anthropic-version"),
                anthropic_beta=headers.get("anthropic-beta"),
            ),
            **{k.lower(): v for k, v in provider.headers.items()},
        }
        self._effects.append(Decided(who.tenant, policy.default_task, "", "passthrough", policy.stamp))
        c = common(set_headers, remove=[n for n in self._scrub if n not in set_headers])
        # The provider's answer is read too: its headers and an error body may echo the key.
        response = with_mode(request_headers_response(c), _READ_THE_ANSWER)
        return with_metadata(response, META_DECISION, PassedThrough(who.tenant, name).encode())

    def response_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        """A passed-through answer's headers: cookies dropped, key-shaped values redacted."""
        headers = header_map(request.response_headers)
        self._status = int(headers.get(":status", "0") or 0)
        scrub = provider_header_scrub(headers)
        # An error body may be rewritten (redacted): its length is then not the provider's.
        remove = (*scrub.remove, "content-length") if self._status >= 400 else scrub.remove
        # Every answer names the revision that decided it, a passed-through one too.
        return response_headers_response(common({**scrub.replace, POLICY_VERSION: self._policy.stamp}, remove))

    def response_body(self, request: ProcessingRequest) -> ProcessingResponse:
        """A passed-through error body without anything shaped like a key (a success passes)."""
        body = request.response_body.body
        if self._status < 400:
            return response_body_response()
        clean = redact_error_body(body)
        return response_body_response(common(body=clean) if clean != body else None)

    def _refuse(
        self, failure: Failure, message: str, outcome: str, ladder: str = "", retry_after: int | None = None
    ) -> ProcessingResponse:
        policy = self._policy
        f = self._features
        tenant = f.tenant if f else (self._identity.tenant if self._identity else UNAUTHENTICATED_TENANT)
        task = f.task if f else policy.default_task
        self._effects.append(Decided(tenant, task, ladder, outcome, policy.stamp))
        headers = own_answer_headers(failure, policy.stamp)
        if failure is Failure.NOT_PERMITTED:
            headers["x-should-retry"] = "false"  # the tenant's policy, not a passing outage
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
            if retry_after > 60:  # SDKs would retry at once and be refused again
                headers["x-should-retry"] = "false"
        # The status agrees with the error type render_error picks for the failure.
        response = immediate(CLIENT_STATUS[failure], headers, render_error(self._dialect.value, failure, message))
        # Marks the answer as already rendered, so Envoy's local-reply mappers leave it alone.
        return with_metadata(response, META_DECISION, Refused(tenant, task).encode())


def _is_token_count(value: object) -> bool:
    """json_to_metadata lifts max_tokens as a number (a string like "nan" becomes NaN)."""
    return isinstance(value, float) and value.is_integer() and 0 < value <= 100_000_000
