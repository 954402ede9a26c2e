"""decide holding a request for an operator's approval (routing/hold.py), driven like Envoy
drives it: the headers message, then the stream loop's wake-ups (deadline / on_deadline)."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.core import Decision, Failure
from extproc.core.names import META_DECISION
from extproc.filters.decide import DecideProcessor
from extproc.filters.wire import Mode
from extproc.routing.approval import Approval, Approvals
from extproc.routing.hold import CHECK_EVERY_S, DEADLINE_MARGIN_S, ENVOY_MARGIN_S
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    CLIENT_KEY,
    decide_fields,
    dynamic_metadata,
    make_policy,
    make_sidecar,
    request_body,
    request_headers,
    sample,
    set_headers,
)

HEADERS = {
    ":method": "POST",
    ":path": "/v1/chat/completions",
    "content-type": "application/json",
    "content-length": "60",
    "authorization": f"Bearer {CLIENT_KEY}",
}


def holding_sidecar(monkeypatch: pytest.MonkeyPatch, *, wait_s: float = 30, route_timeout_s: float = 600) -> Sidecar:
    policy = make_policy(
        tenants={"acme": {"approval_beyond_tier": 0, "approval_wait_s": wait_s, "approval_max_held": 2}},
        approvals="approvals.json",
        route_timeout_s=route_timeout_s,
    )
    sidecar = make_sidecar(policy)
    view: Any = lambda key, first: Failure.SERVER_ERROR if key.startswith("primary") else None  # noqa: E731
    monkeypatch.setattr(sidecar, "health_view", lambda impact: view)
    return sidecar


def start(sidecar: Sidecar, model: str = "gpt-4o", **fields: Any) -> tuple[DecideProcessor, list[Any]]:
    processor = DecideProcessor(sidecar)
    answers = processor.dispatch(request_headers(HEADERS, metadata=decide_fields(model=model, **fields)))
    sidecar.apply(processor.drain_effects())
    return processor, answers


def wake(sidecar: Sidecar, processor: DecideProcessor) -> list[Any]:
    """What the stream loop does at the processor's deadline."""
    deadline = processor.deadline()
    assert deadline is not None
    sidecar.clock.advance(max(0.0, deadline - sidecar.clock.now()))  # type: ignore[attr-defined]
    answers = processor.on_deadline()
    sidecar.apply(processor.drain_effects())
    return answers


def approve(sidecar: Sidecar, tier: int = 1) -> None:
    wall = sidecar.clock.wall()
    sidecar.approvals = Approvals((Approval("acme", tier, wall + 3600, at=wall),))


def test_a_request_only_an_approval_could_serve_is_held_and_envoy_asked_to_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = holding_sidecar(monkeypatch)
    processor, (answer,) = start(sidecar)
    assert answer.WhichOneof("response") is None  # no answer yet: only the longer wait
    assert answer.override_message_timeout.ToMilliseconds() == (30 + ENVOY_MARGIN_S) * 1000
    assert sidecar.held("acme") == 1
    assert processor.deadline() == sidecar.clock.now() + CHECK_EVERY_S
    assert wake(sidecar, processor) == []  # nothing changed: still held


def test_an_approval_during_the_hold_routes_it_to_the_approved_tier_within_the_remaining_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = holding_sidecar(monkeypatch, route_timeout_s=60)
    arrived = sidecar.clock.now()
    processor, _ = start(sidecar)
    for _ in range(50):  # 5 s on hold
        assert wake(sidecar, processor) == []
    approve(sidecar)
    (answer,) = wake(sidecar, processor)
    headers = set_headers(answer)
    assert headers["x-rungway-cluster"] == "rw.main.2"  # the approved tier 1 alone (the primary is down)
    held = sidecar.clock.now() - arrived
    assert int(headers["x-envoy-upstream-rq-timeout-ms"]) == round((60 - held) * 1000)
    decision = Decision.decode(dynamic_metadata(answer, META_DECISION))
    assert decision.rungs == (1,) and decision.decided_ms == arrived * 1000  # the route timeout's start
    assert processor.deadline() is None and sidecar.held("acme") == 0
    assert sample(sidecar, "rungway_approval_holds_total", tenant="acme", outcome="routed") == 1


