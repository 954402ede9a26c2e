"""The filters' side of escalation (E2): decide arms a request its tenant's rule covers; a try
holds a judged answer (the Escalated effect, no answer of its own) when a signal fires, and the
runtime answers 202 only once it is stored; a person's decision renders what the client fetches."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.audit import Kind
from extproc.core import (
    ContractError,
    Decision,
    DeferredTask,
    Dialect,
    Escalation,
    Failure,
    Impact,
    Resolution,
    Review,
    Step,
    TaskResult,
    TripRecord,
)
from extproc.core.names import ESCALATION_HEADER, LOCATION, META_DECISION, TASK_ID_HEADER, TASK_STATUS_HEADER
from extproc.escalation import EscalationState
from extproc.filters.effects import Escalated
from extproc.filters.escalation import ReviewError, event_body, reviewed
from extproc.policy import Policy
from extproc.runtime.auditlog import MemoryAudit
from extproc.runtime.escalations import MemoryEscalations
from extproc.runtime.sidecar import Sidecar
from extproc.translate import mean_logprob
from tests.builders import (
    body_of,
    dynamic_metadata,
    make_policy,
    make_sidecar,
    request_body,
    response_body,
    response_headers,
    sample,
    set_headers,
)
from tests.filters.test_attempt import JSON, OPENAI_REQUEST, Try, anthropic_answer, openai_answer, record
from tests.filters.test_deferral import send

ESCALATION = {"webhook_url": "https://oncall.test/hook", "secret": {"env": "RW_UNIT_ESCALATION"}}


def escalation_policy(rule: dict[str, Any] | None = None, **tenant: Any) -> Policy:
    return make_policy(
        tenants={"acme": {"escalate": {"impact": "customer_facing", **(rule or {"tier": 1})}, **tenant}},
        deferral={"store": "unused.db"},
        escalation=ESCALATION,
    )


def held_sidecar(policy: Policy) -> Sidecar:
    sidecar = make_sidecar(policy)
    sidecar.escalations = MemoryEscalations()
    return sidecar


def judged(t: Try, status: int, body: dict[str, Any]) -> list[Any]:
    """The client's body, then the provider's answer: what the try answers to its body message."""
    t.send(request_body(OPENAI_REQUEST))
    t.send(response_headers(status, JSON))
    return t.send(response_body(body))


def escalated(t: Try) -> Escalated:
    (effect,) = [e for e in t.effects if isinstance(e, Escalated)]
    return effect


# ---- decide ----------------------------------------------------------------------------------------


def test_decide_arms_a_request_its_tenants_rule_covers_never_a_stream() -> None:
    sidecar = held_sidecar(escalation_policy())
    _, answers, _ = send(sidecar)
    assert dynamic_metadata(answers[-1], META_DECISION)["escalate"] is True
    _, answers, _ = send(sidecar, stream=True)
    assert dynamic_metadata(answers[-1], META_DECISION)["escalate"] is False
    plain = held_sidecar(make_policy())
    _, answers, _ = send(plain)
    assert dynamic_metadata(answers[-1], META_DECISION)["escalate"] is False


def test_a_replay_a_person_decided_on_is_never_armed_and_a_redirect_is_pinned() -> None:
    sidecar = held_sidecar(escalation_policy())
    replay = {"x-rungway-replay": f"{sidecar.probe_token} acme task_abcdefgh", ESCALATION_HEADER: "rung=2"}
    _, answers, _ = send(sidecar, replay)
    decision = Decision.decode(dynamic_metadata(answers[-1], META_DECISION))
    assert decision.rungs == (2,) and not decision.escalate
    replay[ESCALATION_HEADER] = "reviewed"
    _, answers, _ = send(sidecar, replay)
    decision = Decision.decode(dynamic_metadata(answers[-1], META_DECISION))
    assert decision.rungs == (0, 1, 2) and not decision.escalate
    # A client cannot claim a review: without the replay secret the header means nothing.
    _, answers, _ = send(sidecar, {ESCALATION_HEADER: "rung=2"})
    decision = Decision.decode(dynamic_metadata(answers[-1], META_DECISION))
    assert decision.rungs == (0, 1, 2) and decision.escalate


def test_a_deferred_tasks_replay_is_never_armed() -> None:
    # Its answer goes to the drainer, which keeps the task it replays: a 202 for a new escalated
    # task (served by rungway) would be replayed again and again, each time a new escalation and
    # webhook, and the client's task would never get the answer a person decided on.
    sidecar = held_sidecar(escalation_policy())
    replay = {"x-rungway-replay": f"{sidecar.probe_token} acme task_abcdefgh"}
    _, answers, _ = send(sidecar, replay)
    decision = Decision.decode(dynamic_metadata(answers[-1], META_DECISION))
    assert decision.rungs == (0, 1, 2) and not decision.escalate


def test_a_redirect_to_a_rung_the_tenant_does_not_permit_is_refused() -> None:
    sidecar = held_sidecar(escalation_policy(lowest_tier=1))
    replay = {"x-rungway-replay": f"{sidecar.probe_token} acme task_abcdefgh", ESCALATION_HEADER: "rung=2"}
    _, answers, _ = send(sidecar, replay)
    assert answers[-1].immediate_response.status.code == 503
    assert b"rung 2 may not serve" in answers[-1].immediate_response.body


# ---- attempt -------------------------------------------------------------------------------------


def test_an_answer_from_a_fallback_tier_is_held_and_answered_202_once_stored() -> None:
    sidecar = held_sidecar(escalation_policy())
    trip = TripRecord(1, 0, 0.0, failure=Failure.SERVER_ERROR, first_failure=Failure.SERVER_ERROR, next_rung=1).encode()
    t = Try(sidecar, rung=1, attempt=2, trip=dict(trip), escalate=True)
    assert judged(t, 200, anthropic_answer("Refund approved.")) == []  # the runtime answers
    effect = escalated(t)
    assert json.loads(effect.task.body) == OPENAI_REQUEST  # the client's body, as it sent it
    assert (effect.task.tenant, effect.task.dialect, effect.task.path) == (
        "acme",
        Dialect.OPENAI,
        "/v1/chat/completions",
    )
    e = effect.escalation
    assert (e.id, e.reasons, e.rung, e.tier, e.served_by) == (
        effect.task.id,
        ("tier",),
        1,
        1,
        "secondary/claude-fallback",
    )
    assert e.history == (Step(0, "server_error"), Step(1, "served"))
    assert e.policy == sidecar.policy.stamp and e.has_candidate
    candidate = effect.candidate
    assert candidate is not None and candidate.status == 200
    assert json.loads(candidate.body)["choices"][0]["message"]["content"] == "Refund approved."
    assert dict(candidate.headers)["x-rungway-served-by"] == "secondary/claude-fallback"

    answer = asyncio.run(sidecar.settle(effect))
    headers = set_headers(answer)
    assert headers[":status"] == "202" and headers[TASK_STATUS_HEADER] == "escalated"
    assert headers[TASK_ID_HEADER] == e.id and headers[LOCATION] == f"/v1/rungway/tasks/{e.id}"
    assert headers[ESCALATION_HEADER] == "escalated" and headers["x-rungway-served-by"] == "rungway"
    body = json.loads(body_of(answer) or b"")
    assert (body["object"], body["id"], body["status"]) == ("rungway.task", e.id, "escalated")
    assert sidecar.escalations is not None
    stored = sidecar.escalations.escalation(e.id)
    assert stored is not None and stored.state is EscalationState.OPEN
    assert sample(sidecar, "rungway_escalations_total", tenant="acme", outcome="escalated") == 1


def test_the_client_hears_503_when_the_answer_cannot_be_held() -> None:
    sidecar = held_sidecar(escalation_policy())
    t = Try(sidecar, rung=1, escalate=True)
    judged(t, 200, anthropic_answer())
    sidecar.escalations = None
    answer = asyncio.run(sidecar.settle(escalated(t)))
    assert set_headers(answer)[":status"] == "503"
    assert json.loads(body_of(answer) or b"")["error"]["rungway_reason"] == "server_error"
    assert sample(sidecar, "rungway_escalations_total", tenant="acme", outcome="unavailable") == 1


def test_the_escalated_record_says_whether_the_answer_was_held() -> None:
    # The record is written once the store has answered: a 503 is no escalation a person sees.
    sidecar = held_sidecar(escalation_policy())
    sidecar.audit = audit = MemoryAudit()
    t = Try(sidecar, rung=1, escalate=True)
    judged(t, 200, anthropic_answer())
    assert [r for r in audit.records if r.entry.kind is Kind.ESCALATED] == []
    asyncio.run(sidecar.settle(escalated(t)))
    t = Try(sidecar, rung=1, escalate=True)
    judged(t, 200, anthropic_answer())
    sidecar.escalations = None
    asyncio.run(sidecar.settle(escalated(t)))
    records = [r.entry for r in audit.records if r.entry.kind is Kind.ESCALATED]
    assert [(e.trigger, e.detail["outcome"]) for e in records] == [("tier", "escalated"), ("tier", "unavailable")]
    assert records[0].target is not None and records[0].target.rung == 1


def test_the_primarys_answer_is_served_as_it_is() -> None:
    t = Try(held_sidecar(escalation_policy()), rung=0, escalate=True)
    (answer,) = judged(t, 200, openai_answer())
    assert set_headers(answer)["x-rungway-tier"] == "0"
    assert not [e for e in t.effects if isinstance(e, Escalated)]


def test_an_unarmed_try_never_holds() -> None:
    t = Try(held_sidecar(escalation_policy()), rung=1, escalate=False)
    (answer,) = judged(t, 200, anthropic_answer())
    assert set_headers(answer)["x-rungway-tier"] == "1"


def test_a_low_mean_logprob_holds_even_the_primarys_answer() -> None:
    sidecar = held_sidecar(escalation_policy({"min_logprob": -1.0}))
    unsure = openai_answer()
    unsure["choices"][0]["logprobs"] = {
        "content": [{"token": "Par", "logprob": -2.0}, {"token": "is", "logprob": -1.0}]
    }
    t = Try(sidecar, rung=0, escalate=True)
    assert judged(t, 200, unsure) == []
    assert escalated(t).escalation.mean_logprob == -1.5 and escalated(t).escalation.reasons == ("logprob",)
    sure = openai_answer()
    sure["choices"][0]["logprobs"] = {"content": [{"token": "Paris", "logprob": -0.01}]}
    t = Try(sidecar, rung=0, escalate=True)
    assert len(judged(t, 200, sure)) == 1


def test_a_contract_broken_on_the_last_rung_is_held_without_a_candidate() -> None:
    sidecar = held_sidecar(escalation_policy({"contract": True}))
    t = Try(sidecar, rung=2, escalate=True, rungs=(2,), task="summarizer")  # min_output_tokens 10
    assert judged(t, 200, openai_answer("Too short.", tokens=2)) == []
    e = escalated(t)
    assert e.candidate is None and e.escalation.reasons == ("contract",)
    assert e.escalation.history[-1] == Step(2, "quality_regression")


def test_an_error_that_ends_the_ladder_is_the_clients_not_a_persons(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the contract signal judges a final answer that was not served: a provider's 500 on a
    # fallback tier, or its 400 for the client's own request, is the client's honest error.
    sidecar = held_sidecar(escalation_policy({"tier": 1, "score_below": 0.5}))
    monkeypatch.setattr(sidecar, "health_score", lambda key: 0.2)
    for status in (500, 400):
        t = Try(sidecar, rung=2, attempt=3, escalate=True)
        (answer,) = judged(t, status, {"error": {"message": "no"}})
        assert not [e for e in t.effects if isinstance(e, Escalated)]
        assert set_headers(answer)[":status"] != "202"


def test_a_degraded_primary_score_holds_a_fallbacks_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = held_sidecar(escalation_policy({"score_below": 0.5}))
    monkeypatch.setattr(sidecar, "health_score", lambda key: 0.2 if key == "primary/gpt-4o" else 1.0)
    t = Try(sidecar, rung=1, escalate=True)
    assert judged(t, 200, anthropic_answer()) == []
    assert escalated(t).escalation.score == 0.2


# ---- a person's decision -----------------------------------------------------------------------------


def held(policy: Policy, candidate: TaskResult | None = None) -> tuple[Escalation, DeferredTask]:
    task = DeferredTask("task_abcdefgh", "acme", "default", Impact.REVENUE_CRITICAL, Dialect.ANTHROPIC, "/v1/messages",
                        "claude-x", (), b'{"messages":[{"role":"user","content":"hi"}]}', 1.0)  # fmt: skip
    escalation = Escalation(task.id, "acme", "default", Impact.REVENUE_CRITICAL, "main", 1, 1, "secondary/claude",
                            ("tier",), (Step(1, "served"),), policy.stamp, "req-1", "", 1.0,
                            has_candidate=candidate is not None)  # fmt: skip
    return escalation, task


def test_approving_serves_the_candidate_and_rejecting_an_error_in_the_clients_dialect() -> None:
    policy = escalation_policy()
    candidate = TaskResult(200, (("x-rungway-tier", "1"),), b'{"content":[]}', 1.0)
    escalation, task = held(policy, candidate)
    resolution, answer, entry = reviewed(
        policy, escalation, task, candidate, Review.APPROVE, by="ana", reason="ok", rung=None, now=5.0
    )
    assert resolution == Resolution(Review.APPROVE, "ana", "ok", 5.0)
    assert answer is not None and answer.body == candidate.body
    assert dict(answer.headers)[ESCALATION_HEADER] == "approved"
    assert (entry.kind.value, entry.trigger, entry.detail["by"]) == ("escalation_approved", "candidate", "ana")
    _, answer, entry = reviewed(policy, escalation, task, None, Review.APPROVE, by="ana", reason="", rung=None, now=5.0)
    assert answer is None and entry.trigger == "replay"  # no candidate: replayed as it is
    _, answer, entry = reviewed(
        policy, escalation, task, candidate, Review.REJECT, by="ana", reason="wrong refund", rung=None, now=5.0
    )
    assert answer is not None and answer.status == 403
    error = json.loads(answer.body)
    assert error["type"] == "error" and error["error"]["rungway_reason"] == "not_permitted"  # Anthropic's shape
    assert "wrong refund" in error["error"]["message"] and entry.kind.value == "escalation_rejected"


@pytest.mark.parametrize("spec", [2, "2", "small", "small/small-model"])
def test_a_redirect_names_a_rung_by_index_or_provider(spec: object) -> None:
    policy = escalation_policy()
    escalation, task = held(policy)
    resolution, answer, entry = reviewed(
        policy, escalation, task, None, Review.REDIRECT, by="ana", reason="", rung=spec, now=5.0
    )
    assert resolution.rung == 2 and answer is None
    assert entry.target is not None and entry.target.provider == "small"


@pytest.mark.parametrize(
    ("spec", "tenant", "message"),
    [
        (7, {}, "no rung 7"),
        ("nobody", {}, "no rung 'nobody'"),
        (None, {}, "no rung None"),
        (2, {"lowest_tier": 1}, "permits none beyond tier 1"),
        (1, {"regions": ["eu"]}, "outside the residency of tenant 'acme'"),
    ],
)
def test_a_redirect_stays_within_the_tenants_policy(spec: object, tenant: dict[str, Any], message: str) -> None:
    policy = escalation_policy(**tenant)
    escalation, task = held(policy)
    with pytest.raises(ReviewError, match=message):
        reviewed(policy, escalation, task, None, Review.REDIRECT, by="ana", reason="", rung=spec, now=5.0)
    with pytest.raises(ReviewError, match="who takes it"):
        reviewed(policy, escalation, task, None, Review.APPROVE, by="", reason="", rung=None, now=5.0)


def test_the_webhook_carries_the_conversation_and_the_candidate() -> None:
    policy = escalation_policy()
    candidate = TaskResult(200, (("x-rungway-tier", "1"),), b'{"content":[]}', 1.0)
    escalation, task = held(policy, candidate)
    event = json.loads(event_body(escalation, task, candidate))
    assert event["event"] == "escalation" and event["id"] == task.id
    assert event["request"] == {"dialect": "anthropic", "path": "/v1/messages", "model": "claude-x",
                                "body": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    assert event["candidate"] == {"status": 200, "headers": {"x-rungway-tier": "1"}, "body": {"content": []}}
    assert event["actions"]["redirect"] == f"POST /escalations/{task.id}/redirect"


# ---- the records ---------------------------------------------------------------------------------


@given(
    st.text(min_size=1, max_size=12),
    st.sampled_from(list(Impact)),
    st.integers(0, 9),
    st.lists(st.sampled_from(["tier", "score", "contract", "logprob"]), unique=True),
    st.lists(st.tuples(st.integers(0, 9), st.text(max_size=8))),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.floats(-50, 0)),
    st.booleans(),
)
def test_an_escalation_reads_back_as_it_was_written(
    tenant: str,
    impact: Impact,
    rung: int,
    reasons: list[str],
    history: list[tuple[int, str]],
    score: float | None,
    logprob: float | None,
    candidate: bool,
) -> None:
    e = Escalation("task_x", tenant, "chat", impact, "main", rung, 1, "p/m", tuple(reasons),
                   tuple(Step(r, o) for r, o in history), "v+1", "", "", 12.5, score, logprob, candidate)  # fmt: skip
    assert Escalation.decode(e.encode()) == e


@given(st.sampled_from(list(Review)), st.text(min_size=1, max_size=8), st.text(max_size=8), st.integers(0, 9))
def test_a_resolution_reads_back_as_it_was_written(review: Review, by: str, reason: str, rung: int) -> None:
    r = Resolution(review, by, reason, 3.0, rung if review is Review.REDIRECT else None)
    assert Resolution.decode(r.encode()) == r


@given(st.one_of(st.text(), st.dictionaries(st.text(max_size=5), st.integers()).map(json.dumps)))
def test_anything_else_is_a_contract_error(text: str) -> None:
    for decode in (Escalation.decode, Resolution.decode):
        with pytest.raises(ContractError):
            decode(text)


def test_a_redirect_and_only_a_redirect_names_a_rung() -> None:
    with pytest.raises(ContractError):
        Resolution(Review.REDIRECT, "ana", "", 1.0)
    with pytest.raises(ContractError):
        Resolution(Review.APPROVE, "ana", "", 1.0, 2)


def test_mean_logprob_reads_an_openai_answers_first_choice_only() -> None:
    answer = openai_answer()
    assert mean_logprob(Dialect.OPENAI, answer) is None  # none returned
    answer["choices"][0]["logprobs"] = {"content": [{"logprob": -1}, {"logprob": -3.0}, {"logprob": "x"}]}
    assert mean_logprob(Dialect.OPENAI, answer) == -2.0
    assert mean_logprob(Dialect.ANTHROPIC, answer) is None
    assert mean_logprob(Dialect.OPENAI, {"choices": [{"logprobs": {"content": []}}]}) is None


# ---- a human handoff (T6 tier 3) goes to a person -----------------------------------------------------

HANDOFF = "Our assistant cannot answer right now; a person will reply."


def handoff_policy(tier: int = 3, *, escalation: bool = True) -> Policy:
    tasks = {
        "default": {"min_output_tokens": 1, "when_exhausted": {"tier": tier, "message": HANDOFF}},
        "summarizer": {"min_output_tokens": 10},
    }
    extra: dict[str, Any] = {"deferral": {"store": "unused.db"}, "escalation": ESCALATION} if escalation else {}
    return make_policy(tasks=tasks, **extra)


def test_decide_arms_a_task_class_that_hands_off_to_a_person_when_there_is_a_desk() -> None:
    for policy, armed in (
        (handoff_policy(), True),
        (handoff_policy(4), False),
        (handoff_policy(escalation=False), False),
    ):
        _, answers, _ = send(held_sidecar(policy))
        assert dynamic_metadata(answers[-1], META_DECISION)["escalate"] is armed
    _, answers, _ = send(held_sidecar(handoff_policy()), stream=True)
    assert dynamic_metadata(answers[-1], META_DECISION)["escalate"] is False  # a stream keeps the notice


def test_an_outage_on_the_last_rung_is_handed_to_a_person_not_answered_with_the_notice() -> None:
    sidecar = held_sidecar(handoff_policy())
    trip = record(attempt=2, started_ms=0.0, rung=1, failure="timeout", first_failure="timeout")
    t = Try(sidecar, rung=2, attempt=3, trip=trip, escalate=True)
    assert judged(t, 503, {"error": {"message": "overloaded", "type": "server_error"}}) == []
    e = escalated(t)
    assert e.candidate is None and e.escalation.reasons == ("handoff",)  # approving replays it
    accepted = asyncio.run(sidecar.settle(e))
    headers = set_headers(accepted)
    assert headers[":status"] == "202" and headers["x-rungway-tier"] == "3"
    assert headers["x-rungway-served-by"] == "rungway/handoff" and headers[TASK_ID_HEADER] == e.task.id
    # A store that cannot hold it: the notice, as without a desk, never a bare 503.
    down = held_sidecar(handoff_policy())
    down.escalations = None
    t = Try(down, rung=2, attempt=3, trip=trip, escalate=True)
    judged(t, 503, {"error": {"message": "overloaded", "type": "server_error"}})
    notice = asyncio.run(down.settle(escalated(t)))
    assert set_headers(notice)[":status"] == "200"
    assert json.loads(body_of(notice) or b"")["choices"][0]["message"]["content"] == HANDOFF


def test_a_request_that_fails_by_its_own_fault_is_never_handed_off() -> None:
    t = Try(held_sidecar(handoff_policy()), rung=0, escalate=True)
    judged(t, 400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
    assert not [e for e in t.effects if isinstance(e, Escalated)]
