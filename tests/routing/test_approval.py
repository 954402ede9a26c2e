"""Operators' approvals (T2), their pure half: the file format, which tier is approved now."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.routing.approval import Approval, ApprovalError, Approvals, approval, approval_changes

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


def test_every_change_to_the_approvals_in_force_is_named_once() -> None:
    a = Approval("clinic", 2, 100.0, None, by="ops", at=10.0)
    b = Approval("clinic", 3, 500.0, "summarize", by="ops", at=20.0)
    none: frozenset[Approval] = frozenset()
    in_force, changes = approval_changes(none, Approvals((a, b)), 50.0)
    assert in_force == {a, b} and changes == [("granted", a), ("granted", b)]
    # Nothing new: nothing to say.
    assert approval_changes(in_force, Approvals((a, b)), 60.0) == (in_force, [])
    # a's time runs out while b is taken out of the file.
    in_force, changes = approval_changes(in_force, Approvals((a,)), 100.0)
    assert in_force == set() and changes == [("expired", a), ("revoked", b)]
    # Replacing an approval (same tenant and task, a new tier) is the old one revoked, the new granted.
    c = Approval("clinic", 3, 900.0, None, by="lead", at=70.0)
    in_force, changes = approval_changes(frozenset({a}), Approvals((c,)), 80.0)
    assert changes == [("granted", c), ("revoked", a)]


@given(st.lists(approvals_st, max_size=8), st.lists(approvals_st, max_size=8), st.floats(0, 1e9))
def test_changes_account_for_exactly_the_difference_in_force(
    before: list[Approval], after: list[Approval], now: float
) -> None:
    was = frozenset(before)
    in_force, changes = approval_changes(was, Approvals(tuple(after)), now)
    assert in_force == {x for x in after if now < x.until}
    assert {x for c, x in changes if c == "granted"} == in_force - was
    assert {x for c, x in changes if c != "granted"} == was - in_force
    assert all(x.until <= now for c, x in changes if c == "expired")
