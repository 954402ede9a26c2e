"""The request side of a try: which rung it is on (from what decide and Envoy say), what it must
send there (the rung's path and key, every other credential scrubbed, the body rewritten for the
rung's provider), and what the next try must know."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..core import ContractError, Decision, Dialect, Failure, RungAddress, ToolMode, TripRecord
from ..core.names import CLUSTER_HEADER, PROBE_HEADER, RUNG_HEADER, SHIELD_HEADER, SKIP_HEADER, endpoint_key
from ..policy import Policy, Provider, Rung, TaskClass
from ..policy.json_schema import untrusted
from ..routing import Action, Position, may_try, next_step, previous_failure, prompt_tokens_estimate, tool_mode_of
from ..translate import ApiPair, api_pair, shape_tools, trim_context

# Headers that carry a provider's identity or a previous try's rewrite. Removed on every try.
_SCRUB = (
    "authorization",
    "x-api-key",
    "api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "openai-beta",
    # We must read (and may rewrite) the answer: ask for it uncompressed.
    "accept-encoding",
    CLUSTER_HEADER,
    PROBE_HEADER,
    RUNG_HEADER,
    SHIELD_HEADER,
    SKIP_HEADER,
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
)
# A probe asks for a word or two: only "answered sensibly" counts.
PROBE_CONTRACT = TaskClass(min_output_tokens=1)


@dataclass(frozen=True, slots=True)
class TryShape:
    """What this try's rewrite did to the client's request for its rung (T5, F6)."""

    tool_mode: ToolMode = ToolMode.FULL
    tools_removed: tuple[str, ...] = ()
    planned: bool = False  # plan_only: the model was asked for its intended calls, as data
    trimmed: int = 0  # messages of the conversation's middle left out to fit the rung's window

    @property
    def degraded(self) -> bool:
        """The rung got less than the client sent: its answer is a degraded one."""
        return bool(self.tools_removed) or self.trimmed > 0


UNSHAPED = TryShape()


class UnsafeTryError(Exception):
    """This try cannot be served safely: its metadata is foreign, or was decided under another
    policy than the one this worker holds (a rung index could then name another provider)."""

    def __init__(self, reason: str, detail: str, client: Dialect = Dialect.OPENAI) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.client = client


@dataclass(frozen=True, slots=True)
class TryPlan:
    decision: Decision
    position: Position
    rung: Rung
    provider_name: str
    provider: Provider
    pair: ApiPair
    model: str  # the model this rung serves the request with
    key: str  # the endpoint (provider/model)
    why: Failure | None  # why the request is not on its first rung, if it is not
    rewrite: bool  # the body must change for this rung
    read_schema: bool  # the request's own JSON schema holds the answer
    started_at: float  # monotonic
    started_ms: float  # monotonic ms (one host: comparable across worker processes), for the trip record
    real_tries: int  # tries of this request that reached a provider, this one included unless skipped
    previous: TripRecord | None  # what the try before this one left
    # The failure rules forbid this slot (the next real try must be on another rung): the relay
    # answers it at once, without a provider seeing it.
    skip: bool = False
    next_rung: int | None = None  # where the next real try must be, as this try learned it
    previous_failure: Failure | None = None  # why the previous try failed, as this try learned it
    # No rung may serve the request any more (a failure the previous try could not judge, with
    # nothing eligible left): this try answers the client with it.
    final: Failure | None = None
    tool_mode: ToolMode = ToolMode.FULL  # what of the request's tools this rung is offered
    write_tools: frozenset[str] = frozenset()  # the policy's write tools (read_only removes them)
    retrieval_tools: frozenset[str] = frozenset()  # what retrieval_only keeps
    context_window: int | None = None  # trim the history to this many tokens (None: never)
    placeholder: bool = True  # mark where the history was trimmed

    @property
    def needs_body(self) -> bool:
        return self.rewrite or self.read_schema or self.shadows

    @property
    def shadows(self) -> bool:
        """The request is in the continuous-verification sample and this is its first try."""
        return self.decision.shadow and self.position.attempt == 1

    @property
    def stream(self) -> bool:
        return self.decision.stream

    @property
    def json_mode(self) -> bool:
        return self.decision.response_format in ("json_object", "json_schema")

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens_estimate(self.decision.body_bytes)

    def contract_task(self, policy: Policy) -> TaskClass:
        return contract_task(policy, self.decision)

    def record(self, failure: Failure | None = None, next_rung: int | None = None) -> TripRecord:
        """What this try leaves for the next one. A skipped slot passes on what it was given."""
        p = self.position
        if self.skip and self.previous is not None:
            return replace(
                self.previous,
                attempt=p.attempt,
                rung=p.rung,
                slot=p.slot,
                started_ms=self.started_ms,
                skipped=True,
                failure=self.previous_failure,
                first_failure=self.why,
                next_rung=self.next_rung,
            )
        return TripRecord(
            attempt=p.attempt,
            rung=p.rung,
            started_ms=self.started_ms,
            slot=p.slot,
            real_tries=self.real_tries,
            failure=failure,
            first_failure=(self.why or failure) if failure is not None else self.why,
            next_rung=next_rung,
        )


def plan_try(
    policy: Policy,
    decision_meta: Mapping[str, object],
    address_meta: Mapping[str, object],
    attempt: int,
    trip_meta: Mapping[str, object],
    *,
    now: float,
) -> TryPlan:
    """Decode what decide, the config renderer and the previous try left; raises UnsafeTryError."""
    try:
        decision = Decision.decode(decision_meta)
    except ContractError as exc:
        raise UnsafeTryError("foreign_decision", str(exc)) from None
    client = decision.dialect
    if decision.policy != policy.stamp:
        raise UnsafeTryError(
            "policy_mismatch",
            f"decided under policy {decision.policy!r}, this worker holds {policy.stamp!r}",
            client,
        )
    try:
        address = RungAddress.decode(address_meta)
    except ContractError as exc:
        raise UnsafeTryError("foreign_rung", str(exc), client) from None
    rungs = policy.ladders.get(address.ladder)
    if address.ladder != decision.ladder or rungs is None or address.rung >= len(rungs):
        raise UnsafeTryError(
            "foreign_rung", f"routed to {address.ladder}/{address.rung}, not on the decided ladder", client
        )
    if address.rung not in decision.rungs:
        raise UnsafeTryError("foreign_rung", f"rung {address.rung} is not in the decided order", client)
    try:
        record = TripRecord.decode(trip_meta)
    except ContractError as exc:
        raise UnsafeTryError("foreign_trip_record", str(exc), client) from None

    position = Position(
        ladder=address.ladder,
        rung=address.rung,
        slot=address.slot,
        order=decision.rungs,
        attempt=attempt,
        tries=decision.tries,
    )
    rung = rungs[address.rung]
    provider = policy.providers[rung.provider]
    pair = api_pair(client, provider.dialect)
    model = rung.model_for(decision.model)
    now_ms = now * 1000
    previous = _previous_try_failure(policy, record, position, now_ms)
    target, final = _where_next(policy, record, position, previous)
    skip = not may_try(target, position)
    real_tries = (record.real_tries if record is not None else 0) + (0 if skip else 1)
    if not skip and final is None and real_tries > policy.max_attempts:
        final = previous or (record.failure if record else None) or Failure.SERVER_ERROR
    why = (record.first_failure if record else None) or previous or decision.skip
    if why is None and position.rung != position.order[0]:
        # Envoy skipped the rungs before this one without trying them: its outlier detection
        # ejected them after consecutive 5xx answers.
        why = Failure.SERVER_ERROR
    tool_mode = tool_mode_of(policy, address.ladder, address.rung)
    window = policy.context_window_of(address.ladder, address.rung) if policy.context.trim else None
    task = contract_task(policy, decision)
    return TryPlan(
        decision=decision,
        position=position,
        rung=rung,
        provider_name=rung.provider,
        provider=provider,
        pair=pair,
        model=model,
        key=endpoint_key(rung.provider, model),
        why=why,
        rewrite=pair.translates or model != decision.model or tool_mode is not ToolMode.FULL or window is not None,
        # The request's own JSON schema is in its body: read it to hold the answer to it.
        read_schema=not decision.stream and decision.response_format == "json_schema" and task.use_request_schema,
        started_at=now,
        started_ms=now_ms,
        real_tries=real_tries,
        previous=record,
        skip=skip and final is None,
        next_rung=target,
        previous_failure=previous,
        final=final,
        tool_mode=tool_mode,
        write_tools=frozenset(policy.tools.write),
        retrieval_tools=frozenset(policy.tools.retrieval),
        context_window=window,
        placeholder=policy.context.placeholder,
    )


def contract_task(policy: Policy, decision: Decision) -> TaskClass:
    """The health contract the request's answer is held to (a probe's: any sensible answer)."""
    if decision.probe:
        return PROBE_CONTRACT
    return policy.task_class(decision.task)


def _previous_try_failure(
    policy: Policy, record: TripRecord | None, position: Position, now_ms: float
) -> Failure | None:
    """Why the try before this one failed, as far as this try can know."""
    if record is not None and record.skipped:
        return record.failure
    budget_ms = 0.0
    if record is not None and record.rung < len(policy.ladders[position.ladder]):
        budget_ms = policy.ladders[position.ladder][record.rung].timeout_s * 1000
    return previous_failure(record, position.attempt, now_ms, budget_ms)


def _where_next(
    policy: Policy, record: TripRecord | None, position: Position, previous: Failure | None
) -> tuple[int | None, Failure | None]:
    """The rung the next real try must be on (None: this slot may be tried), or the failure to
    answer with when no rung may serve any more."""
    if record is None or record.attempt != position.attempt - 1:
        return None, None  # the first try, or the previous one never reached a filter: try
    if record.next_rung is not None:
        return record.next_rung, None  # decided when the failure was judged (or carried on)
    if previous is None:
        return None, None
    # The previous try ended without a judged answer (a reset, the deadline): apply the rules now.
    at = replace(position, rung=record.rung, slot=record.slot, attempt=record.attempt)
    step = next_step(policy, at, previous, None, record.real_tries)
    if step.action is Action.FINAL:
        return None, previous
    return step.next_rung, None


def header_mutation(plan: TryPlan, policy: Policy, key: str | None) -> tuple[dict[str, str], list[str]]:
    """Headers to set and to remove on this try: the rung's path and key; every other credential
    and every previous try's rewrite removed (header mutations carry over between tries)."""
    d = plan.decision
    if plan.skip:
        return {SKIP_HEADER: "1"}, list(scrub_list(policy))
    set_headers = {
        RUNG_HEADER: policy.relay_routes[(plan.position.ladder, plan.position.rung)],
        ":path": plan.pair.provider_path(plan.provider.path_prefix),
        **plan.pair.auth_headers(key, anthropic_version=d.anthropic_version, anthropic_beta=d.anthropic_beta),
    }
    set_headers.update({k.lower(): v for k, v in plan.provider.headers.items()})
    if plan.stream and plan.contract_task(policy).rescue:
        set_headers[SHIELD_HEADER] = "1"  # a reset after the first token becomes a rescuable cut
    remove = list(scrub_list(policy))
    if plan.needs_body:
        remove.append("content-length")  # set again with the rewritten body
    elif d.body_bytes:
        # The client's body goes as it came: its own length, not an earlier try's rewritten one
        # (a provider would wait for bytes that never come).
        set_headers["content-length"] = str(d.body_bytes)
    else:
        remove.append("content-length")
    return set_headers, remove


