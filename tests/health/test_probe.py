"""probe.targets and probe.due: which rung endpoints `rungway up` sends a synthetic probe, and when."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core import CircuitChanged, Failure, FakeClock, Impact, Observation, ProbeClaim, QuotaSignal
from extproc.health.board import Board
from extproc.health.circuit import CircuitState
from extproc.health.probe import (
    CLAIM_SETTLE_S,
    ProbeSchedule,
    ProbeTarget,
    ReplicaReports,
    due,
    rate_limited,
    targets,
)
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


def test_an_open_circuit_is_probed_at_the_recovery_interval_all_through_its_hold() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    target = FIXED[0]
    fail(board, target.key, 5)
    assert board.endpoints[target.key].circuit.state(T0) is CircuitState.OPEN
    sent = {target.key: T0}
    assert due([target], board, sent, T0 + 4.9) == []
    assert due([target], board, sent, T0 + 5) == [target]  # its answer counts, open or not


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


# ---- manners -----------------------------------------------------------------------------------


def test_no_probe_while_a_retry_after_or_rate_limit_reset_runs() -> None:
    """The incident: a 429 with Retry-After: 2, and a probe 0.2 s later."""
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    target = FIXED[0]
    board.observe(Observation(target.key, T0, Failure.RATE_LIMITED, latency_s=0.1), T0)
    board.apply(QuotaSignal(target.key, T0 + 2), T0)
    assert due([target], board, {}, T0 + 0.2) == []
    assert due([target], board, {}, T0 + 1.99) == []
    assert due([target], board, {}, T0 + 2) == [target]
    # A longer reset (the provider's rate-limit headers) holds probes off just the same.
    board.apply(QuotaSignal(target.key, T0 + 60), T0 + 3)
    assert due([target], board, {}, T0 + 59) == []
    assert due([target], board, {}, T0 + 60) == [target]


@pytest.mark.parametrize("failure", [Failure.CONTEXT_OVERFLOW, Failure.SAFETY_BLOCK, Failure.CLIENT_ERROR])
def test_failures_about_the_request_itself_never_trigger_probes(failure: Failure) -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5)
    board = board_for(policy)
    # A client-named model seen only in such failures is no target...
    board.observe(Observation("primary/no-such-model", T0, failure, ladder="main", rung=0), T0)
    assert targets(policy, board) == FIXED
    # ...and a burst of them neither brings a probe forward nor moves the circuit.
    target = FIXED[0]
    served(board, target.key, target.ladder, target.rung)
    for _ in range(50):
        board.observe(Observation(target.key, T0 + 1, failure, latency_s=0.1), T0 + 1)
    assert board.endpoints[target.key].circuit.state(T0 + 2) is CircuitState.CLOSED
    assert due([target], board, {target.key: T0}, T0 + 5) == []
    assert due([target], board, {target.key: T0}, T0 + 60) == [target]


def test_client_named_models_are_capped_least_recently_used_out() -> None:
    policy = policy_with(max_probed_models=2)
    board = board_for(policy)
    for i, model in enumerate(["gpt-a", "gpt-b", "gpt-c"]):
        served(board, f"primary/{model}", "main", 0, at=T0 + i)

    def named() -> list[str]:
        return [t.key for t in targets(policy, board) if t not in FIXED]

    assert named() == ["primary/gpt-b", "primary/gpt-c"]
    served(board, "primary/gpt-a", "main", 0, at=T0 + 10)  # used again: back in, the oldest out
    assert named() == ["primary/gpt-a", "primary/gpt-c"]


def test_a_model_that_only_probes_keep_using_falls_out_of_the_targets() -> None:
    policy = policy_with(max_probed_models=1)
    board = board_for(policy)
    served(board, "primary/gpt-a", "main", 0, at=T0)
    served(board, "primary/gpt-b", "main", 0, at=T0 + 1)
    for i in range(10):  # probes of gpt-a are no use of it
        board.observe(Observation("primary/gpt-a", T0 + 2 + i, None, latency_s=0.2, probe=True), T0 + 2 + i)
    assert [t.key for t in targets(policy, board) if t not in FIXED] == ["primary/gpt-b"]


def test_failing_live_traffic_is_use_a_model_with_an_outage_stays_probed() -> None:
    policy = policy_with(max_probed_models=1)
    board = board_for(policy)
    served(board, "primary/gpt-a", "main", 0, at=T0)
    board.observe(Observation("primary/gpt-b", T0 + 1, Failure.SERVER_ERROR, ladder="main", rung=0), T0 + 1)
    assert [t.key for t in targets(policy, board) if t not in FIXED] == ["primary/gpt-b"]


def test_max_probed_models_zero_probes_the_policys_fixed_models_only() -> None:
    policy = policy_with(max_probed_models=0)
    board = board_for(policy)
    served(board, "primary/gpt-4o", "main", 0)
    assert targets(policy, board) == FIXED


def test_the_target_list_stays_bounded_however_many_models_clients_name() -> None:
    policy = make_policy()  # max_probed_models: 20 by default
    board = board_for(policy)
    for i in range(500):
        served(board, f"primary/gpt-{i}", "main", 0, at=T0 + i)
    found = targets(policy, board)
    assert len(found) == len(FIXED) + 20
    assert {t.key for t in found if t not in FIXED} == {f"primary/gpt-{i}" for i in range(480, 500)}


# ---- one prober per endpoint across a fleet ----------------------------------------------------------


def schedule(me: str) -> ProbeSchedule:
    return ProbeSchedule(me, rival_window_s=5)


def test_a_claim_heard_from_another_prober_resets_this_probers_timer() -> None:
    policy = policy_with(probe_interval_s=60)
    board = board_for(policy)
    mine = schedule("b")
    mine.hear(ProbeClaim(FIXED[0].key, T0, "a"), T0 + 0.01)
    assert due(FIXED[:1], board, mine.last, T0 + 59) == []
    assert due(FIXED[:1], board, mine.last, T0 + 60) == FIXED[:1]


def test_a_claim_waits_settle_s_before_it_is_sent() -> None:
    mine = schedule("a")
    assert mine.claim([FIXED[0].key], T0) == [ProbeClaim(FIXED[0].key, T0, "a")]
    assert mine.claim([FIXED[0].key], T0 + 0.1) == []  # claimed already
    assert mine.ready(T0 + CLAIM_SETTLE_S - 0.01) == []
    assert mine.ready(T0 + CLAIM_SETTLE_S) == [FIXED[0].key]
    assert mine.ready(T0 + 1) == []  # sent once


@pytest.mark.parametrize(
    ("a_at", "b_at", "winner"),
    [(T0, T0 + 0.1, "a"), (T0 + 0.1, T0, "b"), (T0, T0, "a")],  # a tie in time: the lower id
)
def test_of_two_claims_made_together_the_earlier_probes_and_the_other_stands_down(
    a_at: float, b_at: float, winner: str
) -> None:
    key = FIXED[0].key
    a, b = schedule("a"), schedule("b")
    (claim_a,) = a.claim([key], a_at)
    (claim_b,) = b.claim([key], b_at)
    for prober in (a, b):  # every prober hears both claims, its own included
        prober.hear(claim_a, T0 + 0.15)
        prober.hear(claim_b, T0 + 0.15)
    sent = {name for name, prober in (("a", a), ("b", b)) if prober.ready(T0 + 1) == [key]}
    assert sent == {winner}


def test_a_rivals_claim_from_an_earlier_round_does_not_stand_this_one_down() -> None:
    key = FIXED[0].key
    mine = schedule("b")
    mine.claim([key], T0 + 10)
    mine.hear(ProbeClaim(key, T0, "a"), T0 + 10.1)  # carried very late: its round is over
    assert mine.ready(T0 + 11) == [key]


def test_a_claim_from_a_clock_running_ahead_silences_a_prober_no_longer_than_an_interval() -> None:
    mine = schedule("b")
    mine.hear(ProbeClaim(FIXED[0].key, T0 + 3600, "a"), T0)
    assert mine.last[FIXED[0].key] == T0


def test_the_schedule_forgets_endpoints_that_are_no_longer_targets() -> None:
    mine = schedule("a")
    mine.claim(["x/1", "x/2"], T0)
    mine.hear(ProbeClaim("x/3", T0, "b"), T0)
    mine.keep({"x/2"})
    assert set(mine.last) == {"x/2"} and mine.ready(T0 + 1) == ["x/2"]


def test_only_the_supervisor_sends_probes() -> None:
    """A pod's workers never probe: `rungway up`'s supervisor is its one prober (and
    ProbeSchedule keeps it in step with the other pods of a fleet)."""
    root = Path(__file__).resolve().parents[2] / "extproc"
    probers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if re.search(r"\bProbeSchedule\(|\bdue\(", path.read_text())
    )
    assert probers == ["health/probe.py", "runtime/supervisor.py"]


# ---- simulations: probers, boards and a provider, on a FakeClock ------------------------------------

KEY = "primary/gpt-4o"
STEP_S = 0.5  # the supervisor's probe loop


@dataclass
class Prober:
    """One pod's supervisor as its probe loop runs it: a board replica and a schedule."""

    name: str
    board: Board
    schedule: ProbeSchedule
    sent: list[float] = field(default_factory=list)

    def step(self, policy: Policy, now: float) -> list[ProbeClaim]:
        """One pass of the loop: send the claims that settled, claim what is due."""
        all_targets = targets(policy, self.board)
        self.schedule.keep({t.key for t in all_targets})
        for key in self.schedule.ready(now):
            if key == KEY and not rate_limited(self.board, key, now):
                self.sent.append(now)
        keys = [t.key for t in due(all_targets, self.board, self.schedule.last, now) if t.key == KEY]
        return self.schedule.claim(keys, now)


