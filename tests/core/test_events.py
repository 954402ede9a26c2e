"""Health-bus events: one encode/decode pair each; anything malformed or foreign is an error."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.core import (
    Abandoned,
    CircuitChanged,
    ContractError,
    Failure,
    Observation,
    ProbeClaim,
    QuotaSignal,
    RequestsDecided,
    Spent,
    decode_event,
)

KEY = "primary/gpt-4o"
T0 = 1_767_225_600.0
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e10)
failures = st.sampled_from(list(Failure))


def well_typed_event(kind: str) -> st.SearchStrategy[Any]:
    """Events as a replica would encode them, of one kind."""
    keys = st.sampled_from([KEY, "secondary/claude-fallback"])
    if kind == "obs":
        return st.builds(
            Observation,
            key=keys,
            at=st.floats(T0 - 100, T0 + 100),
            failure=st.none() | failures,
            latency_s=st.none() | st.floats(0, 100),
            output_tokens=st.none() | st.integers(0, 10_000),
            task=st.sampled_from(["", "default", "summarizer"]),
            stream=st.booleans(),
            attempt=st.integers(1, 5),
            probe=st.booleans(),
            ladder=st.sampled_from(["", "main"]),
            rung=st.integers(0, 5),
        )
    if kind == "quota":
        return st.builds(QuotaSignal, key=keys, until=st.floats(T0 - 10, T0 + 1e6))
    if kind == "abandon":
        return st.builds(Abandoned, key=keys, at=st.floats(T0 - 100, T0 + 100), score=st.floats(0, 1), reason=failures)
    if kind == "req":
        return st.builds(RequestsDecided, at=st.floats(T0 - 100, T0 + 100), count=st.integers(0, 1000))
    if kind == "spent":
        return st.builds(Spent, tenant=st.sampled_from(["acme", "blue"]), at=st.floats(T0 - 100, T0 + 100),
                         tokens=st.integers(0, 10**6), cost=st.floats(0, 1e4))  # fmt: skip
    if kind == "probe":
        return st.builds(ProbeClaim, key=keys, at=st.floats(T0 - 100, T0 + 100), by=st.sampled_from(["a1", "b2"]))
    states = st.sampled_from(["closed", "open", "half_open"])
    return st.builds(CircuitChanged, key=keys, at=finite, source=states, target=states, reason=st.text(max_size=10))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["obs", "quota", "abandon", "req", "circuit", "probe", "spent"]).flatmap(well_typed_event))
def test_every_event_survives_its_encoding(event: Any) -> None:
    assert decode_event(event.encode()) == event


def test_an_observation_with_every_field_round_trips() -> None:
    obs = Observation(KEY, T0, Failure.TIMEOUT, 1.5, 12, "summarize", True, 2, False, "main", 1)
    assert decode_event(obs.encode()) == obs


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"v": 1},
        {"v": 2, "k": "quota", "key": KEY, "until": T0},  # a version this replica does not speak
        {"k": "quota", "key": KEY, "until": T0},  # no version at all
        {"v": 1, "k": "gossip"},
        {"v": 1, "k": "obs"},
        {"v": 1, "k": "obs", "key": KEY},
        {**Observation(KEY, T0, None).encode(), "at": "soon"},
        {**Observation(KEY, T0, None).encode(), "at": math.nan},
        {**Observation(KEY, T0, None).encode(), "failure": "on_fire"},
        {**Observation(KEY, T0, None).encode(), "attempt": math.inf},
        {**Observation(KEY, T0, None).encode(), "rung": -1},
        {**Observation(KEY, T0, None).encode(), "output_tokens": 10**400},
        {**Observation(KEY, T0, None).encode(), "latency_s": -1.0},
        {**Observation(KEY, T0, None).encode(), "stream": "yes"},
        {"v": 1, "k": "quota", "key": KEY},
        {"v": 1, "k": "quota", "key": KEY, "until": "later"},
        {"v": 1, "k": "quota", "key": KEY, "until": 10**400},
        {"v": 1, "k": "abandon", "key": KEY, "at": T0, "score": None, "reason": "timeout"},
        {"v": 1, "k": "abandon", "key": 3, "at": T0, "score": 0.1, "reason": "timeout"},
        {"v": 1, "k": "abandon", "key": KEY, "at": T0, "score": 0.1, "reason": "gremlins"},
        {"v": 1, "k": "abandon", "key": KEY, "at": T0, "score": 0.1, "reason": [1]},
        {"v": 1, "k": "req", "count": 3},  # a time is required: never "now" by default
        {"v": 1, "k": "req", "at": T0, "count": "many"},
        {"v": 1, "k": "req", "at": T0, "count": math.inf},
        {"v": 1, "k": "circuit", "key": KEY, "at": T0, "from": "closed", "to": "ajar", "reason": ""},
        {"v": 1, "k": "probe", "key": KEY, "at": T0},  # who claimed it decides a tie: required
        {"v": 1, "k": "probe", "key": KEY, "at": math.inf, "by": "a1"},
        {"v": 1, "k": "spent", "tenant": "acme", "at": T0, "tokens": 5, "cost": -1.0},
        {"v": 1, "k": "spent", "tenant": "acme", "at": T0, "tokens": 5, "cost": math.nan},
        {"v": 1, "k": "spent", "tenant": "acme", "at": T0, "tokens": -5, "cost": 1.0},
        {"v": 1, "k": "spent", "at": T0, "tokens": 5, "cost": 1.0},
    ],
)
def test_a_malformed_or_foreign_event_is_an_error_never_a_default(event: dict[str, Any]) -> None:
    with pytest.raises(ContractError):
        decode_event(event)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([f.value for f in Failure] + [KEY, "nan", "inf", "1e400", 10**400, -(10**400)])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [
    "key",
    "at",
    "failure",
    "latency_s",
    "output_tokens",
    "task",
    "stream",
    "attempt",
    "probe",
    "ladder",
    "rung",
    "until",
    "count",
    "score",
    "reason",
    "from",
    "to",
    "by",
]
raw_events = st.fixed_dictionaries(
    {"v": st.just(1) | values, "k": st.sampled_from(["obs", "quota", "req", "circuit", "abandon", "probe"]) | values},
    optional={name: values for name in FIELDS},
) | st.dictionaries(st.text(max_size=6), values, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_events)
@example({"v": 1, "k": "obs", "key": KEY, "at": 10**400})
@example({"v": 1, "k": "req", "at": 10**400, "count": 1})
def test_decoding_anything_gives_an_event_or_a_contract_error(raw: dict[str, Any]) -> None:
    try:
        event = decode_event(raw)
    except ContractError:
        return
    assert decode_event(event.encode()) == event
