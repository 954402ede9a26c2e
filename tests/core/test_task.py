"""The deferred task and its answer: one strict encode/decode pair each."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import ContractError, DeferredTask, Dialect, Impact, TaskResult

headers = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3).map(tuple)
tasks = st.builds(
    DeferredTask,
    id=st.text(min_size=1, max_size=20),
    tenant=st.text(max_size=10),
    task=st.text(max_size=10),
    impact=st.sampled_from(Impact),
    dialect=st.sampled_from(Dialect),
    path=st.text(max_size=20),
    model=st.text(max_size=10),
    headers=headers,
    body=st.binary(max_size=50),
    accepted_at=st.floats(0, 2e9),
)


@given(tasks)
def test_a_task_round_trips(task: DeferredTask) -> None:
    assert DeferredTask.decode(task.encode(), task.body) == task


@given(st.integers(100, 599), headers, st.binary(max_size=50), st.floats(0, 2e9))
def test_a_result_round_trips(status: int, h: tuple[tuple[str, str], ...], body: bytes, at: float) -> None:
    result = TaskResult(status, h, body, at)
    assert TaskResult.decode(result.encode(), body) == result


def test_a_foreign_or_broken_record_raises_never_defaults() -> None:
    task = DeferredTask("t", "acme", "default", Impact.DEFERRABLE, Dialect.OPENAI, "/v1/chat/completions",
                        "gpt-4o", (), b"{}", 1.0)  # fmt: skip
    raw = json.loads(task.encode())
    for broken in (
        {**raw, "v": 2},
        {**raw, "impact": "urgent"},
        {k: v for k, v in raw.items() if k != "tenant"},
        {**raw, "headers": [["only-name"]]},
        {**raw, "accepted_at": True},
    ):
        with pytest.raises(ContractError):
            DeferredTask.decode(json.dumps(broken), b"{}")
    with pytest.raises(ContractError):
        DeferredTask.decode("[]", b"")
    with pytest.raises(ContractError, match="not an HTTP status"):
        TaskResult.decode(json.dumps({"v": 1, "status": 99, "headers": [], "finished_at": 0}), b"")