def test_without_an_approval_the_hold_ends_in_the_refusal_that_says_how_to_approve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = holding_sidecar(monkeypatch, wait_s=1)
    arrived = sidecar.clock.now()
    processor, _ = start(sidecar)
    answers: list[Any] = []
    while not answers:
        answers = wake(sidecar, processor)
    (answer,) = answers
    assert sidecar.clock.now() == pytest.approx(arrived + 1)
    assert answer.immediate_response.status.code == 503
    assert b"rungway approve --tenant acme --tier 1" in answer.immediate_response.body
    assert sidecar.held("acme") == 0
    assert sample(sidecar, "rungway_approval_holds_total", tenant="acme", outcome="expired") == 1


def test_a_hold_never_reaches_past_the_route_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch, wait_s=30, route_timeout_s=5)
    _, (answer,) = start(sidecar)
    assert answer.override_message_timeout.ToMilliseconds() == (5 - DEADLINE_MARGIN_S + ENVOY_MARGIN_S) * 1000


def test_a_client_that_leaves_while_held_frees_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch)
    processor, _ = start(sidecar)
    processor.on_close()  # Envoy ended the stream: the client went away
    sidecar.apply(processor.drain_effects())
    assert sidecar.held("acme") == 0 and not sidecar.holding()
    assert sample(sidecar, "rungway_approval_holds_total", tenant="acme", outcome="gone") == 1


def test_past_the_tenants_cap_the_next_request_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch)
    held = [start(sidecar)[0] for _ in range(2)]
    _, (answer,) = start(sidecar)
    assert answer.immediate_response.status.code == 503
    assert b"rungway approve" in answer.immediate_response.body
    assert sidecar.held("acme") == 2
    assert sample(sidecar, "rungway_approval_holds_total", tenant="acme", outcome="full") == 1
    held[0].on_close()
    sidecar.apply(held[0].drain_effects())
    assert start(sidecar)[1][0].HasField("override_message_timeout")  # a place again


def test_a_tenant_without_a_wait_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch)
    monkeypatch.setattr(
        sidecar,
        "policy",
        make_policy(tenants={"acme": {"approval_beyond_tier": 0}}, approvals="approvals.json"),
    )
    processor, (answer,) = start(sidecar)
    assert answer.immediate_response.status.code == 503 and processor.deadline() is None


def test_a_recovered_primary_ends_the_hold_without_an_approval(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch)
    processor, _ = start(sidecar)
    monkeypatch.setattr(sidecar, "health_view", lambda impact: None)
    (answer,) = wake(sidecar, processor)
    assert set_headers(answer)["x-rungway-cluster"] == "rw.main.1"


def test_when_the_approved_rung_depends_on_tools_the_body_is_asked_for_after_the_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = holding_sidecar(monkeypatch)
    processor = DecideProcessor(sidecar)
    # tools-* models: their second rung takes no tools, so with it approved the body decides.
    (hold,) = processor.dispatch(request_headers(HEADERS, metadata=decide_fields(model="tools-x")))
    sidecar.apply(processor.drain_effects())
    assert hold.HasField("override_message_timeout") and sidecar.held("acme") == 1
    approve(sidecar)
    (asked,) = wake(sidecar, processor)
    assert asked.WhichOneof("response") == "request_headers"
    assert asked.mode_override.request_body_mode == Mode.BUFFERED and sidecar.held("acme") == 0
    (answer,) = processor.dispatch(request_body({"model": "tools-x", "messages": []}))
    assert answer.WhichOneof("response") == "request_body"
    assert set_headers(answer)["x-rungway-cluster"] == "rw.tool_check.2"
    assert "x-envoy-upstream-rq-timeout-ms" in set_headers(answer)


def test_a_request_no_approved_rung_could_serve_is_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = holding_sidecar(monkeypatch)
    # JSON mode: the tool_check ladder's second rung has none, approved or not.
    processor, (answer,) = start(sidecar, model="tools-x", response_format="json_object")
    assert answer.immediate_response.status.code == 503 and processor.deadline() is None
