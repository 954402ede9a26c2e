"""Operators' approvals (T2), their pure half: the file format, which tier is approved now."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.routing.approval import Approval, ApprovalError, Approvals, approval

approvals_st = st.builds(
    Approval,
    tenant=st.sampled_from(["a", "b", "clinic"]),
    tier=st.integers(0, 3),
    until=st.floats(0, 1e9),
    task=st.none() | st.sampled_from(["default", "summarize"]),
    by=st.text(max_size=10),
    reason=st.text(max_size=20),
    at=st.floats(0, 1e9),
)


@given(st.lists(approvals_st, max_size=20))
def test_the_file_round_trips(entries: list[Approval]) -> None:
    approvals = Approvals(tuple(entries))
    assert Approvals.parse(approvals.encode()) == approvals


@given(st.lists(approvals_st, max_size=20), st.floats(0, 1e9))
def test_the_approved_tier_is_the_furthest_of_those_in_force_for_the_tenant_and_task(
    entries: list[Approval], now: float
) -> None:
    tier = Approvals(tuple(entries)).approved_tier("clinic", "default", now)
    covering = [a.tier for a in entries if a.tenant == "clinic" and a.task in (None, "default") and now < a.until]
    assert tier == (max(covering) if covering else None)


def test_granting_replaces_the_same_tenant_and_task_and_drops_expired_ones() -> None:
    first = approval("clinic", 1, 60, 100.0, by="ann")
    expired = Approval("old", 2, until=50.0)
    approvals = Approvals((first, expired)).granted(approval("clinic", 2, 60, 110.0, by="bob"), 110.0)
    assert [(a.tenant, a.tier, a.by) for a in approvals.entries] == [("clinic", 2, "bob")]
    per_task = approvals.granted(approval("clinic", 3, 60, 110.0, task="summarize"), 110.0)
    assert per_task.approved_tier("clinic", "summarize", 111.0) == 3
    assert per_task.approved_tier("clinic", "default", 111.0) == 2
    assert per_task.revoked("clinic", "summarize", 111.0).approved_tier("clinic", "summarize", 111.0) == 2
    assert per_task.revoked("clinic", None, 111.0).entries == ()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"v": 2, "approvals": []}',
        '{"approvals": []}',
        '{"v": 1, "approvals": [{"tenant": "a", "tier": 4, "until": 1}]}',
        '{"v": 1, "approvals": [{"tenant": "a", "tier": true, "until": 1}]}',
        '{"v": 1, "approvals": [{"tenant": "", "tier": 1, "until": 1}]}',
        '{"v": 1, "approvals": [{"tenant": "a", "tier": 1, "until": "soon"}]}',
        '{"v": 1, "approvals": [{"tenant": "a", "tier": 1, "until": 1, "scope": "all"}]}',
        '{"v": 1, "approvals": [{"tenant": "a", "tier": 1, "until": NaN}]}',
    ],
)
def test_a_broken_file_is_refused_whole(text: str) -> None:
    with pytest.raises(ApprovalError):
        Approvals.parse(text)


def test_an_empty_file_holds_no_approvals_and_a_new_one_is_checked() -> None:
    assert Approvals.parse("") == Approvals()
    with pytest.raises(ApprovalError):
        approval("clinic", 1, 0, 100.0)
    with pytest.raises(ApprovalError):
        approval("clinic", "1", 60, 100.0)
    assert json.loads(Approvals((approval("c", 1, 60, 0.0),)).encode())["v"] == 1
