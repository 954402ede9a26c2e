"""The per-tenant metrics of a try (A3): what attempt reports when a try ends (TryEnded), and
the latency, token and cost series the sidecar records from it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from extproc.core import Failure, FakeClock
from extproc.core.names import PROBE_TENANT
from extproc.filters.effects import RescueChunk, TryEnded
from extproc.policy.schema import Cost
from extproc.runtime.metrics import OTHER, Metrics
from extproc.runtime.sidecar import Sidecar
from tests.builders import make_policy, make_sidecar, openai_events, policy_data, response_body, response_headers, sse
from tests.filters.test_attempt import JSON, SSE, Try, openai_answer, stream_try
from tests.filters.test_rescue import begun, rescuing_policy

PRICED = policy_data()
PRICED["providers"]["primary"]["cost_per_1k"] = {"input": 0.5, "output": 2.0}
LABELS = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "gpt-4o",
    "tenant": "acme",
    "task": "default",
    "ladder": "main",
    "rung": "0",
}


def value(sidecar: Sidecar, name: str, **labels: str) -> float | None:
    """One sample of the sidecar's registry (histograms included), None when absent."""
    for collector in vars(sidecar.metrics).values():
        if not hasattr(collector, "collect"):
            continue
        for metric in collector.collect():
            for s in metric.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
    return None


def ended(t: Try) -> list[TryEnded]:
    return [e for e in t.effects if isinstance(e, TryEnded)]


def test_an_answered_try_reports_its_duration_first_answer_tokens_and_cost() -> None:
    clock = FakeClock(start=10.0)
    sidecar = make_sidecar(make_policy(providers=PRICED["providers"]), clock)
    t = Try(sidecar, rung=0)
    clock.advance(0.3)
    assert t.send(response_headers(200, JSON))
    clock.advance(0.2)
    t.send(response_body(openai_answer(tokens=40)))
    clock.advance(0.1)  # Envoy closes the try's stream after the answer
    t.on_close()
    (report,) = ended(t)
    assert report == TryEnded("acme", "default", "main", 0, "primary", "gpt-4o", None, report.duration_s, 0.5, 9, 40)
    assert report.duration_s == pytest.approx(0.6)
    duration = "gen_ai_client_operation_duration_seconds"
    assert value(sidecar, f"{duration}_count", **LABELS, error_type="") == 1
    assert value(sidecar, f"{duration}_bucket", **LABELS, error_type="", le="0.64") == 1
    assert value(sidecar, f"{duration}_bucket", **LABELS, error_type="", le="0.32") == 0
    assert value(sidecar, "gen_ai_server_time_to_first_token_seconds_sum", **LABELS) == pytest.approx(0.5)
    assert value(sidecar, "gen_ai_client_token_usage_sum", **LABELS, gen_ai_token_type="input") == 9
    assert value(sidecar, "gen_ai_client_token_usage_sum", **LABELS, gen_ai_token_type="output") == 40
    cost = value(
        sidecar, "rungway_cost_total", tenant="acme", task="default", ladder="main", rung="0", provider="primary"
    )
    assert cost == pytest.approx((9 * 0.5 + 40 * 2.0) / 1000)
    served = value(
        sidecar,
        "rungway_served_total",
        tenant="acme",
        task="default",
        ladder="main",
        tier="0",
        degraded="false",
        rung="0",
    )
    assert served == 1


def test_a_failed_try_reports_its_failure_and_neither_a_first_answer_nor_tokens() -> None:
    sidecar = make_sidecar(make_policy(providers=PRICED["providers"]))
    t = Try(sidecar, rung=0)
    t.answer_json(500, {"error": {"message": "boom", "type": "server_error"}})
    t.on_close()
    (report,) = ended(t)
    assert report.failure is Failure.SERVER_ERROR
    assert (report.first_token_s, report.input_tokens, report.output_tokens) == (None, None, None)
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(sidecar, duration, **LABELS, error_type="server_error") == 1
    assert value(sidecar, "gen_ai_server_time_to_first_token_seconds_count", **LABELS) is None
    assert (
        value(sidecar, "rungway_cost_total", tenant="acme", task="default", ladder="main", rung="0", provider="primary")
        is None
    )


def test_a_try_closed_without_an_answer_reports_why_once() -> None:
    clock = FakeClock(start=100.0)
    sidecar = make_sidecar(clock=clock)
    t = Try(sidecar, rung=0)
    clock.advance(2.1)  # past the rung's 2 s budget: Envoy's per-try timer closed it
    t.on_close()
    t.on_close()
    (report,) = ended(t)
    assert report.failure is Failure.TIMEOUT and report.duration_s == pytest.approx(2.1)


