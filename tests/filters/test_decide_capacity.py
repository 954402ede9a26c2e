"""decide and a rung's capacity (T3): impact from the tenant's policy, rungs without a slot
dropped, a request with none answered at once with a Retry-After in the client's dialect."""

from __future__ import annotations

import json
from typing import Any

from extproc.core import Decision, Failure, Impact
from extproc.core.names import CLUSTER_HEADER, META_DECISION, REASON
from extproc.filters.attempt import AttemptProcessor
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import RungFreed, RungTaken
from extproc.runtime.auditlog import MemoryAudit
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    CLIENT_KEY,
    OTHER_KEY,
    decide_fields,
    dynamic_metadata,
    host_metadata_text,
    immediate_headers,
    make_policy,
    make_sidecar,
    policy_data,
    request_body,
    request_headers,
    sample,
    set_headers,
)


def capped_policy(**tenants: Any) -> Any:
    """Ladder main's fallback (rung 1) takes 4 at once, 1 of them kept for revenue_critical,
    half for one tenant."""
    data = policy_data(tenants=tenants)
    data["ladders"]["main"][1]["capacity"] = {
        "max_in_flight": 4,
        "reserved": {"revenue_critical": 1},
        "tenant_share": 0.5,
    }
    data["ladders"]["main"][0]["capacity"] = {"max_in_flight": 1}
    return make_policy(**{k: v for k, v in data.items() if k != "version"})


def ask(sidecar: Sidecar, key: str = CLIENT_KEY, path: str = "/v1/chat/completions", **extra: str) -> Any:
    processor = DecideProcessor(sidecar)
    headers = {":method": "POST", ":path": path, "content-type": "application/json", "content-length": "400"}
    headers.update({"authorization": f"Bearer {key}"} if path.endswith("completions") else {"x-api-key": key})
    (response,) = processor.dispatch(
        request_headers({**headers, **extra}, metadata=decide_fields(model="gpt-4o", max_tokens=100.0))
    )
    sidecar.apply(processor.drain_effects())
    return response


def decision(response: Any) -> Decision:
    return Decision.decode(dynamic_metadata(response, META_DECISION))


def test_impact_comes_from_the_tenants_task_class_and_a_header_only_when_the_tenant_may_claim_it() -> None:
    sidecar = make_sidecar(
        capped_policy(
            acme={"impact": "async_acceptable", "tasks": {"summarizer": {"impact": "revenue_critical"}}},
            blue={"header_impacts": ["deferrable"]},
        )
    )
    assert decision(ask(sidecar)).impact is Impact.ASYNC_ACCEPTABLE
    assert decision(ask(sidecar, **{"x-rungway-task": "summarizer"})).impact is Impact.REVENUE_CRITICAL
    assert decision(ask(sidecar, **{"x-rungway-impact": "deferrable"})).impact is Impact.DEFERRABLE
    claimed = ask(sidecar, OTHER_KEY, **{"x-rungway-impact": "revenue_critical"})
    assert decision(claimed).impact is Impact.CUSTOMER_FACING  # blue may not claim it: its default
    assert decision(ask(sidecar, OTHER_KEY, **{"x-rungway-impact": "deferrable"})).impact is Impact.DEFERRABLE


def test_a_full_first_rung_is_skipped_and_the_request_starts_on_the_next() -> None:
    sidecar = make_sidecar(capped_policy())
    first = ask(sidecar)
    assert decision(first).rungs == (0, 1, 2)  # holds rung 0's only slot (a reservation)
    second = ask(sidecar)
    assert decision(second).rungs == (1, 2)
    assert decision(second).skip is Failure.RATE_LIMITED
    assert (
        sample(
            sidecar,
            "rungway_rung_limited_total",
            tenant="acme",
            impact="customer_facing",
            ladder="main",
            rung="0",
            reason="rung_full",
        )
        == 1
    )


