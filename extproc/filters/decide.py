"""The downstream filter: one processor per client request, deciding the ladder.

Envoy's json_to_metadata has already lifted the body's model / stream / JSON-mode fields into
metadata, so most requests are decided on the request-headers message alone; the body is asked
for only when the answer depends on whether the request carries tools.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace

from ..core import CLIENT_STATUS, Dialect, Failure, Impact
from ..core.names import (
    CLUSTER_HEADER,
    INVALID,
    META_DECISION,
    META_REQUEST,
    MISSING,
    PROBE_HEADER,
    cluster_name,
    endpoint_key,
)
from ..routing.ladder import NeedBody, Refusal, RequestFeatures, Route, choose, reroute
from ..runtime.sidecar import Sidecar
from ..translate import render_error
from .flags import flags
from .wire import (
    Mode,
    ProcessingRequest,
    ProcessingResponse,
    common,
    header_map,
    immediate,
    namespace,
    request_body_response,
    request_headers_response,
    with_metadata,
    with_mode,
)

ANTHROPIC_PATH = "/v1/messages"
_ASK_FOR_BODY = Mode(
    request_header_mode=Mode.SEND,
    request_body_mode=Mode.BUFFERED,
    response_header_mode=Mode.SKIP,
    response_body_mode=Mode.NONE,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)
_IMPACTS = {i.value: i for i in Impact}


class DecideProcessor:
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._policy = sidecar.policy
        self._features: RequestFeatures | None = None
        self._dialect = Dialect.OPENAI
        self._include_usage = False
        self._response_format = ""
        self._anthropic: dict[str, str] = {}

    def dispatch(self, request: ProcessingRequest) -> list[ProcessingResponse]:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return [self.request_headers(request)]
        if kind == "request_body":
            return [self.request_body(request)]
        raise ValueError(f"decide does not process {kind}")

    def wake_at(self) -> float | None:
        return None

    def on_wake(self) -> list[ProcessingResponse]:
        return []

    def on_close(self) -> None:
        pass

    def alarm(self) -> float | None:
        return None

    def on_alarm(self) -> None:
        pass

    def request_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        policy = self._policy
        wanted = frozenset(
            {
                ":path",
                "content-length",
                "anthropic-version",
                "anthropic-beta",
                policy.tenant_header,
                policy.task_header,
                policy.impact_header,
                PROBE_HEADER,
            }
        )
        headers = header_map(request.request_headers, wanted)
        path = headers.get(":path", "").split("?", 1)[0]
        self._dialect = Dialect.ANTHROPIC if path == ANTHROPIC_PATH else Dialect.OPENAI
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
        self._features = RequestFeatures(
            dialect=self._dialect,
            model=model,
            stream=fields.get("stream") is True,
            json_mode=fields.get("response_format") in ("json_object", "json_schema"),
            max_tokens=int(max_tokens) if isinstance(max_tokens, float) else None,
            body_bytes=int(length) if length and length.isdigit() else None,
            tenant=headers.get(policy.tenant_header) or policy.default_tenant,
            task=task,
            impact=_IMPACTS.get(headers.get(policy.impact_header, ""), policy.default_impact),
        )
        self._include_usage = fields.get("include_usage") is True
        # An Anthropic client's API version and betas, for rungs that speak Anthropic too
        # (the attempt filter scrubs provider headers on every try).
        self._anthropic = {
            key: headers[name]
            for key, name in (("av", "anthropic-version"), ("ab", "anthropic-beta"))
            if name in headers
        }
        self._response_format = str(fields.get("response_format", ""))
        probe = headers.get(PROBE_HEADER)
        if probe is not None:
            return self._answer(self._probe_route(probe), body_phase=False)
        result = self._route()
        if isinstance(result, NeedBody):
            return with_mode(request_headers_response(), _ASK_FOR_BODY)
        return self._answer(result, body_phase=False)

    def request_body(self, request: ProcessingRequest) -> ProcessingResponse:
        assert self._features is not None
        try:
            body = json.loads(request.request_body.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._refuse(Failure.CLIENT_ERROR, "the request body is not a valid JSON object", "invalid")
        self._features = replace(self._features, has_tools=bool(body.get("tools")))
        result = self._route()
        assert not isinstance(result, NeedBody)
        return self._answer(result, body_phase=True)

    def _route(self) -> Route | Refusal | NeedBody:
        """The ladder choice, shaped by the health board: unwell rungs skipped, a canary share
        sent to fallback rungs, no retries once the fleet's retry budget is spent."""
        f = self._features
        assert f is not None
        sidecar = self._sidecar
        result = choose(self._policy, f, sidecar.health_view(f.impact))
        if not isinstance(result, Route):
            return result
        health = self._policy.health
        if (
            health.enabled
            and health.canary_share > 0
            and f.impact is not Impact.REVENUE_CRITICAL
            and result.skip_reason is None
            and len(result.rungs) > 1
            and not self._is_probe_slot(result)
            and sidecar.rng.random() < health.canary_share
        ):
            result = reroute(self._policy, result, result.rungs[1:], f.stream, canary=True)
        if result.tries > 1 and not sidecar.retries_allowed():
            result = replace(result, tries=1)
        sidecar.note_request()
        return result

    def _is_probe_slot(self, route: Route) -> bool:
        """The first rung is half-open: this request holds its probe slot and must try it."""
        assert self._features is not None
        first = self._policy.ladders[route.ladder][route.rungs[0]]
        key = endpoint_key(first.provider, first.model_for(self._features.model))
        return self._sidecar.board.half_open(key, self._sidecar.clock.wall())

    def _probe_route(self, header: str) -> Route | Refusal:
        """`token ladder rung`: a synthetic probe of one rung, only with `rungway up`'s token."""
        token, _, rest = header.partition(" ")
        ladder, _, index = rest.partition(" ")
        rungs = self._policy.ladders.get(ladder)
        if not secrets.compare_digest(token, self._sidecar.probe_token) or rungs is None or not index.isdigit():
            return Refusal(Failure.CLIENT_ERROR, "invalid probe")
        i = int(index)
        if i >= len(rungs):
            return Refusal(Failure.CLIENT_ERROR, "invalid probe")
        return Route(
            ladder=ladder,
            rungs=(i,),
            cluster=cluster_name(ladder, (i,), False),
            tries=1,
            per_try_timeout_s=rungs[i].timeout_s,
            skip_reason=None,
            probe=True,
        )

    def _answer(self, result: Route | Refusal, *, body_phase: bool) -> ProcessingResponse:
        f = self._features
        assert f is not None
        if isinstance(result, Refusal):
            return self._refuse(result.failure, result.message, "refused", ladder="")
        policy = self._policy
        metrics = self._sidecar.metrics
        metrics.decisions.labels(metrics.tenant(f.tenant), f.task, result.ladder, "routed").inc()
        c = common(
            {
                CLUSTER_HEADER: result.cluster,
                "x-envoy-max-retries": str(result.tries - 1),
                "x-envoy-upstream-rq-per-try-timeout-ms": str(int(result.per_try_timeout_s * 1000)),
            }
        )
        response = request_body_response(c) if body_phase else request_headers_response(c)
        return with_metadata(
            response,
            META_DECISION,
            {
                "routed": True,
                "cluster": result.cluster,
                "ladder": result.ladder,
                "rungs": ",".join(map(str, result.rungs)),
                "tries": result.tries,
                "per_try_ms": int(result.per_try_timeout_s * 1000),
                "tenant": f.tenant,
                "task": f.task,
                "impact": f.impact.value,
                "dialect": f.dialect.value,
                "model": f.model,
                "stream": f.stream,
                "usage": self._include_usage,
                "bytes": f.body_bytes or 0,
                "policy": policy.version,
                "skip": result.skip_reason.value if result.skip_reason else "",
                "canary": result.canary,
                "probe": result.probe,
                "rf": self._response_format,
                **(self._anthropic if f.dialect is Dialect.ANTHROPIC else {}),
            },
        )

    def _refuse(self, failure: Failure, message: str, outcome: str, ladder: str = "") -> ProcessingResponse:
        policy = self._policy
        f = self._features
        tenant = f.tenant if f else policy.default_tenant
        task = f.task if f else policy.default_task
        metrics = self._sidecar.metrics
        metrics.decisions.labels(metrics.tenant(tenant), task, ladder, outcome).inc()
        headers = {
            "content-type": "application/json",
            **flags(
                served_by="rungway",
                tier=None,
                degraded=False,
                reason=failure,
                policy_version=policy.version,
                attempts=0,
            ),
        }
        # The status agrees with the error type render_error picks for the failure.
        response = immediate(CLIENT_STATUS[failure], headers, render_error(self._dialect.value, failure, message))
        # Marks the answer as already rendered, so Envoy's local-reply mappers leave it alone.
        return with_metadata(response, META_DECISION, {"rendered": True, "tenant": tenant, "task": task})
