"""decide's side of deferral, and the runtime's answer to it (Sidecar.settle): a deferrable
request no permitted rung can serve is handed over whole for storing and answered 202 only by
the runtime; a replay is never deferred again; a task is read by its own tenant only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from extproc.audit import Kind, prompt_hash
from extproc.core import Failure, Impact
from extproc.core.names import LOCATION, TASK_ID_HEADER, TASK_STATUS_HEADER
from extproc.deferral import TaskQueue
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import Deferred, TaskQueried
from extproc.routing.spend import OverBudget
from extproc.runtime.auditlog import MemoryAudit
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    CLIENT_KEY,
    OTHER_KEY,
    decide_fields,
    immediate_headers,
    make_policy,
    make_sidecar,
    policy_data,
    request_body,
    request_headers,
    sample,
    set_headers,
)

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def deferral_sidecar(
    monkeypatch: pytest.MonkeyPatch, *, down: bool = True, capacity: int = 10, over_budget: bool = False
) -> Sidecar:
    tasks = {**policy_data()["tasks"], "batch": {"deferrable": True}}
    budget = {"budget": {"max_cost": 5.0}} if over_budget else {}
    policy = make_policy(
        tasks=tasks,
        tenants={"acme": {"lowest_tier": 0, **budget}},
        deferral={"store": "unused.db", "max_per_tenant": capacity},
    )
    sidecar = make_sidecar(policy)
    sidecar.tasks = TaskQueue()
    view: Any = lambda key, first: Failure.SERVER_ERROR if down and key.startswith("primary") else None  # noqa: E731
    monkeypatch.setattr(sidecar, "health_view", lambda impact: view)
    if over_budget:
        monkeypatch.setattr(sidecar, "over_budget", lambda tenant, budget: OverBudget("cost", 120, 5.5, 5.0))
    return sidecar


def headers(key: str = CLIENT_KEY, path: str = "/v1/chat/completions", method: str = "POST", **extra: str) -> Any:
    return {":method": method, ":path": path, "content-type": "application/json", "content-length": "60",
            "authorization": f"Bearer {key}", **extra}  # fmt: skip


def send(sidecar: Sidecar, extra: dict[str, str] | None = None, key: str = CLIENT_KEY, **fields: Any) -> Any:
    """Headers then (if asked for) the body; returns the processor, its answers and effects."""
    processor = DecideProcessor(sidecar)
    fields = {"model": "gpt-4o", **fields}
    answers = processor.dispatch(request_headers(headers(key, **(extra or {})), metadata=decide_fields(**fields)))
    effects = processor.drain_effects()
    if answers and answers[0].HasField("mode_override"):
        answers = processor.dispatch(request_body(BODY))
        effects += processor.drain_effects()
    return processor, answers, effects


def settle(sidecar: Sidecar, effect: Any) -> Any:
    return asyncio.run(sidecar.settle(effect))


def test_a_deferrable_request_is_handed_over_whole_and_answered_only_by_the_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = deferral_sidecar(monkeypatch)
    _, answers, effects = send(sidecar, {"x-rungway-task": "batch", "anthropic-version": "2023-06-01"})
    assert answers == []  # nothing is sent until the task is stored
    (deferred,) = [e for e in effects if isinstance(e, Deferred)]
    task = deferred.task
    assert (task.tenant, task.task, task.model, task.path) == ("acme", "batch", "gpt-4o", "/v1/chat/completions")
    assert json.loads(task.body) == BODY
    assert task.headers == (("anthropic-version", "2023-06-01"),)  # never the client's key
    answer = settle(sidecar, deferred)
    assert answer.immediate_response.status.code == 202
    h = immediate_headers(answer)
    assert h[TASK_ID_HEADER] == task.id and h[TASK_STATUS_HEADER] == "queued"
    assert h[LOCATION] == f"/v1/rungway/tasks/{task.id}"
    assert h["x-rungway-reason"] == "not_permitted"
    assert json.loads(answer.immediate_response.body)["status_url"] == h[LOCATION]
    assert sidecar.tasks is not None and sidecar.tasks.task(task.id) == task
    assert sample(sidecar, "rungway_deferred_total", tenant="acme", outcome="accepted") == 1


def test_past_the_tenants_capacity_the_answer_is_429_and_nothing_is_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch, capacity=1)
    codes = []
    for _ in range(2):
        _, _, effects = send(sidecar, {"x-rungway-task": "batch"})
        (deferred,) = [e for e in effects if isinstance(e, Deferred)]
        codes.append(settle(sidecar, deferred).immediate_response.status.code)
    assert codes == [202, 429]
    assert sidecar.tasks is not None and sidecar.tasks.pending("acme") == 1
    assert sample(sidecar, "rungway_deferred_total", tenant="acme", outcome="full") == 1


def test_a_store_that_fails_answers_503_never_202(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch)

    def broken(*args: Any) -> bool:
        raise OSError("disk full")

    assert sidecar.tasks is not None
    monkeypatch.setattr(sidecar.tasks, "accept", broken)
    _, _, effects = send(sidecar, {"x-rungway-task": "batch"})
    (deferred,) = [e for e in effects if isinstance(e, Deferred)]
    assert settle(sidecar, deferred).immediate_response.status.code == 503
    assert sample(sidecar, "rungway_deferred_total", tenant="acme", outcome="unavailable") == 1


def test_each_deferral_is_an_audit_record_with_the_stores_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch, capacity=1)
    sidecar.audit = audit = MemoryAudit()
    tasks = []
    for _ in range(2):
        _, _, effects = send(sidecar, {"x-rungway-task": "batch", "x-request-id": "req-1"})
        (deferred,) = [e for e in effects if isinstance(e, Deferred)]
        tasks.append(deferred.task.id)
        settle(sidecar, deferred)
    deferrals = [r.entry for r in audit.records if r.entry.kind is Kind.DEFERRAL]
    assert [(e.trigger, e.detail["task_id"]) for e in deferrals] == [("accepted", tasks[0]), ("full", tasks[1])]
    first = deferrals[0]
    assert (first.tenant, first.task, first.detail["reason"]) == ("acme", "batch", "not_permitted")
    assert first.policy == sidecar.policy.stamp and first.prompt_hash == prompt_hash(json.dumps(BODY).encode())


def test_what_is_not_deferrable_gets_the_honest_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch)
    cases: list[tuple[dict[str, str], dict[str, Any]]] = [({}, {}), ({"x-rungway-task": "batch"}, {"stream": True})]
    for extra, fields in cases:
        _, answers, effects = send(sidecar, extra, **fields)
        assert not [e for e in effects if isinstance(e, Deferred)]
        assert answers[0].immediate_response.status.code == 503


def test_the_deferrable_impact_class_defers_a_default_task(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch)
    _, answers, effects = send(sidecar, {"x-rungway-impact": Impact.DEFERRABLE.value})
    assert answers == [] and [e for e in effects if isinstance(e, Deferred)]


def test_a_healthy_rung_serves_a_deferrable_request_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch, down=False)
    _, answers, effects = send(sidecar, {"x-rungway-task": "batch"})
    assert set_headers(answers[0])["x-rungway-cluster"] == "rw.main.1"
    assert not [e for e in effects if isinstance(e, Deferred)]


def test_a_genuine_replay_is_routed_even_when_its_rungs_look_down_and_a_forged_one_is_401(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = deferral_sidecar(monkeypatch)
    replay = {"x-rungway-replay": f"{sidecar.probe_token} acme task_abc", "x-rungway-task": "batch"}
    _, answers, effects = send(sidecar, replay, key="")
    assert not [e for e in effects if isinstance(e, Deferred)]
    # The replay is the tenant's: its rules hold (only the primary), and the primary is tried.
    assert answers[0].immediate_response.status.code == 503  # not permitted: the drainer retries later
    forged = {"x-rungway-replay": "not-the-token acme task_abc"}
    _, answers, _ = send(sidecar, forged, key="")
    assert answers[0].immediate_response.status.code == 401


def test_a_task_is_read_by_its_own_tenant_only(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = deferral_sidecar(monkeypatch)
    _, _, effects = send(sidecar, {"x-rungway-task": "batch"})
    (deferred,) = [e for e in effects if isinstance(e, Deferred)]
    settle(sidecar, deferred)
    path = f"/v1/rungway/tasks/{deferred.task.id}"
    for key, status in [(CLIENT_KEY, 202), (OTHER_KEY, 404)]:
        processor = DecideProcessor(sidecar)
        assert processor.dispatch(request_headers(headers(key, path, "GET"), end_of_stream=True)) == []
        (query,) = [e for e in processor.drain_effects() if isinstance(e, TaskQueried)]
        answer = settle(sidecar, query)
        assert answer.immediate_response.status.code == status
    processor = DecideProcessor(sidecar)
    (answer,) = processor.dispatch(request_headers(headers(CLIENT_KEY, "/v1/rungway/tasks/../etc", "GET")))
    assert answer.immediate_response.status.code == 404


def test_a_deferrable_request_over_its_tenants_budget_waits_for_the_next_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = deferral_sidecar(monkeypatch, down=False, over_budget=True)
    _, answers, effects = send(sidecar, {"x-rungway-task": "batch"})
    (deferred,) = [e for e in effects if isinstance(e, Deferred)]
    assert answers == []
    assert immediate_headers(settle(sidecar, deferred))["x-rungway-reason"] == "budget_exceeded"
    _, answers, effects = send(sidecar)  # not deferrable: the budget's 429, as before
    assert answers[0].immediate_response.status.code == 429
    assert not [e for e in effects if isinstance(e, Deferred)]