def simulate_outage(outage_s: float, after_s: float = 60.0, **health: Any) -> tuple[float, list[float], float]:
    """The primary fails from 0 to `outage_s`, then answers; live requests every 4 s. Returns
    when live traffic may use the primary again after the recovery, when the primary was
    called (live or probe) once its circuit had opened, and when it opened."""
    policy = policy_with(**{"probe_interval_s": 60, **health})
    clock = FakeClock(wall=T0)
    prober = Prober("pod", board_for(policy), ProbeSchedule("pod", policy.health.recovery_probe_s))
    board = prober.board
    start = clock.wall()
    calls: list[float] = []
    opened_at = math.inf
    back_at = math.inf
    step = 0
    while clock.wall() - start < outage_s + after_s:
        now = clock.wall()
        t = now - start
        failure = Failure.SERVER_ERROR if t < outage_s else None
        board.tick(now)
        if KEY in board.endpoints and board.endpoints[KEY].circuit.state(now) is CircuitState.OPEN:
            opened_at = min(opened_at, t)
        primary_usable = board.usable(KEY, Impact.CUSTOMER_FACING, now, first=True) is None
        if step % 8 == 0 and primary_usable:  # a live request every 4 s, the primary first if allowed
            board.observe(Observation(KEY, now, failure, latency_s=0.3, ladder="main", rung=0), now)
            if t >= opened_at:
                calls.append(t)
        if t >= outage_s and back_at == math.inf and primary_usable:
            back_at = t
        for claim in prober.step(policy, now):
            prober.schedule.hear(claim, now)  # the bus delivers its own claims back
        if prober.sent and prober.sent[-1] == now:  # the probe's answer, observed by a worker
            board.observe(Observation(KEY, now, failure, latency_s=0.3, probe=True, ladder="main", rung=0), now)
            calls.append(t)
        clock.advance(STEP_S)
        step += 1
    return back_at - outage_s, calls, opened_at


