"""Continuous verification in the attempt filter and its pure core: which rungs a sampled
request is shadowed to, the calls (each rung's own dialect, model and key, never streamed), the
tenant's rules kept, the verdicts, and the per-tenant spend ledger."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Dialect, Failure
from extproc.filters.effects import ShadowRequested
from extproc.filters.shadow import ShadowLedger, answer_cost, judge_shadow
from extproc.health.contract import Contract
from extproc.policy import Cost, TaskClass
from tests.builders import PRIMARY_KEY, SECONDARY_KEY, make_policy, make_sidecar, policy_data, request_body
from tests.filters.test_attempt import Try

ASK = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def shadows(t: Try) -> list[ShadowRequested]:
    return [e for e in t.effects if isinstance(e, ShadowRequested)]


def sampled(policy: Any = None, body: dict[str, Any] = ASK, **decided: Any) -> Try:
    t = Try(make_sidecar(policy), rung=0, **{"shadow": True, **decided})
    t.send(request_body(body, end_of_stream=True))
    return t


def test_a_sampled_first_try_shadows_every_other_rung_in_its_own_dialect_with_its_own_key() -> None:
    t = sampled(stream=True, cluster="rw.main.7.sse")
    by_rung = {s.rung: s for s in shadows(t)}
    assert set(by_rung) == {1, 2}  # rung 0 serves the client
    second = by_rung[1]
    assert second.call.cluster == "rw.direct.secondary" and second.call.path.endswith("/v1/messages")
    assert second.call.headers["x-api-key"] == SECONDARY_KEY and PRIMARY_KEY not in str(second.call)
    sent = json.loads(second.call.body)
    assert sent["model"] == "claude-fallback" and "stream" not in sent  # judged whole, never streamed
    assert second.dialect is Dialect.ANTHROPIC and second.endpoint == "secondary/claude-fallback"
    small = json.loads(by_rung[2].call.body)
    assert small["model"] == "small-model" and "stream" not in small and "stream_options" not in small


def test_an_unsampled_request_or_a_later_try_is_never_shadowed() -> None:
    assert shadows(sampled(shadow=False)) == []
    later = Try(make_sidecar(), rung=1, attempt=2, shadow=True)
    later.send(request_body(ASK, end_of_stream=True))
    assert shadows(later) == []


def test_a_shadow_keeps_the_tenants_rules_and_the_rungs_capabilities() -> None:
    # acme may not go below tier 1 and only to the eu: the small model (tier 2) and any rung
    # outside the eu are never asked, not even off the client's path.
    data = policy_data(tenants={"acme": {"lowest_tier": 1}})
    assert {s.rung for s in shadows(sampled(make_policy(tenants=data["tenants"])))} == {1}
    data = policy_data()
    data["providers"]["secondary"]["region"] = "us"
    policy = make_policy(providers=data["providers"], tenants={"acme": {"regions": ["eu"]}})
    assert shadows(sampled(policy)) == []  # primary and small have no region: outside the eu too
    tools = {**ASK, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    by_rung = {s.rung: json.loads(s.call.body) for s in shadows(sampled(body=tools))}
    assert "tools" in by_rung[1] and "tools" not in by_rung[2]  # small strips tools: as real traffic would


def test_shadowing_needs_the_body_even_where_the_try_would_not_rewrite_it() -> None:
    t = Try(make_sidecar(), rung=0, shadow=True)
    assert t.headers_answer.mode_override.request_body_mode == 0  # not overridden to NONE
    t.send(request_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
    assert len(shadows(t)) == 2


OPENAI_OK = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Paris is the capital."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
}


def shadow_of(contract: Contract | None = None) -> ShadowRequested:
    t = sampled()
    (s, _) = sorted(shadows(t), key=lambda s: s.rung)
    return ShadowRequested(
        s.call, Dialect.OPENAI, s.tenant, s.ladder, s.rung, s.endpoint, contract or s.contract, Cost(input=1, output=2)
    )


def test_a_shadow_answer_is_judged_by_the_contract_then_the_baseline_and_costed() -> None:
    shadow = shadow_of()
    body = json.dumps(OPENAI_OK).encode()
    assert judge_shadow(shadow, 200, body, 0.5, 1.0, 3.0) == ("ok", 2.0)  # 1000 * 1/1k + 500 * 2/1k
    assert judge_shadow(shadow, 200, body, 3.5, 1.0, 3.0) == ("slow", 2.0)
    assert judge_shadow(shadow, 200, body, 99.0, None, 3.0)[0] == "ok"  # no baseline yet: not slow
    assert judge_shadow(shadow, 200, b"{not json", 0.5, 1.0, 3.0)[0] == Failure.SCHEMA_ERROR.value
    assert judge_shadow(shadow, 429, b"{}", 0.5, 1.0, 3.0)[0] == Failure.RATE_LIMITED.value
    strict = shadow_of(Contract(TaskClass(min_output_tokens=50)))
    short = json.dumps({**OPENAI_OK, "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).encode()
    assert judge_shadow(strict, 200, short, 0.5, 1.0, 3.0)[0] != "ok"  # 5 tokens: under the contract


def test_an_answer_without_usage_costs_nothing() -> None:
    assert answer_cost(None, Cost(input=1, output=1)) == 0
    assert answer_cost({"usage": {"input_tokens": 2000, "output_tokens": 1000}}, Cost(input=3, output=1)) == 7


@given(st.lists(st.tuples(st.sampled_from("ab"), st.floats(0, 2), st.floats(0, 5000)), max_size=40), st.floats(0.1, 5))
def test_the_ledger_never_allows_a_tenant_past_its_cap_within_an_hour(
    spends: list[tuple[str, float, float]], cap: float
) -> None:
    ledger = ShadowLedger(cap)
    now = 0.0
    for tenant, cost, step in spends:
        now += step
        if ledger.allows(tenant, now):
            before = ledger.spent(tenant, now)
            assert before < cap
            ledger.spend(tenant, cost, now)
            assert ledger.spent(tenant, now) <= before + cost + 1e-9
        assert ledger.spent(tenant, now) < cap + 2  # at most one call's cost over the cap


def test_the_ledger_starts_afresh_each_hour_and_queries_change_nothing() -> None:
    ledger = ShadowLedger(1.0)
    ledger.spend("a", 1.5, 10.0)
    assert not ledger.allows("a", 100.0) and ledger.allows("b", 100.0)
    assert ledger.allows("a", 10.0 + 3600) and ledger.spent("a", 10.0 + 3600) == 0.0
    assert ledger.spent("a", 100.0) == 1.5  # asking about the next hour moved nothing
