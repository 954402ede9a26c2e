"""The degraded answer kept for review (E3): one encode/decode pair, strict."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import ContractError, DegradedAnswer, Dialect, Impact

items = st.builds(
    DegradedAnswer,
    id=st.text(min_size=1, max_size=20),
    tenant=st.text(max_size=20),
    task=st.text(max_size=20),
    impact=st.sampled_from(list(Impact)),
    dialect=st.sampled_from(list(Dialect)),
    path=st.sampled_from(["/v1/chat/completions", "/v1/messages"]),
    model=st.text(max_size=20),
    headers=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=2).map(tuple),
    ladder=st.text(max_size=10),
    rung=st.integers(0, 9),
    tier=st.integers(0, 4),
    served_by=st.text(max_size=20),
    reason=st.text(max_size=20),
    policy=st.text(max_size=20),
    request_id=st.text(max_size=20),
    prompt_hash=st.text(max_size=64),
    kept_at=st.floats(0, 2e9),
    request=st.binary(max_size=50),
    answer=st.binary(max_size=50),
)


@given(items)
def test_a_degraded_answer_round_trips(item: DegradedAnswer) -> None:
    assert DegradedAnswer.decode(item.encode(), item.request, item.answer) == item


def test_a_foreign_or_broken_record_raises_never_defaults() -> None:
    good = json.loads(
        DegradedAnswer(
            "rev_1", "app", "default", Impact.CUSTOMER_FACING, Dialect.OPENAI, "/v1/chat/completions", "gpt-4o",
            (), "main", 1, 1, "secondary/claude", "server_error", "v+1", "req", "ab", 1.0, b"{}", b"{}",
        ).encode()
    )  # fmt: skip
    for broken in ({**good, "v": 2}, {**good, "rung": "1"}, {**good, "impact": "urgent"}, {**good, "headers": "x"}):
        with pytest.raises(ContractError):
            DegradedAnswer.decode(json.dumps(broken), b"", b"")
    with pytest.raises(ContractError):
        DegradedAnswer.decode("not json", b"", b"")