def most_in_a_minute(times: list[float], since: float, until: float) -> int:
    inside = [t for t in times if since <= t < until]
    return max((sum(1 for u in inside if t <= u < t + 60) for t in inside), default=0)


@pytest.mark.parametrize("outage_s", [60.0, 600.0])
def test_live_traffic_is_back_within_30s_of_recovery_whatever_the_outage_length(outage_s: float) -> None:
    back_after, calls, opened_at = simulate_outage(outage_s)  # defaults: open_s 30, recovery_probe_s 5
    assert opened_at < 30
    assert back_after <= 30
    # Two passing probes, 5 s apart, close the circuit: about 10 s, not a flap backoff's minutes.
    assert back_after <= 2 * 5 + 2 * STEP_S
    # While it is open: probes every recovery_probe_s, and no live request.
    assert most_in_a_minute(calls, opened_at, outage_s) <= 60 / 5


def test_recovery_inside_the_hold_is_noticed_and_traffic_returns_when_the_hold_ends() -> None:
    back_after, _, opened_at = simulate_outage(20.0)
    assert back_after <= opened_at + 30 - 20 + STEP_S  # the hold (open_s 30) is for live traffic


@settings(max_examples=40, deadline=None)
@given(
    offset=st.integers(0, 9).map(lambda q: q / 20),  # where each pod's loop falls within a pass
    delay=st.integers(1, 4).map(lambda q: q / 100),  # how long the bus takes, < CLAIM_SETTLE_S
    probers=st.integers(2, 4),
)
def test_probers_fed_the_same_events_send_one_probe_per_interval_between_them(
    offset: float, delay: float, probers: int
) -> None:
    """Pods sharing a Redis bus: each supervisor's board hears the same events and each prober
    hears every claim a moment after it was made. Between them they probe an open circuit once
    per recovery_probe_s, not once each."""
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5, circuit={"consecutive_failures": 3})
    pods = [
        Prober(f"pod-{i}", board_for(policy), ProbeSchedule(f"pod-{i}", policy.health.recovery_probe_s))
        for i in range(probers)
    ]
    for pod in pods:  # the same outage, heard by every replica
        served(pod.board, KEY, "main", 0, at=T0 - 1)
        fail(pod.board, KEY, 3, at=T0)
    in_flight: list[tuple[float, ProbeClaim]] = []
    ticks = sorted(
        (T0 + n * STEP_S + (i * offset) % STEP_S, i) for n in range(int(120 / STEP_S)) for i in range(probers)
    )
    for now, i in ticks:
        for at, claim in [m for m in in_flight if m[0] <= now]:
            for pod in pods:
                pod.schedule.hear(claim, at)
        in_flight = [m for m in in_flight if m[0] > now]
        for claim in pods[i].step(policy, now):
            pods[i].schedule.hear(claim, now)  # its own, at once
            in_flight.append((now + delay, claim))
    sent = sorted(t for pod in pods for t in pod.sent)
    assert 120 / 5 - 1 <= len(sent) <= 120 / 5 + 1
    assert all(b - a >= 5 - STEP_S for a, b in itertools.pairwise(sent))


def test_without_the_bus_each_prober_probes_on_its_own() -> None:
    policy = policy_with(probe_interval_s=60, recovery_probe_s=5, circuit={"consecutive_failures": 3})
    pods = [Prober(f"pod-{i}", board_for(policy), ProbeSchedule(f"pod-{i}", 5)) for i in range(2)]
    for pod in pods:
        served(pod.board, KEY, "main", 0, at=T0 - 1)
        fail(pod.board, KEY, 3, at=T0)
        for n in range(int(60 / STEP_S)):
            now = T0 + n * STEP_S
            for claim in pod.step(policy, now):
                pod.schedule.hear(claim, now)
    assert [len(pod.sent) for pod in pods] == [12, 12]
