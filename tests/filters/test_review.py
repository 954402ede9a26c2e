"""The filters' side of re-runs on recovery (E3): an answer served below tier 0 to a tenant that
re-runs is kept whole (the client's request, the answer as the client got it) and nothing else
is; decide pins a genuine re-run to the ladder's tier-0 rung (or refuses it) and a forged one is
401; a re-run's answer is never served, kept or counted as a tenant's; a recovery to tier 0 is
counted and audited."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.audit import Kind, RungRef
from extproc.core import Decision, Failure
from extproc.core.names import META_DECISION
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import KeptForReview, Served
from extproc.runtime.auditlog import MemoryAudit
from extproc.runtime.review import MemoryReviewStore
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    decide_fields,
    dynamic_metadata,
    make_policy,
    make_sidecar,
    request_body,
    request_headers,
    sample,
)
from tests.filters.test_attempt import Try, anthropic_answer, openai_answer

REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def review_sidecar(**overrides: Any) -> Sidecar:
    policy = make_policy(
        **{
            "tenants": {"acme": {"rerun_on_recovery": True}},
            "review": {"store": "unused.db", "max_bytes": 4096},
            "audit": {"dir": "/var/lib/rungway/audit"},
            **overrides,
        }
    )
    sidecar = make_sidecar(policy)
    sidecar.reviews = MemoryReviewStore()
    sidecar.audit = MemoryAudit()
    return sidecar


def served_on(sidecar: Sidecar, rung: int, body: dict[str, Any], **decided: Any) -> Try:
    t = Try(sidecar, rung=rung, **decided)
    t.send(request_body(REQUEST))
    t.answer_json(200, body)
    return t


def test_an_answer_below_tier_0_is_kept_whole_for_a_tenant_that_re_runs() -> None:
    sidecar = review_sidecar()
    t = served_on(sidecar, 1, anthropic_answer("Paris."), request_id="req-1", prompt_hash="ab" * 32)
    (kept,) = [e.item for e in t.effects if isinstance(e, KeptForReview)]
    assert (kept.tenant, kept.task, kept.ladder, kept.rung, kept.tier) == ("acme", "default", "main", 1, 1)
    assert (kept.served_by, kept.reason, kept.path) == (
        "secondary/claude-fallback",
        "server_error",
        "/v1/chat/completions",
    )
    assert (kept.request_id, kept.prompt_hash, kept.model) == ("req-1", "ab" * 32, "gpt-4o")
    assert json.loads(kept.request) == REQUEST  # the client's request, not the rung's translation
    answer = json.loads(kept.answer)  # the answer as the client got it: its own dialect
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == "Paris."
    assert sidecar.reviews is not None and [v.item for v in sidecar.reviews.select(None, None, 10)] == [kept]
    assert sample(sidecar, "rungway_reviews_kept_total", tenant="acme", outcome="kept") == 1


@pytest.mark.parametrize(
    ("rung", "decided", "why"),
    [
        (0, {}, "a tier-0 answer"),
        (1, {"tenant": "blue"}, "a tenant without rerun_on_recovery"),
        (1, {"rerun": True}, "a re-run's own answer"),
    ],
)
def test_nothing_else_is_kept(rung: int, decided: dict[str, Any], why: str) -> None:
    sidecar = review_sidecar()
    body = openai_answer() if rung == 0 else anthropic_answer()
    t = served_on(sidecar, rung, body, **decided)
    assert not [e for e in t.effects if isinstance(e, KeptForReview)], why
    assert sidecar.reviews is not None and sidecar.reviews.select(None, None, 10) == []


def test_a_task_class_can_opt_out_of_its_tenants_re_runs() -> None:
    sidecar = review_sidecar(tenants={"acme": {"rerun_on_recovery": True, "tasks": {"summarizer": {"rerun_on_recovery": False}}}})  # fmt: skip
    t = served_on(sidecar, 1, anthropic_answer(), task="summarizer", ladder="main")
    assert not [e for e in t.effects if isinstance(e, KeptForReview)]


def test_a_re_runs_answer_is_not_served_to_anyone() -> None:
    sidecar = review_sidecar()
    t = served_on(sidecar, 0, openai_answer(), rerun=True)
    assert not [e for e in t.effects if isinstance(e, Served)]
    assert sample(sidecar, "rungway_served_total", tenant="acme", task="default", ladder="main", tier="0",
                  degraded="false", rung="0") == 0  # fmt: skip


def test_an_answer_bigger_than_max_bytes_is_counted_not_kept() -> None:
    sidecar = review_sidecar()
    served_on(sidecar, 1, anthropic_answer("x" * 5000))
    assert sidecar.reviews is not None and sidecar.reviews.select(None, None, 10) == []
    assert sample(sidecar, "rungway_reviews_kept_total", tenant="acme", outcome="too_large") == 1


def test_a_recovery_to_tier_0_is_counted_and_audited_from_the_rung_it_left() -> None:
    sidecar = review_sidecar()
    served_on(sidecar, 1, anthropic_answer(), request_id="req-1")
    served_on(sidecar, 0, openai_answer(), request_id="req-2")
    served_on(sidecar, 0, openai_answer(), request_id="req-3")  # still tier 0: nothing more
    assert sample(sidecar, "rungway_tier_changes_total", tenant="acme", task="default", direction="degraded") == 1
    assert sample(sidecar, "rungway_tier_changes_total", tenant="acme", task="default", direction="recovered") == 1
    assert isinstance(sidecar.audit, MemoryAudit)
    (recovered,) = [r.entry for r in sidecar.audit.records if r.entry.trigger == "recovered"]
    assert recovered.kind is Kind.TIER_CHANGE and recovered.request_id == "req-2"
    assert recovered.source == RungRef("main", 1, "secondary", "claude-fallback", 1)
    assert recovered.target == RungRef("main", 0, "primary", "gpt-4o", 0)
    assert recovered.detail == {"from_tier": 1, "tier": 0, "direction": "recovered"}


def decide(sidecar: Sidecar, header: str, **extra: str) -> tuple[Any, Decision | None]:
    processor = DecideProcessor(sidecar)
    headers = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json",
               "x-rungway-rerun": header, **extra}  # fmt: skip
    (answer,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model="gpt-4o")))
    if answer.HasField("mode_override"):
        (answer,) = processor.dispatch(request_body(REQUEST))
    meta = dynamic_metadata(answer, META_DECISION)
    return answer, Decision.decode(meta) if meta.get("routed") else None


def test_a_genuine_re_run_is_pinned_to_the_tier_0_rung_and_a_forged_one_is_401(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = review_sidecar()
    _, decision = decide(sidecar, f"{sidecar.probe_token} acme rev_1")
    assert decision is not None and decision.rerun and decision.tenant == "acme"  # the rung's 2 attempts:
    assert (decision.ladder, decision.rungs, decision.tries, decision.shadow) == ("main", (0,), 2, False)
    answer, decision = decide(sidecar, "not-the-token acme rev_1")
    assert decision is None and answer.immediate_response.status.code == 401
    # The primary looks down: no fallback for a re-run, the re-runner tries again later.
    view: Any = lambda key, first: Failure.SERVER_ERROR if key.startswith("primary") else None  # noqa: E731
    monkeypatch.setattr(sidecar, "health_view", lambda impact: view)
    answer, decision = decide(sidecar, f"{sidecar.probe_token} acme rev_1")
    assert decision is None and answer.immediate_response.status.code == 503
