"""probe.targets and probe.due: which rung endpoints `rungway up` sends a synthetic probe, and when."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core import CircuitChanged, Failure, Observation, QuotaSignal
from extproc.health.board import Board
from extproc.health.circuit import CircuitState
from extproc.health.probe import ProbeTarget, ReplicaReports, due, targets
from extproc.policy import REQUESTED_MODEL, Policy
from tests.builders import make_policy, policies

T0 = 1_767_225_600.0

FIXED = [
    ProbeTarget("primary/gpt-fallback", "claude", 1, "gpt-fallback"),
    ProbeTarget("primary/gpt-summary", "summary", 1, "gpt-summary"),
    ProbeTarget("secondary/claude-fallback", "main", 1, "claude-fallback"),
    ProbeTarget("small/small-model", "main", 2, "small-model"),
]
# A circuit that never opens, so a score can be low while the circuit stays closed.
QUIET_CIRCUIT = {"consecutive_failures": 10_000, "minimum_calls": 10_000}


def board_for(policy: Policy) -> Board:
    return Board(policy.health)


def served(board: Board, key: str, ladder: str, rung: int, at: float = T0) -> None:
    board.observe(Observation(key, at, None, latency_s=0.2, ladder=ladder, rung=rung), at)


def fail(board: Board, key: str, times: int, at: float = T0) -> None:
    for _ in range(times):
        board.observe(Observation(key, at, Failure.SERVER_ERROR), at)


def policy_with(**health: Any) -> Policy:
    return make_policy(health=health)


# ---- targets -----------------------------------------------------------------------------------


def test_every_fixed_model_rung_is_a_target_once_under_its_first_ladder() -> None:
    policy = make_policy()
    # small/small-model is rung 1 of retry_same and tool_check too: main lists it first.
    assert targets(policy, board_for(policy)) == FIXED


def test_requested_model_rungs_become_targets_once_traffic_shows_their_models() -> None:
    policy = make_policy()
    board = board_for(policy)
    served(board, "primary/gpt-4o", "main", 0)
    served(board, "secondary/claude-3", "claude", 0)
    found = targets(policy, board)
    assert ProbeTarget("primary/gpt-4o", "main", 0, "gpt-4o") in found
    assert ProbeTarget("secondary/claude-3", "claude", 0, "claude-3") in found
    assert len(found) == len(FIXED) + 2
    assert [t.key for t in found] == sorted(t.key for t in found)


def test_a_model_name_with_slashes_is_kept_whole() -> None:
    policy = make_policy()
    board = board_for(policy)
    served(board, "primary/meta-llama/Llama-3.1-8B", "retry_same", 0)
    assert ProbeTarget("primary/meta-llama/Llama-3.1-8B", "retry_same", 0, "meta-llama/Llama-3.1-8B") in targets(
        policy, board
    )


def test_an_endpoint_seen_on_several_routes_is_probed_through_the_first() -> None:
    policy = make_policy()
    board = board_for(policy)
    served(board, "primary/gpt-4o", "tool_check", 0)
    served(board, "primary/gpt-4o", "main", 0)
    assert ProbeTarget("primary/gpt-4o", "main", 0, "gpt-4o") in targets(policy, board)


def test_a_fixed_model_seen_in_traffic_keeps_its_policy_target() -> None:
    policy = make_policy()
    board = board_for(policy)
    served(board, "small/small-model", "tool_check", 1)
    assert targets(policy, board) == FIXED


def test_routes_the_policy_no_longer_has_are_not_probed() -> None:
    # Routes come from every sidecar on the bus, some of which may run another policy version.
    policy = make_policy()
    board = board_for(policy)
    served(board, "primary/gpt-4o", "gone", 0)  # a ladder this policy does not have
    served(board, "primary/gpt-5", "main", 7)  # past the ladder's end
    served(board, "primary/gpt-6", "main", 1)  # rung 1 of main is another provider's
    assert targets(policy, board) == FIXED


def test_a_route_whose_rung_now_serves_a_fixed_model_does_not_probe_the_seen_model() -> None:
    # Seen as primary/gpt-4o on claude/1 under a policy where that rung was `$requested`; here it
    # serves gpt-fallback, so a probe sent there would measure primary/gpt-fallback instead.
    policy = make_policy()
    board = board_for(policy)
    served(board, "primary/gpt-4o", "claude", 1)
    assert targets(policy, board) == FIXED


def test_an_endpoint_known_only_from_a_quota_signal_is_not_a_target() -> None:
    policy = make_policy()
    board = board_for(policy)
    board.apply(QuotaSignal("primary/gpt-4o", T0 + 60), T0)
    assert targets(policy, board) == FIXED


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_targets_are_unique_sorted_and_each_names_a_rung_that_can_serve_it(data: st.DataObject) -> None:
    policy = data.draw(policies())
    board = board_for(policy)
    # Traffic as this policy produces it: a rung's own provider and the model it serves.
    for ladder, rungs in policy.ladders.items():
        for i in data.draw(st.lists(st.integers(0, len(rungs) - 1), max_size=3)):
            model = rungs[i].model_for(data.draw(st.sampled_from(["m1", "org/m2"])))
            served(board, f"{rungs[i].provider}/{model}", ladder, i)
    found = targets(policy, board)
    keys = [t.key for t in found]
    assert keys == sorted(set(keys))
    for target in found:
        rung = policy.ladders[target.ladder][target.rung]
        assert target.key == f"{rung.provider}/{target.model}"
        assert rung.model in (target.model, REQUESTED_MODEL)


# ---- due -----------------------------------------------------------------------------------------


def test_a_target_never_probed_is_due_at_once() -> None:
    policy = make_policy()
    board = board_for(policy)
    assert due(FIXED, board, {}, T0) == FIXED


def test_a_healthy_endpoint_is_due_every_probe_interval() -> None:
    policy = policy_with(probe_interval_s=60)
    board = board_for(policy)
    target = FIXED[0]
    served(board, target.key, target.ladder, target.rung)
    sent = {target.key: T0}
    assert due([target], board, sent, T0 + 59.9) == []
    assert due([target], board, sent, T0 + 60) == [target]


def test_an_open_circuit_is_not_probed_until_it_is_half_open() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    target = FIXED[0]
    fail(board, target.key, 5)
    assert board.endpoints[target.key].circuit.state(T0) is CircuitState.OPEN
    sent = {target.key: T0}
    half_open = T0 + policy.health.circuit.open_s
    assert due([target], board, sent, T0 + 5) == []  # nothing it hears would count
    assert due([target], board, sent, half_open - 0.1) == []
    assert due([target], board, sent, half_open) == [target]


def test_a_half_open_circuit_is_probed_at_the_recovery_interval() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    target = FIXED[0]
    fail(board, target.key, 5)
    later = T0 + policy.health.circuit.open_s
    assert board.endpoints[target.key].circuit.state(later) is CircuitState.HALF_OPEN
    assert due([target], board, {target.key: later - 5}, later) == [target]


def test_a_score_low_enough_for_deferrable_traffic_to_leave_is_probed_at_the_recovery_interval() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5, circuit=QUIET_CIRCUIT)
    board = board_for(policy)
    target = FIXED[0]
    for _ in range(6):
        served(board, target.key, target.ladder, target.rung)
    fail(board, target.key, 4)  # errors 0.6 < 0.7 (deferrable)
    ep = board.endpoints[target.key]
    assert ep.circuit.state(T0 + 1) is CircuitState.CLOSED
    assert board.score(ep, T0 + 1).value < policy.health.leave_below.deferrable
    assert due([target], board, {target.key: T0}, T0 + 5) == [target]


def test_a_score_every_class_still_uses_keeps_the_normal_interval() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5, circuit=QUIET_CIRCUIT)
    board = board_for(policy)
    target = FIXED[0]
    for _ in range(8):
        served(board, target.key, target.ladder, target.rung)
    fail(board, target.key, 2)  # errors 0.8 >= 0.7
    assert due([target], board, {target.key: T0}, T0 + 5) == []
    assert due([target], board, {target.key: T0}, T0 + 60) == [target]


def test_an_endpoint_another_replica_reports_half_open_is_probed_at_the_recovery_interval() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    target = FIXED[0]
    served(board, target.key, target.ladder, target.rung)  # closed and healthy here
    sent = {target.key: T0}
    assert due([target], board, sent, T0 + 5) == []
    assert due([target], board, sent, T0 + 5, {target.key}) == [target]
    fail(board, target.key, 5, at=T0 + 5)  # open here, half-open there: probe for them
    assert due([target], board, sent, T0 + 6, {target.key}) == [target]


def circuit_event(key: str, to: str) -> CircuitChanged:
    return CircuitChanged(key, T0, "open", to, "r")


def test_replica_reports_name_endpoints_a_replica_last_said_were_half_open() -> None:
    reports = ReplicaReports(ttl_s=60)
    reports.note(circuit_event("a/x", "half_open"), "w1", T0)
    reports.note(circuit_event("a/x", "closed"), "w2", T0)
    reports.note(circuit_event("b/y", "half_open"), "w1", T0)
    reports.note(circuit_event("b/y", "closed"), "w1", T0 + 1)  # the same replica, later
    reports.note(circuit_event("c/z", "open"), "w1", T0)  # open: nothing to probe for yet
    assert reports.half_open(T0 + 1) == {"a/x"}
    reports.note(circuit_event("a/x", "closed"), "w1", T0 + 2)
    assert reports.half_open(T0 + 2) == set()


def test_a_replica_silent_for_the_ttl_no_longer_counts() -> None:
    reports = ReplicaReports(ttl_s=60)
    reports.note(circuit_event("a/x", "half_open"), "gone", T0)
    assert reports.half_open(T0 + 60) == {"a/x"}
    assert reports.half_open(T0 + 60.1) == set()


def test_probe_interval_zero_turns_off_probes_of_healthy_endpoints_only() -> None:
    policy = policy_with(probe_interval_s=0, recovery_probe_s=5)
    board = board_for(policy)
    sick, well, unseen = FIXED[0], FIXED[1], FIXED[2]
    fail(board, sick.key, 5)
    served(board, well.key, well.ladder, well.rung)
    half_open = T0 + policy.health.circuit.open_s
    assert due([sick, well, unseen], board, {}, half_open) == [sick]


def test_each_target_keeps_its_own_schedule() -> None:
    policy = policy_with(probe_interval_s=60)
    board = board_for(policy)
    sent = {FIXED[0].key: T0, FIXED[1].key: T0 - 60, FIXED[2].key: T0 - 30}
    assert due(FIXED, board, sent, T0) == [FIXED[1], FIXED[3]]


def test_a_sidecar_alone_lets_live_requests_try_half_open_rungs() -> None:
    """`rungway serve` without `rungway up` has nobody sending synthetic probes."""
    from extproc.cli import _live_half_open

    alone = _live_half_open(make_policy())
    assert alone.health.circuit.live_half_open is True
    assert alone.health.circuit.open_s == make_policy().health.circuit.open_s  # nothing else moved
    off = make_policy(health={"enabled": False})
    assert _live_half_open(off) is off