def test_a_stream_reports_its_first_token_and_what_it_delivered() -> None:
    clock = FakeClock(start=5.0)
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar)
    events = openai_events(["Par", "is", "."])
    t.send(response_headers(200, SSE))
    clock.advance(0.25)
    t.send(response_body(sse(events[:2]), end_of_stream=False))  # the first token is released
    clock.advance(1.0)
    t.send(response_body(sse(events[2:]), end_of_stream=True))
    t.on_close()
    (report,) = ended(t)
    assert report.failure is None
    assert report.first_token_s == pytest.approx(0.25) and report.duration_s == pytest.approx(1.25)
    assert report.output_tokens == 3  # the content events it relayed
    assert report.input_tokens is not None and report.input_tokens > 0  # the prompt, estimated


def test_a_probe_costs_its_rung_and_no_tenant_and_a_try_our_own_bug_ended_reports_nothing() -> None:
    data = policy_data()
    data["providers"]["primary"]["cost_per_1k"] = {"input": 1.0, "output": 2.0}
    sidecar = make_sidecar(make_policy(providers=data["providers"]))
    probe = Try(sidecar, rung=0, rungs=(0,), tries=1, probe=True, tenant=PROBE_TENANT)
    probe.answer_json(200, openai_answer())
    probe.on_close()
    assert (value(sidecar, "rungway_probe_cost_total", ladder="main", rung="0", provider="primary") or 0) > 0
    assert value(sidecar, "rungway_cost_total", tenant=PROBE_TENANT, task="default", ladder="main", rung="0",
                 provider="primary") is None  # fmt: skip
    assert sidecar.spend.spent(PROBE_TENANT, sidecar.clock.wall())[:2] == (0, 0.0)  # no tenant's budget
    broken = Try(make_sidecar(), rung=0)
    broken.processor.on_failure()
    broken.on_close()
    assert ended(broken) == []


def test_tenants_past_the_label_budget_are_counted_as_other() -> None:
    metrics = Metrics(CollectorRegistry())
    for i in range(250):
        metrics.try_ended(TryEnded(f"t{i}", "default", "main", 0, "primary", "gpt-4o", None, 0.1), "openai", 0.0)
    tenants: set[str] = set()
    for metric in metrics.operation_duration.collect():
        tenants.update(s.labels["tenant"] for s in metric.samples)
    assert len(tenants) == 201 and OTHER in tenants


def test_an_unknown_provider_is_labelled_other_and_costs_nothing() -> None:
    sidecar = make_sidecar()
    sidecar.apply([TryEnded("acme", "default", "main", 0, "gone", "m", None, 0.1, 0.1, 10, 10)])
    labels: dict[str, Any] = {**LABELS, "gen_ai_provider_name": OTHER, "gen_ai_request_model": "m"}
    assert value(sidecar, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 1
    assert (
        value(sidecar, "rungway_cost_total", tenant="acme", task="default", ladder="main", rung="0", provider="gone")
        is None
    )


@given(
    st.floats(0, 100, allow_nan=False),
    st.floats(0, 100, allow_nan=False),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)
def test_cost_is_each_token_kind_at_its_price_per_thousand(
    input_price: float, output_price: float, i: int, o: int
) -> None:
    cost = Cost(input=input_price, output=output_price)
    assert cost.of(i, o) == pytest.approx(cost.of(i, 0) + cost.of(0, o))
    assert cost.of(1000, 0) == pytest.approx(input_price) and cost.of(0, 1000) == pytest.approx(output_price)
    assert cost.of(i, o) >= 0


def test_a_rescue_reports_the_primarys_try_and_the_rescue_rungs_own() -> None:
    t = begun(rescuing_policy())
    t.send(response_body(b"", end_of_stream=True))  # cut after "Hello wor": the secondary continues
    rest = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"claude","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"ld!"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    t.processor.on_rescue(RescueChunk(rest))
    t.on_close()
    rescue, primary = ended(t)
    assert (rescue.rung, rescue.provider, rescue.model, rescue.failure) == (1, "secondary", "claude-fallback", None)
    assert (rescue.first_token_s, rescue.input_tokens, rescue.output_tokens) == (None, 5, 2)  # its own report
    assert (primary.rung, primary.failure, primary.output_tokens) == (0, Failure.STREAM_INTERRUPTED, 2)
    assert primary.first_token_s is not None
