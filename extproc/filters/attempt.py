"""The upstream filter: one processor per try, on whichever rung Envoy picked for it.

Per try it injects the rung's key (scrubbing whatever an earlier try left: header mutations
leak across tries), rewrites path and body for the rung's provider (request), then judges the
answer (verdict): a failure the ladder can route around is flipped to 503 so Envoy's router
retries on the next rung of the same client request; the client's final answer is rendered in
the client's dialect and flagged with x-rungway-* headers.

JSON answers arrive BUFFERED. Streams arrive FULL_DUPLEX_STREAMED (stream): the response
headers are held until the first token, so an error event before it still falls back; after
it, a stall is ended by the sidecar's own watchdog with an in-band error event.

Envoy 1.40: this filter must not end the response (streamed_response end_of_stream) before
Envoy has handed it the provider's own end of stream. If it does, the router counts the try as
complete without resetting it, frees the upstream request while the connection still carries
the response, and the next bytes or the close crash Envoy (`Wrapped decoder use after free`,
`Pure virtual function called`, SIGSEGV). So the client's last bytes (error event, finalised
tail, [DONE]) go out at once, but the end of the HTTP response waits for the provider's end; a
provider that does not end within stream_abandon_s is reset through Envoy (an ImmediateResponse,
which Envoy turns into a reset of the try and, the headers having gone out, of the client's
stream). A provider that keeps sending instead (an endless line, a flood) is reset as soon as it
has sent _LATE_BYTES past that point: in FULL_DUPLEX_STREAMED Envoy forwards every byte to the
sidecar, its only brake is the ext_proc stream's write-buffer watermark, and Envoy 1.40 crashes
when that watermark fires on an upstream filter whose upstream connection is not there (a try
being torn down, or one not yet connected): UpstreamCodecFilter::onAbove/BelowWriteBufferHigh/
LowWatermark calls upstream()->readDisable() on a null upstream.

A try's phases are explicit (`Phase`, with a transition table like the circuit's); what the try
changes outside itself — metrics, observations for the health board, quota signals — it returns
as effects.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from enum import StrEnum
from typing import Any, Final, Literal, overload

from ..audit import Kind, prompt_hash
from ..core import CLIENT_STATUS, DegradedAnswer, Dialect, Failure, Impact, Observation, QuotaSignal
from ..core.names import (
    ANTHROPIC_MESSAGES_PATH,
    META_DECISION,
    META_TRIP,
    OPENAI_CHAT_PATH,
    REASON,
    RELAY_FLAGS_HEADER,
    endpoint_key,
)
from ..escalation import armed, hands_off, triggers
from ..health.contract import Contract
from ..policy import Policy
from ..routing.quota import HEADERS as QUOTA_HEADERS
from ..routing.quota import exhausted_until
from ..routing.trip import parse_retry_after
from ..translate import (
    HeaderScrub,
    RescueStrategy,
    SpliceState,
    StreamRelay,
    TranslationError,
    dump_json,
    load_json,
    provider_header_scrub,
    render_error,
    stream_failure,
)
from .effects import (
    Effect,
    KeptForReview,
    RescueChunk,
    Rescued,
    RescueEnded,
    RescueFailed,
    RescueItem,
    RescueRequested,
    Reshaped,
    RungFreed,
    RungTaken,
    Served,
    ShadowRequested,
    StreamEnded,
    Tried,
    Tripped,
    TryEnded,
    TryRefused,
)
from .escalation import escalate, signals_of
from .flags import own_answer_headers
from .request import (
    UNSHAPED,
    TryPlan,
    TryShape,
    UnsafeTryError,
    header_mutation,
    plan_try,
    request_schema,
    rewrite_body,
)
from .rescue import Rescue, plan_rescue, rescue_note
from .shadow import plan_shadows
from .stream import StreamTry
from .trail import audited
from .verdict import Next, Ruling, answer_flags, exhausted_answer, exhausted_for, rule_on_answer, rule_on_failure
from .wire import (
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    attributes,
    common,
    header_map,
    host_metadata,
    immediate,
    namespace,
    request_body_response,
    request_headers_response,
    response_body_response,
    response_headers_response,
    streamed,
    trailers_response,
    with_metadata,
    with_mode,
)
from .worker import Worker

log = logging.getLogger("rungway.attempt")

_NO_REQUEST_BODY = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.NONE,
    response_header_mode=Mode.SEND,
    response_body_mode=Mode.BUFFERED,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
# The relay's notes to this filter: never the client's to see.
_RELAY_ONLY = (RELAY_FLAGS_HEADER,)
# What a provider may still send after the client has its last bytes before it is reset at once
# rather than after stream_abandon_s (a few late events, as a resumed stall sends, end cleanly).
_LATE_BYTES = 64 * 1024


def _to_client(scrub: HeaderScrub, set_headers: dict[str, str], *remove: str, body: bytes | None = None) -> Any:
    """A mutation of the answer's headers (and body) as the client will get them: the relay's
    notes to this filter never reach it, nor a cookie or a secret a provider put in a header."""
    return common({**scrub.replace, **set_headers}, (*remove, *_RELAY_ONLY, *scrub.remove), body=body)


_SKIPPED_SLOT = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.NONE,
    response_header_mode=Mode.SKIP,
    response_body_mode=Mode.NONE,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
_HEADERS_WANTED = frozenset({":status", "content-type", "retry-after", RELAY_FLAGS_HEADER}) | QUOTA_HEADERS


class Phase(StrEnum):
    NEW = "new"  # nothing seen yet
    STARTED = "started"  # request rewritten for the rung; waiting for its answer
    BUFFERING = "buffering"  # a JSON answer's headers passed; its body is judged whole
    HELD = "held"  # a stream answer's headers held until the first token (or a held error answer)
    STREAMING = "streaming"  # the client has the headers; events flow
    RESCUING = "rescuing"  # the provider failed after the first token; another rung completes it
    CLOSED = "closed"  # this try's answer is decided and ended
    REFUSED = "refused"  # answered by the sidecar itself (never reached, or never left, the rung)
    SKIPPED = "skipped"  # a slot the failure rules forbid: the relay answers it, no provider sees it


TRANSITIONS: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.NEW: frozenset({Phase.STARTED, Phase.REFUSED, Phase.SKIPPED}),
    Phase.STARTED: frozenset({Phase.BUFFERING, Phase.HELD, Phase.CLOSED, Phase.REFUSED}),
    Phase.BUFFERING: frozenset({Phase.CLOSED}),
    Phase.HELD: frozenset({Phase.STREAMING, Phase.CLOSED}),
    Phase.STREAMING: frozenset({Phase.CLOSED, Phase.RESCUING}),
    Phase.RESCUING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
    Phase.REFUSED: frozenset(),
    Phase.SKIPPED: frozenset(),
}


class IllegalPhase(Exception):  # noqa: N818 - mirrors the circuit's IllegalTransition
    def __init__(self, source: Phase, target: Phase) -> None:
        super().__init__(f"a try cannot go from {source} to {target}")


class AttemptProcessor:
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._policy: Policy = worker.policy
        self.phase = Phase.NEW
        self._effects: list[Effect] = []
        self._plan: TryPlan | None = None
        self._status = 0
        self._scrub = HeaderScrub()
        self._retry_after: float | None = None
        self._request_schema: dict[str, Any] | None = None
        self._answered_at: float | None = None  # response headers arrived
        self._first_token_at: float | None = None
        self._relay_flags: str | None = None  # the relay's response flags: its own answer, or "-"
        self._shape = UNSHAPED
        self._stream: StreamTry | None = None
        # A stream's end (see the module docstring): the provider's end seen, ours sent, and
        # since when the client has had its last bytes while the provider's side is still open.
        self._upstream_done = False
        self._ended = False
        self._closed_at: float | None = None
        self._late_bytes = 0  # what the provider sent after the client had its last bytes
        self._observed = False
        self._trip_counted = False
        # A stream's rescue (filters/rescue.py): the client's request body, kept for it.
        self._client_body: bytes | None = None
        self._rescue: Rescue | None = None
        # An escalation-armed request (Decision.escalate): the client's body, kept for the state.
        self._escalation_body: bytes | None = None
        self._rescue_chunk_at = 0.0
        self._rescue_started_at = 0.0
        # What the per-tenant metrics learn of this try when it ends (TryEnded).
        self._served_at: float | None = None
        self._failure: Failure | None = None
        self._usage: tuple[int | None, int | None] = (None, None)  # input, output tokens
        self._measured = False

    # ---- the gRPC loop's interface ---------------------------------------------------------

    def dispatch(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self.request_headers(request)
        if self.phase is Phase.REFUSED:
            return []  # Envoy may still deliver what was in flight
        if self.phase is Phase.SKIPPED:
            return self._pass_skip(request)
        if kind == "request_body":
            return self.request_body(request)
        if kind == "response_headers":
            return self.response_headers(request)
        if kind == "response_body":
            return self.response_body(request)
        if kind == "response_trailers":
            return self.response_trailers(request)
        raise ValueError(f"attempt does not process {kind}")

    def drain_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    def deadline(self) -> float | None:
        """The next moment this try must act without a message from Envoy."""
        times = [t for t in (self._wake_at(), self._slow_at(), self._abandon_at()) if t is not None]
        return min(times) if times else None

    def on_deadline(self) -> list[ProcessingResponse]:
        now = self._worker.clock.now()
        abandon_at = self._abandon_at()
        if abandon_at is not None and now >= abandon_at:
            return self._abandon()
        slow_at = self._slow_at()
        if slow_at is not None and now >= slow_at:
            self._observe(None)  # latency so far is over the threshold: the board counts it slow
        wake_at = self._wake_at()
        if wake_at is not None and now >= wake_at:
            return self._on_watchdog()
        return []

    def on_close(self) -> None:
        """The try's gRPC stream ended. Without an answer seen, Envoy's per-try timer or a reset
        ended it: the board learns that here, at once."""
        plan = self._plan
        if plan is not None and plan.final is None and not plan.skip and not plan.decision.probe:
            self._effects.append(RungFreed(*self._slot()))
        if plan is None or self.phase in (Phase.REFUSED, Phase.SKIPPED):
            return
        if not self._observed:
            if plan.stream and self.phase is Phase.STREAMING:
                failure = Failure.STREAM_INTERRUPTED
            elif self._worker.clock.now() - plan.started_at >= plan.rung.timeout_s * 0.95:
                failure = Failure.TIMEOUT
            else:
                failure = Failure.CONNECT_ERROR
            self._observe(failure)
        self._measure(plan)

    def on_failure(self) -> None:
        """This processor raised (a bug of ours, counted by the loop as a sidecar error): the
        try's outcome says nothing about the rung, so it is not reported to the board."""
        self._observed = True
        self._trip_counted = True
        self._measured = True

    # ---- request ---------------------------------------------------------------------------

    def request_headers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        worker = self._worker
        attrs = attributes(request)
        decision_meta = namespace(request, META_DECISION)
        # The try runs under the revision its request was decided under, kept by the worker
        # across reloads (a bounded few); plan_try refuses one the worker no longer holds.
        decided_under = worker.policy_for(str(decision_meta.get("policy", "")))
        if decided_under is not None:
            self._policy = decided_under
        try:
            plan = plan_try(
                self._policy,
                decision_meta,
                host_metadata(str(attrs.get("xds.upstream_host_metadata", "")), META_DECISION),
                int(attrs.get("upstream.request_attempt_count", 1.0)),
                namespace(request, META_TRIP),
                now=worker.clock.now(),
            )
        except UnsafeTryError as exc:
            return [self._refuse_try(exc)]
        self._plan = plan
        if plan.final is not None:
            return [self._final_without_a_try(plan.final)]
        if plan.skip:
            self._move(Phase.SKIPPED)
            self._count("skipped")
        else:
            self._move(Phase.STARTED)
            self._audit_arrival(plan)
            if not plan.decision.probe:  # the try holds a slot of its rung until on_close (T3)
                self._effects.append(RungTaken(*self._slot()))
        set_headers, remove = header_mutation(plan, self._policy, worker.key_for(plan.provider_name))
        response = with_metadata(
            request_headers_response(common(set_headers, remove)), META_TRIP, plan.record().encode()
        )
        if plan.skip and not plan.stream:
            # Nothing of a skipped slot needs the sidecar: the relay's answer carries its own
            # retry mark. (A stream's duplex mode cannot be overridden: _pass_skip relays it.)
            with_mode(response, _SKIPPED_SLOT)
        elif not plan.needs_body and not plan.stream and not self._kept_for_review(plan) and not plan.decision.escalate:
            with_mode(response, _NO_REQUEST_BODY)
        return [response]

    def _pass_skip(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        """A skipped slot: the relay's answer goes back to the router untouched (it retries it)."""
        kind = request.WhichOneof("request")
        if kind == "request_body":
            return [request_body_response()]
        if kind == "response_headers":
            return [response_headers_response()]
        if kind == "response_body":
            if self._started().stream:  # duplex: whatever comes in goes out
                return [streamed(request.response_body.body, request.response_body.end_of_stream)]
            return [response_body_response()]
        if kind == "response_trailers":
            return [trailers_response()]
        return []

    def _final_without_a_try(self, failure: Failure) -> ProcessingResponse:
        """The previous try failed in a way only now known (a reset, the deadline) and no rung
        may serve the request any more: the client's answer is that failure."""
        plan = self._started()
        self._move(Phase.REFUSED)
        self._count("failed")
        self._audit(Kind.EXHAUSTED, failure.value, source=plan.previous.rung if plan.previous else None)
        exhausted = exhausted_for(plan, self._policy, failure)
        if exhausted is not None:
            headers, body = exhausted_answer(plan, self._policy, failure, exhausted, int(self._worker.clock.wall()))
            return immediate(200, {k: v for k, v in headers.items() if k not in (":status", "content-length")}, body)
        if failure is Failure.TIMEOUT:
            message = "no rung answered within its time budget"
        else:
            message = "no rung could serve the request"
        headers = {"content-type": "application/json", **self._flags(failure)}
        return immediate(CLIENT_STATUS[failure], headers, plan.pair.error(failure, message))

    def request_body(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        plan = self._started()
        if (plan.stream and plan.contract_task(self._policy).rescue) or self._kept_for_review(plan):
            # A rescue rewrites it for another rung; a review re-runs it on tier 0 (E3).
            self._client_body = request.request_body.body
        if plan.decision.escalate:
            self._escalation_body = request.request_body.body  # an escalation stores it
        if not plan.needs_body:
            return [request_body_response()]
        try:
            body = load_json(request.request_body.body)
            if not isinstance(body, dict):
                raise TranslationError("the request body must be a JSON object")
            if plan.read_schema:
                self._request_schema = request_schema(body)
            if plan.shadows:
                self._effects.extend(self._shadows(plan, body))
            if not plan.rewrite:
                return [request_body_response()]
            body, self._shape = rewrite_body(plan, body)
            if self._shape.degraded and not plan.decision.probe:
                shape = self._shape
                ladder, rung = plan.position.ladder, plan.position.rung
                self._effects.append(
                    Reshaped(ladder, rung, shape.tool_mode.value, len(shape.tools_removed), shape.trimmed)
                )
                self._audit_reshape(shape)
            data = dump_json(body)
        except (ValueError, TranslationError) as exc:
            message = exc.message if isinstance(exc, TranslationError) else "the request body is not valid JSON"
            return [self._reject(Failure.CLIENT_ERROR, message)]
        except RecursionError:
            return [self._reject(Failure.CLIENT_ERROR, "the request body is nested too deeply")]
        return [request_body_response(common({"content-length": str(len(data))}, body=data))]

    def _shadows(self, plan: TryPlan, body: dict[str, Any]) -> list[ShadowRequested]:
        task = plan.contract_task(self._policy)
        schema = request_schema(body) if task.use_request_schema else None
        contract = Contract(task, request_schema=schema, json_mode=plan.json_mode)
        keys = {name: self._worker.key_for(name) for name in self._policy.providers}
        return plan_shadows(plan, self._policy, body, keys, contract)

    def _refuse_try(self, exc: UnsafeTryError) -> ProcessingResponse:
        """Served safely or not at all: a clean 503 in the client's dialect, never retried."""
        self._move(Phase.REFUSED)
        log.warning("try refused (%s): %s", exc.reason, exc.detail)
        self._effects.append(TryRefused(exc.reason, exc.detail))
        failure = Failure.SERVER_ERROR
        message = "Rungway could not route this try safely; retry the request"
        headers = own_answer_headers(failure, self._policy.stamp)
        return immediate(503, headers, render_error(exc.client.value, failure, message))

    def _reject(self, failure: Failure, message: str) -> ProcessingResponse:
        """A client error found while rewriting: answered now, never retried."""
        plan = self._started()
        self._move(Phase.REFUSED)
        self._count("rejected")
        headers = {"content-type": "application/json", **self._flags(failure)}
        return immediate(CLIENT_STATUS[failure], headers, plan.pair.error(failure, message))

    # ---- response --------------------------------------------------------------------------

    def response_headers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        plan = self._started()
        worker = self._worker
        every = header_map(request.response_headers)
        headers = {k: v for k, v in every.items() if k in _HEADERS_WANTED}
        self._scrub = provider_header_scrub(every)
        self._answered_at = worker.clock.now()
        self._status = int(headers.get(":status", "0") or 0)
        self._relay_flags = headers.get(RELAY_FLAGS_HEADER)
        wall = worker.clock.wall()
        self._retry_after = parse_retry_after(headers.get("retry-after"), wall)
        until = exhausted_until(headers, wall, self._policy.health.quota_floor_requests)
        if self._status == 429:
            until = max(until or 0.0, wall + (self._retry_after if self._retry_after is not None else 1.0))
        if until is not None:
            self._effects.append(QuotaSignal(plan.key, until))
        end_of_stream = request.response_headers.end_of_stream
        self._upstream_done = self._upstream_done or end_of_stream
        if not plan.stream:
            if end_of_stream:
                return [self._judge_json(b"", headers_phase=True)]
            self._move(Phase.BUFFERING)
            return [response_headers_response()]
        # Streams: hold the headers until we know what the answer is.
        self._move(Phase.HELD)
        now = worker.clock.now()
        if self._status == 200 and "text/event-stream" in headers.get("content-type", ""):
            relay = plan.pair.relay(
                model=plan.model,
                stream_id=plan.pair.stream_id(secrets.token_hex(12)),
                created=int(wall),
                include_usage=plan.decision.include_usage,
                prompt_tokens=plan.prompt_tokens,
            )
            self._stream = StreamTry.of_events(relay, now)
        else:
            self._stream = StreamTry.of_error(now)
        if end_of_stream:
            return self._end_of_held_stream()
        return []

    def response_body(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        plan = self._started()
        chunk = request.response_body.body
        end_of_stream = request.response_body.end_of_stream
        if not plan.stream:
            judged = self._judge_json(chunk, headers_phase=False)
            return [judged] if judged is not None else []  # an escalation: the runtime answers
        if end_of_stream:
            self._upstream_done = True
        if self.phase is Phase.RESCUING:
            # The primary's late bytes: another rung completes the client's stream. One that
            # floods meanwhile is let go of (a reset, the client's stream with it) rather than
            # risk Envoy 1.40's watermark crash (docs/ENVOY-DEFECTS.md).
            self._late_bytes += len(chunk)
            if self._late_bytes > _LATE_BYTES and not self._ended:
                self._effects.append(Rescued(*self._rescue_labels(), "primary_flooded"))
                self._audit_rescue("primary_flooded")
                self._move(Phase.CLOSED)  # nothing more of the rescue reaches the client
                return self._abandon()
            return []
        if self.phase is Phase.CLOSED:
            # The client has its last bytes already; the provider's late bytes are dropped and
            # only its end of stream is passed on, as the end of the client's response. One that
            # keeps sending is let go of now: every byte it sends still crosses to the sidecar.
            if end_of_stream:
                return self._end(b"")
            self._late_bytes += len(chunk)
            if self._late_bytes > _LATE_BYTES and not self._ended:
                return self._abandon()
            return []
        stream = self._stream
        assert stream is not None
        if stream.error_body is not None:
            stream.hold_error(chunk)
            return self._end_of_held_stream() if end_of_stream else []
        relay = stream.relay
        assert relay is not None
        stream.last_chunk_at = self._worker.clock.now()
        out = relay.feed(chunk)
        if not relay.started:
            if relay.error is not None:
                return self._failed_before_first_token(stream_failure(relay.error, started=False), relay.error.message)
            stream.pending += out
            return self._end_of_held_stream() if end_of_stream else []
        answers: list[ProcessingResponse] = []
        if self.phase is Phase.HELD:
            answers.append(self._release_headers())
            out = stream.take_pending() + out
        if end_of_stream and _cut(relay) and (rescued := self._start_rescue(out)) is not None:
            answers.extend(rescued)
        elif end_of_stream or relay.closed:
            answers.extend(self._end(out + self._finish_stream()))
        elif out:
            answers.append(streamed(out, False))
        return answers

    def response_trailers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        answers: list[ProcessingResponse] = []
        plan = self._started()
        stream = self._stream
        self._upstream_done = True
        if self.phase is Phase.RESCUING:
            pass  # the rescue ends the client's stream
        elif plan.stream and stream is not None and self.phase is not Phase.CLOSED:
            if stream.relay is not None and stream.relay.started:
                if self.phase is Phase.HELD:
                    answers.append(self._release_headers())
                pending = stream.take_pending()
                if _cut(stream.relay) and (rescued := self._start_rescue(pending)) is not None:
                    answers.extend(rescued)
                else:
                    answers.extend(self._end(pending + self._finish_stream()))
            else:
                answers.extend(self._end_of_held_stream())
        elif plan.stream:
            answers.extend(self._end(b""))
        answers.append(trailers_response())
        return answers

    def _end(self, tail: bytes) -> list[ProcessingResponse]:
        """The client's stream is complete with `tail`. The HTTP response ends with it only if
        the provider's side has ended too; otherwise `tail` goes out now and the end follows the
        provider's (or, stream_abandon_s later, a reset)."""
        if self._ended:
            return []
        if self._upstream_done:
            self._ended = True
            return [streamed(tail, True)]
        if self._closed_at is None:
            self._closed_at = self._worker.clock.now()
        return [streamed(tail, False)] if tail else []

    def _abandon(self) -> list[ProcessingResponse]:
        """The client has its last bytes; the provider never ended its side. Envoy resets the try
        (and, the headers having gone out, the client's stream) on an immediate response: the only
        safe way to let go of a provider that is still open."""
        self._ended = True
        self._effects.append(StreamEnded("abandoned"))
        return [immediate(502, {}, b"")]

    def _abandon_at(self) -> float | None:
        if self._closed_at is None or self._ended:
            return None
        return self._closed_at + self._policy.stream_abandon_s

    # ---- timers ------------------------------------------------------------------------------

    def _wake_at(self) -> float | None:
        if self.phase is Phase.RESCUING:
            # The rescue rung's silence: the same stall budget as any stream's.
            return self._rescue_chunk_at + self._policy.stream_stall_s
        if self._stream is None or self.phase is Phase.CLOSED:
            return None
        if self.phase is Phase.HELD and self._stream.relay is not None and not self._stream.relay.started:
            # The provider answered but no token came: the rung's own budget is the time to the
            # first token (the relay's timer stopped at the provider's headers).
            plan = self._started()
            return plan.started_at + plan.rung.timeout_s
        return self._stream.wake_at(self._policy)

    def _slow_at(self) -> float | None:
        """While no answer has come: when this try becomes a slow call (over slow_call_factor
        times the endpoint's healthy p95). Slow calls in flight move the circuit before they end,
        which matters when a brownout makes them end only at the per-try timeout."""
        plan = self._plan
        if (
            plan is None
            or plan.skip
            or self._observed
            or self._answered_at is not None
            or not self._policy.health.enabled
        ):
            return None
        baseline = self._worker.baseline(plan.key, plan.stream)
        if baseline is None:
            return None
        return plan.started_at + baseline * self._policy.health.circuit.slow_call_factor

    def _on_watchdog(self) -> list[ProcessingResponse]:
        if self._rescue is not None and self.phase is Phase.RESCUING:
            stall = self._policy.stream_stall_s
            return self._rescue_ends(self._rescue.splice.interrupt(f"the rescue rung stopped sending for {stall:g}s"))
        stream = self._stream
        assert stream is not None and stream.relay is not None
        relay = stream.relay
        if not relay.started:
            budget = self._started().rung.timeout_s
            return self._failed_before_first_token(Failure.TIMEOUT, f"no first token within {budget:g}s")
        answers = [self._release_headers()] if self.phase is Phase.HELD else []
        if relay.finished:
            tail = stream.take_pending() + relay.finalise()
            self._close_stream("finalised")
        elif (rescued := self._start_rescue(stream.take_pending(), stalled=True)) is not None:
            return [*answers, *rescued]
        else:
            tail = relay.interrupt(
                f"the provider stopped sending for {self._policy.stream_stall_s:g}s after the answer had started"
            )
            self._close_stream("interrupted")
            self._observe(Failure.STREAM_INTERRUPTED)
        answers.extend(self._end(tail))
        return answers

    # ---- rescue ------------------------------------------------------------------------------

    def _start_rescue(
        self, out: bytes, *, stalled: bool = False, regenerate_on: int | None = None
    ) -> list[ProcessingResponse] | None:
        """The provider cut (or, `stalled`, abandoned) a stream the client has begun: ask the next
        healthy rung to complete it. None when there is no rescue to make; `out` (whole events
        the relay produced just now) is then the caller's to send."""
        plan = self._started()
        stream = self._stream
        assert stream is not None and stream.relay is not None
        worker = self._worker
        now = worker.clock.now()
        # What is left of the request's route timeout (from decide, not this try: earlier tries
        # spent some), less a margin so the rescue's own timeout fires before Envoy's; a retry of
        # the same rescue (regenerate) gets what is left of the first one's budget.
        left = (self._policy.route_timeout_s or float("inf")) - (now - plan.decision.decided_ms / 1000) - 0.2
        spent = now - self._rescue_started_at if regenerate_on is not None else 0.0
        budget = min(self._policy.stream_rescue_s - spent, left)
        providers = {name: worker.key_for(name) for name in self._policy.providers}
        rescue = plan_rescue(
            plan,
            self._policy,
            stream.relay.delivered,
            self._client_body,
            worker.health_view(plan.decision.impact),
            providers,
            primary=Failure.STREAM_INTERRUPTED,
            budget_s=budget,
            regenerate_on=regenerate_on,
        )
        if rescue is None:
            return None
        if regenerate_on is not None:  # the same rescue, asked again without a prefill
            self._effects.append(RescueRequested(rescue.call))
            self._rescue = rescue
            self._rescue_chunk_at = worker.clock.now()
            return []
        self._observe(Failure.STREAM_INTERRUPTED)  # the primary failed: its health (and trips) say so
        self._effects.append(RescueRequested(rescue.call))
        log.info("stream %s on %s; rescued by %s", "stalled" if stalled else "cut", plan.key, rescue.key)
        self._rescue = rescue
        self._rescue_chunk_at = self._rescue_started_at = worker.clock.now()
        self._move(Phase.RESCUING)
        head = out + rescue_note(rescue, plan.decision.dialect)
        return [streamed(head, False)]

    def rescuing(self) -> bool:
        """Whether a rescue call's bytes are still wanted (the runtime cancels it otherwise)."""
        return self.phase is Phase.RESCUING

    def on_rescue(self, item: RescueItem) -> list[ProcessingResponse]:
        """What the runtime's rescue call brought back."""
        rescue = self._rescue
        if rescue is None or self.phase is not Phase.RESCUING:
            return []
        splice = rescue.splice
        match item:
            case RescueChunk(data):
                self._rescue_chunk_at = self._worker.clock.now()
                out = splice.feed(data)
                if splice.state in (SpliceState.DONE, SpliceState.FAILED):
                    return self._rescue_ends(out)
                return [streamed(out, False)] if out else []
            case RescueEnded():
                return self._rescue_ends(splice.finish_if_cut())
            case RescueFailed(failure, message):
                if failure is Failure.CLIENT_ERROR and rescue.strategy is RescueStrategy.CONTINUE:
                    # The rung refused the prefill (whatever it declared): it regenerates instead.
                    again = self._start_rescue(b"", regenerate_on=rescue.rung)
                    if again is not None:
                        return again
                return self._rescue_ends(splice.fail(failure, message))
        return []

    def _rescue_labels(self) -> tuple[str, int, int]:
        assert self._rescue is not None
        position = self._started().position
        return (position.ladder, position.rung, self._rescue.rung)

    def _rescue_ends(self, tail: bytes) -> list[ProcessingResponse]:
        rescue = self._rescue
        assert rescue is not None
        splice = rescue.splice
        plan = self._started()
        done = splice.state is SpliceState.DONE
        outcome = "rescued" if done else splice.failure.outcome.value if splice.failure else "rescue_failed"
        self._effects.append(Rescued(plan.position.ladder, plan.position.rung, rescue.rung, outcome))
        self._audit_rescue(outcome)
        # The rescue rung's own result for its health: its failure, never the primary's (a text
        # that merely diverged is no fault of the rung's), and the tokens it produced.
        clock = self._worker.clock
        reported = splice.rescue_usage
        self._effects.append(
            Observation(
                key=rescue.key,
                at=clock.wall(),
                failure=splice.failure.rescue if splice.failure else None,
                latency_s=clock.now() - self._rescue_started_at,
                output_tokens=reported.output_tokens if reported else None,
                task=plan.decision.task,
                stream=True,
                attempt=plan.position.attempt,
                ladder=plan.position.ladder,
                rung=rescue.rung,
            )
        )
        if not plan.decision.probe:
            self._effects.append(
                TryEnded(
                    *self._who(plan),
                    rescue.rung,
                    rescue.provider,
                    rescue.model,
                    splice.failure.rescue if splice.failure else None,
                    clock.now() - self._rescue_started_at,
                    None,  # its first token is not the client's first
                    reported.input_tokens if reported else None,
                    reported.output_tokens if reported else None,
                )
            )
        self._move(Phase.CLOSED)
        self._effects.append(StreamEnded(outcome))
        return self._end(tail)

    # ---- judging -----------------------------------------------------------------------------

    @overload
    def _judge_json(self, body: bytes, *, headers_phase: Literal[True]) -> ProcessingResponse: ...
    @overload
    def _judge_json(self, body: bytes, *, headers_phase: Literal[False]) -> ProcessingResponse | None: ...
    def _judge_json(self, body: bytes, *, headers_phase: bool) -> ProcessingResponse | None:
        ruling = self._rule_on_answer(body)
        self._move(Phase.CLOSED)
        if not headers_phase and self._escalated(ruling, body):
            return None  # the runtime stores it, then answers 202 (runtime/server.py)
        if ruling.next is Next.SERVED and self._status == 200:
            self._keep_for_review(body if ruling.body is None else ruling.body)
        if headers_phase:  # an answer without a body: nothing to replace
            response = response_headers_response(_to_client(self._scrub, ruling.set_headers))
        else:
            response = response_body_response(_to_client(self._scrub, ruling.set_headers, body=ruling.body))
        return with_metadata(response, META_TRIP, ruling.record.encode()) if ruling.record is not None else response

    def _kept_for_review(self, plan: TryPlan) -> bool:
        """A whole answer from below tier 0, for a tenant and task class whose policy re-runs it
        on tier 0 once that recovers (E3); never a probe's or a re-run's own."""
        decision = plan.decision
        return (
            self._policy.review is not None
            and not plan.stream
            and not decision.probe
            and not decision.rerun
            and self._policy.tier_of(plan.position.ladder, plan.position.rung) > 0
            and self._policy.tenant(decision.tenant).reruns(decision.task)
        )

    def _keep_for_review(self, answer: bytes) -> None:
        plan = self._started()
        if self._client_body is None or not self._kept_for_review(plan):
            return
        decision = plan.decision
        headers = (("anthropic-version", decision.anthropic_version), ("anthropic-beta", decision.anthropic_beta))
        item = DegradedAnswer(
            id="rev_" + secrets.token_urlsafe(12),
            tenant=decision.tenant,
            task=decision.task,
            impact=decision.impact,
            dialect=decision.dialect,
            path=ANTHROPIC_MESSAGES_PATH if decision.dialect is Dialect.ANTHROPIC else OPENAI_CHAT_PATH,
            model=decision.model,
            headers=tuple((k, v) for k, v in headers if v is not None),
            ladder=plan.position.ladder,
            rung=plan.position.rung,
            tier=self._policy.tier_of(plan.position.ladder, plan.position.rung),
            served_by=f"{plan.provider_name}/{plan.model}",
            reason=self._flags(None)[REASON],
            policy=self._policy.stamp,
            request_id=decision.request_id or "",
            prompt_hash=decision.prompt_hash or prompt_hash(self._client_body),
            kept_at=self._worker.clock.wall(),
            request=self._client_body,
            answer=answer,
        )
        self._effects.append(KeptForReview(item))

    def _escalated(self, ruling: Ruling, body: bytes) -> bool:
        """Does the tenant's escalation rule hold this answer for a person (E2)? Then the effect
        that stores it is returned, and the client's answer waits for the store."""
        plan = self._started()
        if not plan.decision.escalate or self._escalation_body is None:
            return False
        if ruling.next not in (Next.SERVED, Next.FINAL):
            return False  # the request goes on to another try
        d = plan.decision
        policy = self._policy
        rule = armed(policy, d.tenant, d.task, d.impact, stream=plan.stream, probe=d.probe, reviewed=False)
        # The task's outage answer is a human handoff (T6 tier 3): a person gets the request.
        handoff = (
            ruling.next is Next.FINAL
            and ruling.failure is not None
            and hands_off(policy, d.task, stream=plan.stream, probe=d.probe, reviewed=False)
            and (exhausted := exhausted_for(plan, policy, ruling.failure)) is not None
            and exhausted.tier == 3
        )
        if rule is None and not handoff:
            return False
        ladder = policy.ladders[plan.position.ladder]
        score = None
        if rule is not None and rule.score_below is not None:
            score = self._worker.health_score(endpoint_key(ladder[0].provider, ladder[0].model_for(d.model)))
        signals = signals_of(plan, policy, ruling, self._status, body, score)
        if handoff:
            reasons: tuple[str, ...] = ("handoff",)
        else:
            assert rule is not None
            reasons = triggers(rule, signals)
            if not reasons or (ruling.next is Next.FINAL and "contract" not in reasons):
                return False  # a final answer that was not served is held only for a broken contract
        effect = escalate(
            plan,
            self._policy,
            reasons=reasons,
            signals=signals,
            ruling=ruling,
            status=self._status,
            provider_body=body,
            client_body=self._escalation_body,
            client_path=ANTHROPIC_MESSAGES_PATH if d.dialect is Dialect.ANTHROPIC else OPENAI_CHAT_PATH,
            now=self._worker.clock.wall(),
            render=lambda headers, answer: response_body_response(_to_client(self._scrub, headers, body=answer)),
            handoff=handoff,
        )
        if self._worker.auditing:
            at = self._worker.clock.wall()
            detail: dict[str, str | int | float | bool] = {"task_id": effect.task.id}
            entry = audited(
                self._policy, d, Kind.ESCALATED, at, ",".join(reasons), target=plan.position.rung, detail=detail
            )
            effect = replace(effect, entry=entry.entry)
        self._effects.append(effect)
        return True

    def _rule_on_answer(self, body: bytes) -> Ruling:
        plan = self._started()
        ruling = rule_on_answer(
            plan,
            self._policy,
            self._status,
            body,
            retry_after_s=self._retry_after,
            request_schema=self._request_schema,
            shape=self._shape,
            created=int(self._worker.clock.wall()),
            relay_flags=self._relay_flags,
        )
        self._apply(ruling)
        return ruling

    def _apply(self, ruling: Ruling) -> None:
        """Count and report a ruling."""
        if ruling.next is Next.SERVED:
            self._usage = (ruling.input_tokens, ruling.output_tokens)
            self._count_served(ruling.output_tokens)
            self._observe(ruling.failure, ruling.output_tokens)
            return
        self._count(ruling.next.value)
        self._observe(ruling.failure)
        if ruling.next is Next.FINAL:
            trigger = ruling.failure or Failure.SERVER_ERROR
            self._audit(Kind.EXHAUSTED, trigger.value, source=self._started().position.rung)

    def _end_of_held_stream(self) -> list[ProcessingResponse]:
        """The provider's response ended while its headers were still held."""
        stream = self._stream
        assert stream is not None
        if stream.error_body is not None:
            body = bytes(stream.error_body)
            stream.error_body = None
            if 200 <= self._status < 300:
                # A JSON answer to a stream request is not what the client can read.
                return self._failed_before_first_token(
                    Failure.SCHEMA_ERROR, "the provider answered a stream request without a stream"
                )
            ruling = self._rule_on_answer(body)
            self._move(Phase.CLOSED)
            headers = response_headers_response(_to_client(self._scrub, ruling.set_headers))
            if ruling.record is not None:
                headers = with_metadata(headers, META_TRIP, ruling.record.encode())
            return [headers, *self._end(body if ruling.body is None else ruling.body)]
        relay = stream.relay
        assert relay is not None
        if relay.finished:
            return self._failed_before_first_token(
                Failure.QUALITY_REGRESSION, "the stream finished without any content"
            )
        return self._failed_before_first_token(Failure.SERVER_ERROR, "the stream ended before its first token")

    def _failed_before_first_token(self, failure: Failure, detail: str) -> list[ProcessingResponse]:
        plan = self._started()
        ruling = rule_on_failure(
            plan,
            self._policy,
            failure,
            detail,
            status=None,
            provider_body=b"",
            retry_after_s=self._retry_after,
            shape=self._shape,
            can_wait=False,
            created=int(self._worker.clock.wall()),
        )
        self._apply(ruling)
        self._move(Phase.CLOSED)
        assert ruling.record is not None and ruling.body is not None
        headers = with_metadata(
            response_headers_response(_to_client(self._scrub, ruling.set_headers)), META_TRIP, ruling.record.encode()
        )
        return [headers, *self._end(ruling.body)]

    def _release_headers(self) -> ProcessingResponse:
        self._move(Phase.STREAMING)
        self._first_token_at = self._worker.clock.now()
        self._count_served()
        # The body is rewritten event by event: its length is not the provider's.
        return response_headers_response(_to_client(self._scrub, self._flags(None), "content-length"))

    def _finish_stream(self) -> bytes:
        """The provider's stream ended after the first token: the client's tail, and the count
        (a stream that did not end properly is a failed try for the health view)."""
        stream = self._stream
        assert stream is not None and stream.relay is not None
        relay = stream.relay
        done, finished, error = relay.done, relay.finished, relay.error
        tail = relay.finish()
        if done:
            self._close_stream("complete")
        elif error is not None:
            self._close_stream("provider_error")
            self._observe(stream_failure(error, started=True))
        elif finished:
            self._close_stream("finalised")
        else:
            self._close_stream("cut")
            self._observe(Failure.STREAM_INTERRUPTED)
        return tail

    def _close_stream(self, outcome: str) -> None:
        self._move(Phase.CLOSED)
        stream = self._stream
        assert stream is not None
        stream.pending.clear()
        self._effects.append(StreamEnded(outcome))
        if outcome in ("complete", "finalised") and stream.relay is not None:
            self._observe(None, stream.relay.output_units)

    # ---- state, flags and effects -------------------------------------------------------------

    def _move(self, target: Phase) -> None:
        if target not in TRANSITIONS[self.phase]:
            raise IllegalPhase(self.phase, target)
        self.phase = target

    def _started(self) -> TryPlan:
        if self._plan is None:
            raise ValueError(f"attempt got a message before its request headers (phase {self.phase})")
        return self._plan

    def _flags(self, failure: Failure | None) -> dict[str, str]:
        return answer_flags(self._started(), self._policy, failure, shape=self._shape)

    def _rung_labels(self) -> tuple[str, int, str, str]:
        plan = self._started()
        return (plan.position.ladder, plan.position.rung, plan.provider_name, plan.model)

    def _slot(self) -> tuple[str, int, str, Impact]:
        plan = self._started()
        return (plan.position.ladder, plan.position.rung, plan.decision.tenant, plan.decision.impact)

    def _count(self, outcome: str) -> None:
        # A synthetic probe is no tenant's traffic and no rung's load: the prober counts it
        # (rungway_probes_total); here it only becomes an observation for the health board.
        if not self._started().decision.probe:
            self._effects.append(Tried(*self._rung_labels(), outcome))

    def _count_served(self, tokens: int | None = None) -> None:
        plan = self._started()
        self._served_at = self._worker.clock.now()
        self._count("served")
        if plan.decision.probe or plan.decision.rerun:  # a re-run's answer reaches no client (E3)
            return
        position = plan.position
        degraded = position.rung != 0 or self._shape.degraded
        tier = self._policy.tier_of(position.ladder, position.rung)
        self._effects.append(
            Served(
                plan.decision.tenant, plan.decision.task, position.ladder, tier, degraded, position.rung, plan.decision
            )
        )
        if degraded:
            reason = self._flags(None)[REASON]
            self._audit(Kind.TIER_CHANGE, reason, source=0, target=plan.position.rung, tokens=tokens)

    def _audit(
        self,
        kind: Kind,
        trigger: str,
        *,
        source: int | None = None,
        target: int | None = None,
        tokens: int | None = None,
        detail: dict[str, str | int | float | bool] | None = None,
    ) -> None:
        """An audit entry about this request (none for probes, none when the trail is off)."""
        plan = self._started()
        if self._worker.auditing and not plan.decision.probe:
            now = self._worker.clock.wall()
            entry = audited(
                self._policy,
                plan.decision,
                kind,
                now,
                trigger,
                source=source,
                target=target,
                tokens=tokens,
                detail=detail,
            )
            self._effects.append(entry)

    def _audit_arrival(self, plan: TryPlan) -> None:
        """A real try on another rung than the request's previous try: a hop (or decide's skip
        of the ladder's first rung, when this is the first try)."""
        previous = plan.previous
        if previous is not None and previous.rung != plan.position.rung:
            trigger = plan.previous_failure or plan.why or Failure.SERVER_ERROR
            self._audit(Kind.HOP, trigger.value, source=previous.rung, target=plan.position.rung)
        elif previous is None and plan.decision.skip is not None and plan.position.rung != 0:
            self._audit(Kind.HOP, plan.decision.skip.value, source=0, target=plan.position.rung)

    def _audit_reshape(self, shape: TryShape) -> None:
        """The rung got less than the client sent: tools its mode removed, history trimmed."""
        rung = self._started().position.rung
        if shape.tools_removed:
            detail: dict[str, str | int | float | bool] = {"removed": ",".join(shape.tools_removed)}
            self._audit(Kind.TOOL_MODE, shape.tool_mode.value, target=rung, detail=detail)
        if shape.trimmed:
            self._audit(Kind.TRIM, "context_window", target=rung, detail={"messages": shape.trimmed})

    def _audit_rescue(self, outcome: str) -> None:
        _, rung, to_rung = self._rescue_labels()
        trigger = Failure.STREAM_INTERRUPTED.value
        self._audit(Kind.RESCUE, trigger, source=rung, target=to_rung, detail={"outcome": outcome})

    def _observe(self, failure: Failure | None, tokens: int | None = None) -> None:
        """Report this try to the health board, once; a failed try is also a counted trip."""
        if self._failure is None:
            self._failure = failure
        if failure is not None and not self._trip_counted and not self._started().decision.probe:
            self._trip_counted = True
            self._effects.append(Tripped(*self._rung_labels(), failure))
            self._audit(Kind.TRIP, failure.value, source=self._started().position.rung)
        if self._observed:
            return  # e.g. already reported as a slow call in flight
        self._observed = True
        plan = self._started()
        clock = self._worker.clock
        answered = self._first_token_at if plan.stream else self._answered_at
        if answered is None:
            answered = clock.now()
        self._effects.append(
            Observation(
                key=plan.key,
                at=clock.wall(),
                failure=failure,
                latency_s=answered - plan.started_at,
                output_tokens=tokens,
                task=plan.decision.task,
                stream=plan.stream,
                attempt=plan.position.attempt,
                probe=plan.decision.probe,
                ladder=plan.position.ladder,
                rung=plan.position.rung,
            )
        )

    def _measure(self, plan: TryPlan) -> None:
        """The try's end for the per-tenant metrics, once (a probe's counts as its rung's cost
        only: no tenant's traffic). A begun stream bills what it delivered; an answer, its usage
        (else our prompt estimate)."""
        if self._measured:
            return
        self._measured = True
        input_tokens, output_tokens = self._usage
        relay = self._stream.relay if self._stream is not None else None
        if relay is not None and relay.started:
            input_tokens, output_tokens = relay.delivered.input_tokens, relay.output_units
        elif self._served_at is not None and input_tokens is None:
            input_tokens = plan.prompt_tokens
        first_token = None if self._served_at is None else self._served_at - plan.started_at
        self._effects.append(
            TryEnded(
                *self._who(plan),
                plan.position.rung,
                plan.provider_name,
                plan.model,
                self._failure,
                self._worker.clock.now() - plan.started_at,
                first_token,
                input_tokens,
                output_tokens,
            )
        )

    @staticmethod
    def _who(plan: TryPlan) -> tuple[str, str, str]:
        return (plan.decision.tenant, plan.decision.task, plan.position.ladder)


def _cut(relay: StreamRelay) -> bool:
    """The provider ended a begun stream without finishing it (no finish, no terminal marker, no
    error event of its own)."""
    return relay.started and not relay.done and not relay.finished and relay.error is None
