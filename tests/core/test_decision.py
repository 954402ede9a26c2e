"""The routing decision, the per-try record and a rung's address: typed, versioned, strict."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import ContractError, Decision, Dialect, Failure, Impact, RungAddress, TripRecord
from tests.builders import routed

DECISION = routed(  # every optional field set, values of every kind
    policy="p-1",
    rungs=(0, 2),
    cluster="rw.main.5",
    tries=2,
    impact=Impact.DEFERRABLE,
    dialect=Dialect.ANTHROPIC,
    model="claude-x",
    stream=True,
    include_usage=True,
    body_bytes=1234,
    skip=Failure.CONTEXT_OVERFLOW,
    canary=True,
    response_format="json_object",
    anthropic_version="2023-06-01",
    anthropic_beta="tools-2024",
)


def as_envoy_returns_it(meta: dict[str, Any]) -> dict[str, Any]:
    """A protobuf Struct carries every number as a double."""
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in meta.items()}


def test_a_decision_survives_envoys_metadata() -> None:
    assert Decision.decode(as_envoy_returns_it(DECISION.encode())) == DECISION
    plain = dataclasses.replace(DECISION, skip=None, anthropic_version=None, anthropic_beta=None)
    assert Decision.decode(as_envoy_returns_it(plain.encode())) == plain


def test_the_router_matches_routed_decisions_and_the_access_log_sees_the_version() -> None:
    encoded = DECISION.encode()
    assert encoded["routed"] is True and encoded["v"] == 1 and encoded["policy"] == "p-1"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("v", 2),
        ("routed", False),
        ("rungs", ""),
        ("rungs", "0,x"),
        ("rungs", "-1"),
        ("tries", "3"),
        ("tries", 2.5),
        ("impact", "urgent"),
        ("dialect", "gemini"),
        ("skip", "gremlins"),
        ("stream", "true"),
        ("model", None),
    ],
)
def test_a_bad_decision_field_is_an_error_never_a_default(key: str, value: Any) -> None:
    meta: dict[str, Any] = dict(DECISION.encode())
    meta[key] = value
    with pytest.raises(ContractError, match=key if key != "v" else "version"):
        Decision.decode(meta)


@pytest.mark.parametrize("missing", ["policy", "ladder", "tries", "tenant", "include_usage", "response_format"])
def test_a_missing_decision_field_is_an_error(missing: str) -> None:
    meta = {k: v for k, v in DECISION.encode().items() if k != missing}
    with pytest.raises(ContractError):
        Decision.decode(meta)


@given(
    attempt=st.integers(1, 10),
    rung=st.integers(0, 5),
    started=st.floats(0, 1e12),
    failure=st.none() | st.sampled_from(list(Failure)),
    first=st.none() | st.sampled_from(list(Failure)),
)
def test_a_trip_record_survives_envoys_metadata(
    attempt: int, rung: int, started: float, failure: Failure | None, first: Failure | None
) -> None:
    record = TripRecord(attempt, rung, started, failure=failure, first_failure=first)
    assert TripRecord.decode(as_envoy_returns_it(record.encode())) == record


def test_no_trip_record_means_no_earlier_try() -> None:
    assert TripRecord.decode({}) is None


@pytest.mark.parametrize(
    "meta",
    [
        {"n": 2.0, "t": 1500.5, "rung": 1.0, "fail": "timeout", "why": "server_error"},  # the old, unversioned shape
        {**TripRecord(1, 0, 5.0).encode(), "failure": "bogus"},
        {**TripRecord(1, 0, 5.0).encode(), "attempt": "2"},
        {**TripRecord(1, 0, 5.0).encode(), "rung": True},
    ],
)
def test_a_foreign_trip_record_is_an_error(meta: dict[str, Any]) -> None:
    with pytest.raises(ContractError):
        TripRecord.decode(meta)


def test_a_rung_address_reads_envoys_endpoint_metadata() -> None:
    address = RungAddress("main", 2, 1)
    assert RungAddress.decode(as_envoy_returns_it(address.encode())) == address
    with pytest.raises(ContractError):
        RungAddress.decode({"ladder": "main", "rung": 1.5, "slot": 0.0})
    with pytest.raises(ContractError):
        RungAddress.decode({"rung": 1.0, "slot": 0.0})


def test_a_re_run_is_marked_in_its_decision() -> None:
    rerun = routed(rerun=True)
    assert Decision.decode(rerun.encode()).rerun and not Decision.decode(routed().encode()).rerun
