"""The upstream filter: one processor per try, on whichever rung Envoy picked for it.

Per try it injects the rung's key (scrubbing whatever an earlier try left: header mutations
leak across tries), rewrites path and body for the rung's provider, then judges the answer:
a failure the ladder can route around is flipped to 503 so Envoy's router retries on the next
rung of the same client request; the client's final answer is rendered in the client's dialect
and flagged with x-rungway-* headers.

JSON answers arrive BUFFERED. Streams arrive FULL_DUPLEX_STREAMED: the response headers are
held until the first token, so an error event before it still falls back; after it, a stall is
ended by the sidecar's own watchdog with an in-band error event.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..core import CLIENT_STATUS, Capability, Dialect, Failure
from ..core.names import CLUSTER_HEADER, META_DECISION, META_TRIP, PROBE_HEADER, endpoint_key
from ..health.board import Observation
from ..health.contract import Contract, judge_answer
from ..policy import Policy, Provider, Rung, TaskClass
from ..routing.quota import HEADERS as QUOTA_HEADERS
from ..routing.quota import exhausted_until
from ..routing.trip import Action, Position, TripRecord, after_failure, parse_retry_after, previous_failure
from ..runtime.sidecar import Sidecar
from ..translate import (
    TranslationError,
    anthropic_to_openai,
    dump_json,
    openai_to_anthropic,
    render_error,
)
from ..translate.relay import StreamRelay, stream_failure
from .flags import CANARY, flags
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
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
)
_ANTHROPIC_VERSION = "2023-06-01"
_PROBE_CONTRACT = TaskClass(min_output_tokens=1)
_NO_REQUEST_BODY = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.NONE,
    response_header_mode=Mode.SEND,
    response_body_mode=Mode.BUFFERED,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
_HEADERS_WANTED = frozenset({":status", "content-type", "retry-after"}) | QUOTA_HEADERS
# An error answer held back while a stream request is judged: cap what we buffer of it.
_MAX_ERROR_BODY = 256 * 1024


class AttemptError(Exception):
    """The try cannot be processed (e.g. Envoy routed to a rung the policy does not know)."""


_SCRUB_BY_POLICY: dict[int, tuple[Policy, tuple[str, ...]]] = {}


def _scrub_list(policy: Policy) -> tuple[str, ...]:
    """Headers every try removes: ours, plus each provider's static ones (once per policy)."""
    cached = _SCRUB_BY_POLICY.get(id(policy))
    if cached is not None and cached[0] is policy:
        return cached[1]
    extra = {name.lower() for p in policy.providers.values() for name in p.headers}
    own = (policy.tenant_header, policy.task_header, policy.impact_header)
    names = _SCRUB + tuple(sorted(extra - set(_SCRUB))) + own
    if len(_SCRUB_BY_POLICY) > 16:
        _SCRUB_BY_POLICY.clear()
    _SCRUB_BY_POLICY[id(policy)] = (policy, names)
    return names