_SCRUB_BY_POLICY: dict[int, tuple[Policy, tuple[str, ...]]] = {}


def scrub_list(policy: Policy) -> tuple[str, ...]:
    """Headers every try removes: ours, plus each provider's static ones (once per policy)."""
    cached = _SCRUB_BY_POLICY.get(id(policy))
    if cached is not None and cached[0] is policy:
        return cached[1]
    extra = {name.lower() for p in policy.providers.values() for name in p.headers}
    own = (policy.clients.tenant_header, policy.task_header, policy.impact_header)
    names = _SCRUB + tuple(sorted(extra - set(_SCRUB))) + own
    if len(_SCRUB_BY_POLICY) > 16:
        _SCRUB_BY_POLICY.clear()
    _SCRUB_BY_POLICY[id(policy)] = (policy, names)
    return names


def rewrite_body(plan: TryPlan, body: dict[str, Any]) -> tuple[dict[str, Any], TryShape]:
    """The body for this rung's provider, and what was changed on the way: tools removed per
    the rung's tool mode, history trimmed to its window (both in the client's dialect, before
    translation). Raises TranslationError for a request the provider's API cannot express."""
    client = plan.decision.dialect
    tools = shape_tools(client, body, plan.tool_mode, plan.write_tools, plan.retrieval_tools)
    body = tools.body
    trimmed = 0
    if plan.context_window is not None:
        trim = trim_context(client, body, plan.context_window, placeholder=plan.placeholder)
        body, trimmed = trim.body, trim.dropped
    shape = TryShape(plan.tool_mode, tools.removed, tools.planned, trimmed)
    return plan.pair.request(body, plan.model), shape


def request_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema an OpenAI request asked for in response_format, if any, made safe to
    check in bounded time (the client wrote it)."""
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return untrusted(schema)
