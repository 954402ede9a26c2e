"""Regression fixtures (D3): a drill cell or an incident, saved so it replays on every drill.

A fixture is self-contained: the golden task, the mock mode each failing rung answered with (by
rung position, so it survives a provider being renamed), and the rung a correct ladder serves from
(`expect_rung`, None for an honest refusal). A drill cell becomes one with `fixture_from_cell`; an
incident from the audit trail, with `fixture_from_incident`, from the failures its tries recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core import Failure
from ..policy import Policy
from .golden import GoldenTask
from .scenario import Case, expected_rung, failure_mode, ladder_of
from .score import Cell

FIXTURE_VERSION: Final = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Frozen):
    kind: Literal["drill", "incident"]
    ref: str  # the drill cell (scenario/task/tenant) or the incident's request id
    recorded_at: str  # ISO 8601, UTC


class StagedFault(_Frozen):
    rung: int = Field(ge=0)
    mode: str  # a mock provider mode (mock_provider.MODE_GRAMMAR)


class Fixture(_Frozen):
    fixture: Literal[1] = FIXTURE_VERSION
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    source: Source
    task: GoldenTask
    faults: tuple[StagedFault, ...]
    tenant: str
    expect_rung: int | None = Field(ge=0)
    observed: dict[str, Any] = Field(default_factory=dict)  # the trace when it was recorded

    def to_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


class FixtureError(ValueError):
    pass


def parse_fixture(text: str, source: str) -> Fixture:
    try:
        return Fixture.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{source}: not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(fixture)'}: {e['msg']}" for e in exc.errors())
        raise FixtureError(f"{source}: {problems}") from None


def fixture_from_cell(case: Case, cell: Cell, recorded_at: str) -> Fixture:
    """Keep what the drill expected (not what it saw: a failing cell replays as a failure until
    fixed). Faults are the modes of the case's faulted rungs."""
    healthy = case.task.mock_mode
    by_provider = dict(case.modes)
    faults = []
    for rung in case.ladder:
        mode = by_provider[rung.endpoint.partition("/")[0]]
        if mode != healthy:
            faults.append(StagedFault(rung=rung.index, mode=mode))
    return Fixture(
        id=f"{cell.scenario}.{cell.task}.{cell.tenant}".lower(),
        source=Source(kind="drill", ref=cell.key, recorded_at=recorded_at),
        task=case.task,
        faults=tuple(faults),
        tenant=cell.tenant,
        expect_rung=None if case.expected is None else case.expected.index,
        observed=cell.trace.to_json(),
    )


def fixture_from_incident(
    policy: Policy,
    task: GoldenTask,
    trips: Sequence[tuple[int, Failure]],
    *,
    incident: str,
    recorded_at: str,
) -> Fixture:
    """An incident (the rungs that failed and how, in the order tried) as a fixture whose
    expectation is what a correct ladder does under those failures."""
    name, rungs = ladder_of(policy, task)
    faults: dict[int, StagedFault] = {}
    for index, failure in trips:
        if not 0 <= index < len(rungs):
            raise FixtureError(f"incident {incident}: rung {index} is not on ladder {name!r} ({len(rungs)} rungs)")
        timeout = policy.ladders[name][index].timeout_s
        faults.setdefault(index, StagedFault(rung=index, mode=failure_mode(failure, timeout)))
    want = expected_rung(policy, task, frozenset(faults), task.tenant)
    return Fixture(
        id=f"incident.{incident}".lower(),
        source=Source(kind="incident", ref=incident, recorded_at=recorded_at),
        task=task,
        faults=tuple(faults[i] for i in sorted(faults)),
        tenant=task.tenant,
        expect_rung=None if want is None else want.index,
    )


def replay_case(policy: Policy, fixture: Fixture) -> Case:
    """The fixture as a case on `policy`'s ladder (FixtureError when that ladder is too short)."""
    task = fixture.task
    name, rungs = ladder_of(policy, task)
    staged = {f.rung: f.mode for f in fixture.faults}
    for index in [*staged, *([fixture.expect_rung] if fixture.expect_rung is not None else [])]:
        if index >= len(rungs):
            raise FixtureError(f"fixture {fixture.id}: rung {index} is not on ladder {name!r} ({len(rungs)} rungs)")
    modes: dict[str, str] = {}
    for rung, spec in zip(rungs, policy.ladders[name], strict=True):
        modes.setdefault(spec.provider, staged.get(rung.index, task.mock_mode))
    return Case(
        scenario=f"fixture:{fixture.id}",
        task=task,
        ladder=rungs,
        modes=tuple(sorted(modes.items())),
        expected=None if fixture.expect_rung is None else rungs[fixture.expect_rung],
        tenants=(fixture.tenant,),
    )