class AttemptProcessor:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._policy = sidecar.policy
        self._status = 0
        self._retry_after: float | None = None
        self._request_schema: dict[str, Any] | None = None
        self._answered_at: float | None = None
        self._observed = False
        self._trip_counted = False
        self._begun = False
        self._first_token_at: float | None = None
        self._tools_stripped = False
        self._relay: StreamRelay | None = None
        self._error_body: bytearray | None = None
        self._pending = bytearray()
        self._headers_sent = False
        self._closed = False
        self._last_chunk_at = 0.0

    def dispatch(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self.request_headers(request)
        if kind == "request_body":
            return self.request_body(request)
        if kind == "response_headers":
            return self.response_headers(request)
        if kind == "response_body":
            return self.response_body(request)
        if kind == "response_trailers":
            return self.response_trailers(request)
        raise ValueError(f"attempt does not process {kind}")

    # ---- request ---------------------------------------------------------------------------

    def request_headers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        policy = self._policy
        decision = namespace(request, META_DECISION)
        attrs = attributes(request)
        host = host_metadata(str(attrs.get("xds.upstream_host_metadata", "")), META_DECISION)
        ladder = host.get("ladder")
        rung_index = host.get("rung")
        if not isinstance(ladder, str) or ladder not in policy.ladders or not isinstance(rung_index, float):
            raise AttemptError(f"try routed to an endpoint the policy does not know: {host!r}")
        rungs = policy.ladders[ladder]
        if int(rung_index) >= len(rungs):
            raise AttemptError(f"ladder {ladder!r} has no rung {int(rung_index)}")
        order_text = str(decision.get("rungs", ""))
        self._position = Position(
            ladder=ladder,
            rung=int(rung_index),
            slot=int(host.get("slot", 0.0)),
            order=tuple(int(i) for i in order_text.split(",")) if order_text else (int(rung_index),),
            attempt=int(attrs.get("upstream.request_attempt_count", 1.0)),
            tries=int(decision.get("tries", 1.0)),
        )
        self._rung: Rung = rungs[self._position.rung]
        self._provider_name = self._rung.provider
        self._provider: Provider = policy.providers[self._provider_name]
        self._client = Dialect(str(decision.get("dialect", "openai")))
        requested = str(decision.get("model", ""))
        self._model = self._rung.model_for(requested)
        self._stream = decision.get("stream") is True
        self._include_usage = decision.get("usage") is True
        self._prompt_tokens = int(decision.get("bytes", 0.0)) // 4
        self._tenant = str(decision.get("tenant", policy.default_tenant))
        self._task = str(decision.get("task", policy.default_task))
        self._probe = decision.get("probe") is True
        self._canary = decision.get("canary") is True
        self._response_format = str(decision.get("rf", ""))
        self._key = endpoint_key(self._provider_name, self._model)
        self._per_try_s = float(decision.get("per_try_ms", 0.0)) / 1000

        self._started_at = self._sidecar.clock.now()
        self._begun = True
        now_ms = self._started_at * 1000
        record = TripRecord.from_meta(namespace(request, META_TRIP))
        previous = previous_failure(record, self._position.attempt, now_ms, self._per_try_s * 1000)
        skip = decision.get("skip")
        self._why: Failure | None = record.first_failure or previous or _failure_or_none(skip)
        if self._why is None and self._position.rung != self._position.order[0]:
            # Envoy skipped the rungs before this one without trying them: its outlier
            # detection ejected them after consecutive 5xx answers.
            self._why = Failure.SERVER_ERROR

        self._translate = self._client.wire is not self._provider.dialect.wire
        may_strip = self._rung.strip_tools and Capability.TOOLS not in self._provider.capabilities
        self._rewrite = self._translate or self._model != requested or may_strip
        # The request's own JSON schema is in its body: read it to hold the answer to it.
        self._read_schema = (
            not self._stream and self._response_format == "json_schema" and self._contract_task().use_request_schema
        )
        self._needs_body = self._rewrite or self._read_schema

        set_headers = {":path": self._provider.chat_path(), **self._credential_headers(decision)}
        remove = list(_scrub_list(policy))
        if self._needs_body:
            remove.append("content-length")  # set again with the rewritten body
        response = with_metadata(
            request_headers_response(common(set_headers, remove)),
            META_TRIP,
            {
                "n": self._position.attempt,
                "t": now_ms,
                "rung": self._position.rung,
                "fail": "",
                "why": self._why.value if self._why else "",
            },
        )
        if not self._needs_body and not self._stream:
            with_mode(response, _NO_REQUEST_BODY)
        return [response]

    def _credential_headers(self, decision: dict[str, str | float | bool]) -> dict[str, str]:
        provider = self._provider
        key = self._sidecar.keys.get(self._provider_name)
        headers: dict[str, str] = {}
        if provider.dialect.wire is Dialect.ANTHROPIC:
            # An Anthropic client's own API version and betas carry over to Anthropic rungs.
            headers["anthropic-version"] = str(decision.get("av") or _ANTHROPIC_VERSION)
            if decision.get("ab"):
                headers["anthropic-beta"] = str(decision["ab"])
            if key is not None:
                headers["x-api-key"] = key.get_secret_value()
        elif key is not None:
            headers["authorization"] = "Bearer " + key.get_secret_value()
        headers.update({k.lower(): v for k, v in provider.headers.items()})
        return headers

    def request_body(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        if not self._needs_body:
            return [request_body_response()]
        try:
            body = json.loads(request.request_body.body)
            if not isinstance(body, dict):
                raise TranslationError("the request body must be a JSON object")
            if self._read_schema:
                self._request_schema = _request_schema(body)
            if not self._rewrite:
                return [request_body_response()]
            body = self._rewrite_request(body)
        except (ValueError, TranslationError) as exc:
            message = exc.message if isinstance(exc, TranslationError) else "the request body is not valid JSON"
            return [self._reject(Failure.CLIENT_ERROR, message)]
        data = dump_json(body)
        return [request_body_response(common({"content-length": str(len(data))}, body=data))]

    def _rewrite_request(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._rung.strip_tools and Capability.TOOLS not in self._provider.capabilities and body.get("tools"):
            body = {k: v for k, v in body.items() if k not in _TOOL_FIELDS}
            self._tools_stripped = True
        if not self._translate:
            body["model"] = self._model
            return body
        if self._client.wire is Dialect.OPENAI:
            return openai_to_anthropic.request(body, self._model)
        return anthropic_to_openai.request(body, self._model)

    def _reject(self, failure: Failure, message: str) -> ProcessingResponse:
        """A client error found while rewriting: answered now, never retried."""
        self._count_attempt("rejected")
        headers = {"content-type": "application/json", **self._flags(failure, final=True)}
        return immediate(CLIENT_STATUS[failure], headers, render_error(self._client.wire.value, failure, message))

    # ---- response --------------------------------------------------------------------------

    def response_headers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        headers = header_map(request.response_headers, _HEADERS_WANTED)
        self._answered_at = self._sidecar.clock.now()
        self._status = int(headers.get(":status", "0") or 0)
        wall = self._sidecar.clock.wall()
        self._retry_after = parse_retry_after(headers.get("retry-after"), wall)
        until = exhausted_until(headers, wall, self._policy.health.quota_floor_requests)
        if self._status == 429:
            until = max(until or 0.0, wall + (self._retry_after if self._retry_after is not None else 1.0))
        if until is not None:
            self._sidecar.report_quota(self._key, until)
        end_of_stream = request.response_headers.end_of_stream
        if not self._stream:
            if end_of_stream:
                return [self._judge_json(b"", headers_phase=True)]
            return [response_headers_response()]
        # Streams: hold the headers until we know what the answer is.
        is_sse = "text/event-stream" in headers.get("content-type", "")
        if self._status == 200 and is_sse:
            self._relay = StreamRelay(
                self._client,
                self._provider.dialect,
                model=self._model,
                stream_id=("msg_rw" if self._client.wire is Dialect.ANTHROPIC else "chatcmpl-rw")
                + secrets.token_hex(12),
                created=int(self._sidecar.clock.wall()),
                include_usage=self._include_usage,
                prompt_tokens=self._prompt_tokens,
            )
            self._last_chunk_at = self._sidecar.clock.now()
        else:
            self._error_body = bytearray()
        if end_of_stream:
            return self._end_of_held_stream()
        return []

    def response_body(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        chunk = request.response_body.body
        end_of_stream = request.response_body.end_of_stream
        if not self._stream:
            return [self._judge_json(chunk, headers_phase=False)]
        if self._closed:
            return []
        if self._error_body is not None:
            if len(self._error_body) < _MAX_ERROR_BODY:
                self._error_body += chunk[: _MAX_ERROR_BODY - len(self._error_body)]
            return self._end_of_held_stream() if end_of_stream else []
        relay = self._relay
        assert relay is not None
        self._last_chunk_at = self._sidecar.clock.now()
        out = relay.feed(chunk)
        if not relay.started:
            if relay.error is not None:
                return self._stream_failed_before_start(stream_failure(relay.error, started=False), relay.error.message)
            self._pending += out
            if end_of_stream:
                return self._end_of_held_stream()
            return []
        answers: list[ProcessingResponse] = []
        if not self._headers_sent:
            answers.append(self._release_headers())
            out = bytes(self._pending) + out
            self._pending.clear()
        if end_of_stream or relay.closed:
            answers.append(streamed(out + self._finish_stream(), True))
        elif out:
            answers.append(streamed(out, False))
        return answers

    def response_trailers(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        answers: list[ProcessingResponse] = []
        if self._stream and not self._closed:
            if self._relay is not None and self._relay.started:
                if not self._headers_sent:
                    answers.append(self._release_headers())
                answers.append(streamed(bytes(self._pending) + self._finish_stream(), True))
            else:
                answers.extend(self._end_of_held_stream())
        answers.append(trailers_response())
        return answers

    # ---- stream timers -----------------------------------------------------------------------

    def wake_at(self) -> float | None:
        relay = self._relay
        if relay is None or self._closed or not relay.started:
            return None  # before the first token, Envoy's per-try timeout is the budget
        wait = self._policy.stream_finish_grace_s if relay.finished else self._policy.stream_stall_s
        return self._last_chunk_at + wait

    def alarm(self) -> float | None:
        """While no answer has come: when this try becomes a slow call (over slow_call_factor
        times the endpoint's baseline). Slow calls in flight move the circuit before they end,
        which matters when a brownout makes them end only at the per-try timeout."""
        if self._observed or self._answered_at is not None or not self._begun or not self._policy.health.enabled:
            return None
        board = self._sidecar.board
        endpoint = board.endpoints.get(self._key)
        baseline = board.baseline(endpoint, self._stream) if endpoint is not None else None
        if baseline is None:
            return None
        return self._started_at + baseline * self._policy.health.circuit.slow_call_factor

    def on_alarm(self) -> None:
        if not self._observed and self._answered_at is None:
            self._observe(None)  # latency so far is over the threshold: the board counts it slow

    def on_wake(self) -> list[ProcessingResponse]:
        relay = self._relay
        if relay is None or self._closed:
            return []
        answers = [] if self._headers_sent else [self._release_headers()]
        if relay.finished:
            tail = bytes(self._pending) + relay.finalise()
            self._close_stream("finalised")
        else:
            tail = bytes(self._pending) + relay.interrupt(
                f"the provider stopped sending for {self._policy.stream_stall_s:g}s after the answer had started"
            )
            self._close_stream("interrupted")
            self._observe(Failure.STREAM_INTERRUPTED)
        answers.append(streamed(tail, True))
        return answers

    # ---- judging -----------------------------------------------------------------------------

    def _judge_json(self, body: bytes, *, headers_phase: bool) -> ProcessingResponse:
        set_headers, new_body, trip = self._outcome(body)
        if headers_phase:  # an answer without a body: nothing to replace
            response = response_headers_response(common(set_headers))
        else:
            response = response_body_response(common(set_headers, body=new_body))
        return with_metadata(response, META_TRIP, trip) if trip is not None else response

    def _outcome(self, body: bytes) -> tuple[dict[str, str], bytes | None, dict[str, str] | None]:
        """A whole answer → the headers to set, the body to replace it with (None: keep it),
        and the trip record for the next try (None: served)."""
        status = self._status
        contract = Contract(
            self._contract_task(),
            request_schema=self._request_schema,
            json_mode=self._response_format in ("json_object", "json_schema"),
        )
        judged = judge_answer(self._provider.dialect, status, body, contract)
        failure, detail = judged.failure, judged.detail
        served = 200 <= status < 300 and (
            failure is None or (failure is Failure.SAFETY_BLOCK and not self._policy.hop_on_safety_block)
        )
        if served:
            # A provider's refusal is an answer too: propagated as the client's answer.
            new_body = self._translate_answer(judged.parsed) if self._translate else None
            if self._translate and new_body is None:
                failure, detail = Failure.SCHEMA_ERROR, "the provider's answer cannot be expressed in the client's API"
            else:
                set_headers = self._flags(failure, final=True)
                if new_body is not None:
                    set_headers["content-length"] = str(len(new_body))
                self._count_served(failure)
                self._observe(failure, _output_tokens(judged.parsed))
                return set_headers, new_body, None
        assert failure is not None
        action = after_failure(self._policy, self._position, failure, self._retry_after)
        self._observe(failure)
        trip = {"fail": failure.value, "why": (self._why or failure).value}
        if action is Action.WAIT:
            self._count_attempt("wait")
            return self._flags(failure, final=False), None, trip
        err = render_error(self._client.wire.value, failure, detail)
        error_headers = {"content-type": "application/json", "content-length": str(len(err))}
        if action is Action.HOP:
            self._count_attempt("hop")
            return {":status": "503", **error_headers}, err, trip
        # FINAL: the client's answer is this failure, in its own dialect.
        self._count_attempt("failed")
        set_headers = self._flags(failure, final=True)
        provider_error = not 200 <= status < 300
        set_headers[":status"] = str(status if provider_error else CLIENT_STATUS[failure])
        if provider_error and not self._translate and body:
            return set_headers, None, trip  # already the client's dialect
        return {**set_headers, **error_headers}, err, trip

    def _contract_task(self) -> TaskClass:
        if self._probe:
            return _PROBE_CONTRACT  # a probe asks for a word or two: only "answered sensibly" counts
        return self._policy.tasks.get(self._task) or self._policy.tasks[self._policy.default_task]

    def _translate_answer(self, parsed: Any) -> bytes | None:
        try:
            if self._client.wire is Dialect.OPENAI:
                out = openai_to_anthropic.response(parsed, self._model, created=int(self._sidecar.clock.wall()))
            else:
                out = anthropic_to_openai.response(parsed, self._model)
        except TranslationError:
            return None
        return dump_json(out)

    def _end_of_held_stream(self) -> list[ProcessingResponse]:
        """The provider's response ended while its headers were still held."""
        if self._error_body is not None:
            body = bytes(self._error_body)
            self._error_body = None
            if 200 <= self._status < 300:
                # A JSON answer to a stream request is not what the client can read.
                return self._stream_failed_before_start(
                    Failure.SCHEMA_ERROR, "the provider answered a stream request without a stream"
                )
            set_headers, new_body, trip = self._outcome(body)
            self._closed = True
            headers = response_headers_response(common(set_headers))
            if trip is not None:
                headers = with_metadata(headers, META_TRIP, trip)
            return [headers, streamed(body if new_body is None else new_body, True)]
        relay = self._relay
        assert relay is not None
        if relay.finished:
            return self._stream_failed_before_start(
                Failure.QUALITY_REGRESSION, "the stream finished without any content"
            )
        return self._stream_failed_before_start(Failure.SERVER_ERROR, "the stream ended before its first token")

    def _stream_failed_before_start(self, failure: Failure, detail: str) -> list[ProcessingResponse]:
        self._closed = True
        action = after_failure(self._policy, self._position, failure, self._retry_after)
        self._observe(failure)
        trip = {"fail": failure.value, "why": (self._why or failure).value}
        err = render_error(self._client.wire.value, failure, detail)
        if action is Action.FINAL:
            self._count_attempt("failed")
            set_headers = {**self._flags(failure, final=True), ":status": str(CLIENT_STATUS[failure])}
        else:
            self._count_attempt("hop")
            set_headers = {":status": "503"}
        set_headers.update({"content-type": "application/json", "content-length": str(len(err))})
        headers = with_metadata(response_headers_response(common(set_headers)), META_TRIP, trip)
        return [headers, streamed(err, True)]

    def _release_headers(self) -> ProcessingResponse:
        self._headers_sent = True
        self._first_token_at = self._sidecar.clock.now()
        self._count_served(None)
        # The body is rewritten event by event: its length is not the provider's.
        return response_headers_response(common(self._flags(None, final=True), remove=("content-length",)))

    def _finish_stream(self) -> bytes:
        """The provider's stream ended after the first token: the client's tail, and the count
        (a stream that did not end properly is a failed try for the health view)."""
        relay = self._relay
        assert relay is not None
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
        self._closed = True
        self._pending.clear()
        self._sidecar.metrics.streams.labels(outcome).inc()
        if outcome in ("complete", "finalised") and self._relay is not None:
            self._observe(None, self._relay.output_units)

    # ---- flags and counting ------------------------------------------------------------------

    def _flags(self, failure: Failure | None, *, final: bool) -> dict[str, str]:
        degraded = self._position.rung != 0 or self._tools_stripped
        reason: Failure | str | None = failure if failure is not None else (self._why if degraded else None)
        if reason is None and self._canary and degraded:
            reason = CANARY
        if self._tools_stripped and reason is None:
            reason = Failure.TOOL_MISMATCH
        return flags(
            served_by=f"{self._provider_name}/{self._model}",
            tier=self._policy.tier_of(self._position.ladder, self._position.rung),
            degraded=degraded,
            reason=reason,
            policy_version=self._policy.version,
            attempts=self._position.attempt,
        )

    def _rung_labels(self) -> tuple[str, str, str, str]:
        return (self._position.ladder, str(self._position.rung), self._provider_name, self._model)

    def _count_attempt(self, outcome: str) -> None:
        self._sidecar.metrics.attempts.labels(*self._rung_labels(), outcome).inc()

    def _observe(self, failure: Failure | None, tokens: int | None = None) -> None:
        """Report this try to the health board, once; a failed try is also a counted trip."""
        if failure is not None and not self._trip_counted:
            self._trip_counted = True
            self._sidecar.metrics.trips.labels(*self._rung_labels(), failure.value).inc()
        if self._observed:
            return  # e.g. already reported as a slow call in flight
        self._observed = True
        clock = self._sidecar.clock
        answered = self._first_token_at if self._stream else self._answered_at
        if answered is None:
            answered = clock.now()
        self._sidecar.observe(
            Observation(
                key=self._key,
                at=clock.wall(),
                failure=failure,
                latency_s=answered - self._started_at,
                output_tokens=tokens,
                task=self._task,
                stream=self._stream,
                attempt=self._position.attempt,
                probe=self._probe,
                ladder=self._position.ladder,
                rung=self._position.rung,
            )
        )

    def on_close(self) -> None:
        """The try's stream ended. Without an answer seen, Envoy's per-try timer or a reset
        ended it: the board learns that here, at once."""
        if not self._begun or self._observed:
            return
        if self._stream and self._headers_sent:
            failure = Failure.STREAM_INTERRUPTED
        elif self._per_try_s > 0 and self._sidecar.clock.now() - self._started_at >= self._per_try_s * 0.95:
            failure = Failure.TIMEOUT
        else:
            failure = Failure.CONNECT_ERROR
        self._observe(failure)

    def _count_served(self, failure: Failure | None) -> None:
        self._count_attempt("served")
        degraded = self._position.rung != 0 or self._tools_stripped
        tier = str(self._policy.tier_of(self._position.ladder, self._position.rung))
        metrics = self._sidecar.metrics
        metrics.served.labels(
            metrics.tenant(self._tenant), self._task, self._position.ladder, tier, str(degraded).lower()
        ).inc()


def _failure_or_none(value: object) -> Failure | None:
    try:
        return Failure(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def _request_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema an OpenAI request asked for in response_format, if any."""
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def _output_tokens(parsed: Any) -> int | None:
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("completion_tokens", usage.get("output_tokens"))
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
