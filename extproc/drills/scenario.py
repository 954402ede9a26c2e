"""Scripted faults (D1) and what a correct ladder does under them.

A scenario names faults by rung position, so the same script runs through any ladder: "the
primary times out", "the first fallback's JSON drifts". `plan_case` turns a scenario, a golden
task and a policy into a `Case`: the mock mode each provider answers with (sent as request
headers, so concurrent cases never share a provider's state) and the rung a correct Rungway
serves from. That expectation is computed from the policy and the faults alone, never from
Rungway's own routing code: the drill is an independent referee.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ..core import Capability, Failure
from ..policy import Policy
from .golden import GoldenTask

# The storm's other senders: tenants without a policy of their own (the policy's defaults).
TENANT_STORM: Final = ("storm-b", "storm-c", "storm-d", "storm-e")


class Fault(StrEnum):
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    SCHEMA_DRIFT = "schema_drift"
    TOOL_INCOMPATIBLE = "tool_incompatible"
    QUALITY_DROP = "quality_drop"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    faults: tuple[tuple[int, Fault], ...]  # (rung index, fault); rungs past the ladder's end are ignored
    tenants: int = 1  # the same requests sent at once by this many tenants

    def __post_init__(self) -> None:
        if not 1 <= self.tenants <= len(TENANT_STORM) + 1:
            raise ValueError(f"tenants must be in [1, {len(TENANT_STORM) + 1}], but was {self.tenants}")

    def fault_at(self, rung: int) -> Fault | None:
        return dict(self.faults).get(rung)


SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("baseline", "healthy ladder", ()),
    Scenario("primary_timeout", "primary times out", ((0, Fault.TIMEOUT),)),
    Scenario("rate_limit_storm", "429 storm on the primary, 3 tenants at once", ((0, Fault.RATE_LIMITED),), tenants=3),
    Scenario(
        "schema_drift", "primary down, fallback's JSON drifts", ((0, Fault.SERVER_ERROR), (1, Fault.SCHEMA_DRIFT))
    ),
    Scenario(
        "tool_incompatible",
        "primary down, fallback returns empty tool calls",
        ((0, Fault.SERVER_ERROR), (1, Fault.TOOL_INCOMPATIBLE)),
    ),
    Scenario("quality_drop", "primary answers well-formed but poor, no error", ((0, Fault.QUALITY_DROP),)),
)
RETRY_AFTER_S: Final = 30  # long enough that the rate-limited rung is skipped for the whole drill
SHORT_ANSWER_TOKENS: Final = 2


def mock_mode(fault: Fault, task: GoldenTask, timeout_s: float) -> str:
    """The mock provider mode that stages `fault` for `task` (grammar: mock_provider.MODE_GRAMMAR)."""
    if fault is Fault.TIMEOUT:
        return f"delay:{timeout_s + 2:g}"
    if fault is Fault.RATE_LIMITED:
        return f"status:429:{RETRY_AFTER_S}"
    if fault is Fault.SERVER_ERROR:
        return "status:503"
    if fault is Fault.SCHEMA_DRIFT:
        return "invalid_json"
    if fault is Fault.TOOL_INCOMPATIBLE:
        return "empty_tool"
    # A quality drop is a short answer where a proxy can still see it before the client does; a
    # stream is committed at its first token and a tool-calling model's drop is that it stops
    # calling: for those, a well-formed answer with nothing in it.
    if task.stream or task.has_tools:
        return "empty"
    return f"tokens:{SHORT_ANSWER_TOKENS}"


# An incident's failures (from the audit trail) staged again on a mock provider.
FAILURE_MODES: Final[Mapping[Failure, str]] = {
    Failure.TIMEOUT: "delay:{late}",
    Failure.RATE_LIMITED: f"status:429:{RETRY_AFTER_S}",
    Failure.SERVER_ERROR: "status:503",
    Failure.SCHEMA_ERROR: "invalid_json",
    Failure.TOOL_MISMATCH: "empty_tool",
    Failure.QUALITY_REGRESSION: "empty",
    Failure.SAFETY_BLOCK: "safety",
    Failure.CONTEXT_OVERFLOW: "context_overflow",
}


def failure_mode(failure: Failure, timeout_s: float) -> str:
    """The mock mode that reproduces a recorded failure; ValueError for one a mock cannot stage."""
    mode = FAILURE_MODES.get(failure)
    if mode is None:
        raise ValueError(f"failure must be one of {sorted(FAILURE_MODES)}, but was {failure!r}")
    return mode.format(late=f"{timeout_s + 2:g}")


@dataclass(frozen=True, slots=True)
class Rung:
    index: int
    tier: int
    endpoint: str  # provider/model, as x-rungway-served-by names it


@dataclass(frozen=True, slots=True)
class Case:
    """One golden task under one set of faults, ready to send."""

    scenario: str
    task: GoldenTask
    ladder: tuple[Rung, ...]
    modes: tuple[tuple[str, str], ...]  # (provider, mock mode) for every provider of the ladder
    expected: Rung | None  # None: an honest refusal is the correct answer
    tenants: tuple[str, ...]

    def headers(self, task_header: str) -> dict[str, str]:
        """Request headers that stage the faults (and the task class)."""
        headers = {f"x-mock-mode-{provider.lower()}": mode for provider, mode in self.modes}
        if self.task.task_class is not None:
            headers[task_header] = self.task.task_class
        return headers


def ladder_of(policy: Policy, task: GoldenTask) -> tuple[str, tuple[Rung, ...]]:
    task_class = task.task_class or policy.default_task
    model = str(task.request["model"])
    name = policy.ladder_for(model, task_class)
    if name is None:
        raise ValueError(f"golden task {task.id!r}: the policy routes no ladder for model {model!r}")
    rungs = tuple(
        Rung(i, policy.tier_of(name, i), f"{rung.provider}/{rung.model_for(model)}")
        for i, rung in enumerate(policy.ladders[name])
    )
    return name, rungs


def expected_rung(policy: Policy, task: GoldenTask, faulted: frozenset[int], tenant: str) -> Rung | None:
    """The first rung a correct ladder serves `task` from when the rungs in `faulted` fail: not
    faulted, within the task's and the tenant's lowest tier, able to take its tools and stream."""
    name, rungs = ladder_of(policy, task)
    task_class = task.task_class or policy.default_task
    max_tier = min(task.max_tier, policy.tenant(tenant).lowest_tier_for(task_class))
    for rung, spec in zip(rungs, policy.ladders[name], strict=True):
        caps = policy.providers[spec.provider].capabilities
        if rung.index in faulted or rung.tier > max_tier:
            continue
        if task.has_tools and Capability.TOOLS not in caps and not spec.strip_tools:
            continue
        if task.stream and Capability.STREAMING not in caps:
            continue
        return rung
    return None


def plan_case(policy: Policy, task: GoldenTask, scenario: Scenario) -> Case:
    name, rungs = ladder_of(policy, task)
    healthy = task.mock_mode
    modes: dict[str, str] = {}
    faulted: set[int] = set()
    for rung, spec in zip(rungs, policy.ladders[name], strict=True):
        fault = scenario.fault_at(rung.index)
        if fault is not None:
            faulted.add(rung.index)
        # A provider on two rungs answers as its first rung's fault says.
        modes.setdefault(spec.provider, healthy if fault is None else mock_mode(fault, task, spec.timeout_s))
    # A task that forbids fallbacks is its own tenant's rule: other tenants sending the same
    # request would be another task, so it is sent by its tenant alone.
    alone = not task.degraded_ok or task.forbid.below_tier is not None
    tenants = (task.tenant,) if alone else (task.tenant, *TENANT_STORM[: scenario.tenants - 1])
    return Case(
        scenario=scenario.name,
        task=task,
        ladder=rungs,
        modes=tuple(sorted(modes.items())),
        expected=expected_rung(policy, task, frozenset(faulted), task.tenant),
        tenants=tenants,
    )