def test_over_its_share_a_tenant_gets_a_429_with_retry_after_in_its_dialect_and_another_is_served() -> None:
    data = policy_data()
    data["ladders"]["main"] = data["ladders"]["main"][:2]
    data["ladders"]["main"][1]["capacity"] = {
        "max_in_flight": 4,
        "reserved": {"revenue_critical": 1},
        "tenant_share": 0.5,
    }
    data["ladders"]["main"][0]["capacity"] = {"max_in_flight": 1}
    sidecar = make_sidecar(make_policy(**data))
    ask(sidecar)  # rung 0's slot
    assert decision(ask(sidecar)).rungs == (1,)
    assert decision(ask(sidecar)).rungs == (1,)
    shed = ask(sidecar, path="/v1/messages")  # acme holds 2 of rung 1's 4: its share
    assert shed.immediate_response.status.code == 429
    headers = immediate_headers(shed)
    assert headers["retry-after"] == "1"
    assert headers[REASON] == "rate_limited"
    body = json.loads(shed.immediate_response.body)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"  # Anthropic's shape
    assert "share" in body["error"]["message"]
    assert (
        sample(
            sidecar, "rungway_requests_limited_total", tenant="acme", impact="customer_facing", reason="tenant_share"
        )
        == 1
    )
    assert decision(ask(sidecar, OTHER_KEY)).rungs == (1,)  # blue has its own half
    # The slot kept for revenue_critical is not blue's to take as customer_facing...
    low = ask(sidecar, OTHER_KEY)
    assert low.immediate_response.status.code == 503
    assert (
        sample(sidecar, "rungway_requests_limited_total", tenant="blue", impact="customer_facing", reason="reserved")
        == 1
    )
    # ...but is a revenue-critical request's.
    assert CLUSTER_HEADER in set_headers(ask(sidecar, OTHER_KEY, **{"x-rungway-impact": "revenue_critical"}))


def test_a_try_holds_its_rungs_slot_until_its_stream_ends() -> None:
    sidecar = make_sidecar(capped_policy())
    routed = ask(sidecar)
    attempt = AttemptProcessor(sidecar)
    meta = {META_DECISION: dynamic_metadata(routed, META_DECISION)}
    attrs = {"xds.upstream_host_metadata": host_metadata_text("main", 0), "upstream.request_attempt_count": 1.0}
    attempt.dispatch(request_headers({":path": "/v1/chat/completions"}, metadata=meta, attributes=attrs))
    effects = attempt.drain_effects()
    holder = ("main", 0, "acme", Impact.CUSTOMER_FACING)
    assert RungTaken(*holder) in effects
    sidecar.apply(effects)
    assert sidecar.ledger.read(sidecar.clock.now()).snapshot(sidecar.clock.now()) == {"main/0": {"acme": 1}}
    attempt.on_close()
    effects = attempt.drain_effects()
    assert RungFreed(*holder) in effects
    sidecar.apply(effects)
    assert sidecar.ledger.read(sidecar.clock.now()).snapshot(sidecar.clock.now()) == {}


def test_with_the_audit_trail_on_a_request_with_no_slot_is_shed_on_its_headers_alone() -> None:
    # The trail asks for every chat body (its hash); a shed is no audited decision, so a noisy
    # tenant's flood of them costs one ext_proc message each, not two.
    data = policy_data()
    data["ladders"]["main"] = data["ladders"]["main"][:1]
    data["ladders"]["main"][0]["capacity"] = {"max_in_flight": 1}
    sidecar = make_sidecar(make_policy(**data))
    sidecar.audit = MemoryAudit()
    processor = DecideProcessor(sidecar)
    headers = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}"}
    (asked,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model="gpt-4o")))
    assert asked.HasField("mode_override")  # a slot: decided on the body (its hash)
    (routed,) = processor.dispatch(request_body({"model": "gpt-4o", "messages": []}))
    sidecar.apply(processor.drain_effects())
    assert CLUSTER_HEADER in set_headers(routed)  # it holds the rung's one slot now
    shed = ask(sidecar)
    assert shed.HasField("immediate_response") and shed.immediate_response.status.code == 503
    assert (
        sample(sidecar, "rungway_requests_limited_total", tenant="acme", impact="customer_facing", reason="rung_full")
        == 1
    )
