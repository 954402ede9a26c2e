"""State named by clients stays bounded: every model name a client sends can become a board
endpoint, a metric label value and a probe target, so each is capped; endpoints the policy names
are never evicted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from extproc.core import Failure, FakeClock, Observation, QuotaSignal
from extproc.filters.effects import Tried, Tripped
from extproc.health.board import Board
from extproc.health.probe import targets
from extproc.policy import HealthSettings
from extproc.runtime.metrics import OTHER, Metrics
from extproc.runtime.sidecar import Sidecar, configured_endpoints
from tests.builders import KEYS, make_policy, sample

T0 = 1_767_225_600.0
CONFIGURED = frozenset({"secondary/claude-fallback", "small/small-model"})


def mention(board: Board, key: str, at: float) -> None:
    board.observe(Observation(key, at, None, latency_s=0.2, ladder="main", rung=0), at)


def test_configured_endpoints_are_the_rungs_with_a_fixed_model() -> None:
    assert configured_endpoints(make_policy()) == {
        "secondary/claude-fallback",
        "small/small-model",
        "primary/gpt-fallback",
        "primary/gpt-summary",
    }


def test_the_least_recently_mentioned_client_named_endpoint_is_evicted_first() -> None:
    board = Board(HealthSettings(max_client_endpoints=2), configured=CONFIGURED)
    mention(board, "primary/a", T0)
    mention(board, "primary/b", T0 + 1)
    mention(board, "primary/a", T0 + 2)  # a is now the more recent
    mention(board, "primary/c", T0 + 3)
    assert set(board.endpoints) == {"primary/a", "primary/c"}
    assert board.evictions == 1
    assert board.snapshot(T0 + 4)["evictions"] == 1


def test_configured_endpoints_survive_a_flood_of_client_named_models() -> None:
    board = Board(HealthSettings(max_client_endpoints=3), configured=CONFIGURED)
    for key in CONFIGURED:
        mention(board, key, T0)
    for i in range(1000):
        mention(board, f"primary/flood-{i}", T0 + 1)
    assert set(board.endpoints) >= CONFIGURED
    assert len(board.endpoints) == len(CONFIGURED) + 3
    assert board.evictions == 997


_KEYS = st.sampled_from(sorted(CONFIGURED)) | st.builds("primary/m{}".format, st.integers(0, 30))


@given(cap=st.integers(1, 8), keys=st.lists(st.tuples(_KEYS, st.sampled_from(["observe", "quota", "admit"]))))
def test_any_sequence_of_model_names_keeps_the_board_within_its_cap(cap: int, keys: list[tuple[str, str]]) -> None:
    board = Board(HealthSettings(max_client_endpoints=cap), configured=CONFIGURED)
    mentioned: list[str] = []
    created = 0  # client-named endpoints made (again, after an eviction) by a mention
    for i, (key, how) in enumerate(keys):
        at = T0 + i
        created += key not in CONFIGURED and key not in board.endpoints
        if how == "observe":
            mention(board, key, at)
        elif how == "quota":
            board.apply(QuotaSignal(key, at + 5), at)
        else:
            board.admit(key, at)
        mentioned.append(key)
        client_named = [k for k in board.endpoints if k not in CONFIGURED]
        assert len(client_named) <= cap
        # Configured endpoints once mentioned are never evicted.
        assert {k for k in mentioned if k in CONFIGURED} <= set(board.endpoints)
    # The survivors are exactly the `cap` most recently mentioned client-named endpoints.
    recent: list[str] = []
    for key in reversed(mentioned):
        if key not in CONFIGURED and key not in recent:
            recent.append(key)
    assert {k for k in board.endpoints if k not in CONFIGURED} == set(recent[:cap])
    assert board.evictions == created - len(recent[:cap])


def test_probe_targets_of_client_named_models_stay_within_max_probed_models() -> None:
    policy = make_policy(health={"max_probed_models": 3, "max_client_endpoints": 50})
    board = Board(policy.health, configured=configured_endpoints(policy))
    for i in range(200):
        mention(board, f"primary/gpt-{i}", T0 + i)
    found = targets(policy, board)
    named = [t for t in found if t.key not in configured_endpoints(policy)]
    assert [t.key for t in named] == ["primary/gpt-197", "primary/gpt-198", "primary/gpt-199"]
    assert len(board.endpoints) == 50


@given(st.lists(st.text(min_size=1, max_size=5), max_size=60))
def test_metric_model_labels_past_the_budget_fold_into_other(models: list[str]) -> None:
    metrics = Metrics(CollectorRegistry(), max_models=5)
    metrics.pin_models(["pinned"])
    labels = [metrics.model(m) for m in models]
    first = list(dict.fromkeys(m for m in models if m != "pinned"))[:5]
    for model, label in zip(models, labels, strict=True):
        assert label == (model if model in first or model == "pinned" else OTHER)
    assert metrics.model("pinned") == "pinned"
    assert metrics.endpoint("primary/pinned") == "primary/pinned"


def test_the_sidecar_folds_model_labels_and_counts_board_evictions() -> None:
    policy = make_policy(health={"max_client_endpoints": 2})
    sidecar = Sidecar(policy, dict(KEYS), Metrics(CollectorRegistry(), max_models=2), FakeClock())
    for i in range(5):
        sidecar.apply(
            [
                Tried("main", 0, "primary", f"gpt-{i}", "served"),
                Observation(f"primary/gpt-{i}", T0, None, latency_s=0.2, ladder="main", rung=0),
            ]
        )
    sidecar.apply([Tripped("main", 1, "secondary", "claude-fallback", Failure.TIMEOUT)])
    assert sample(sidecar, "rungway_board_evictions_total") == 3
    assert sample(sidecar, "rungway_attempts_total", ladder="main", rung="0", provider="primary", model=OTHER,
                  outcome="served") == 3  # fmt: skip
    assert sample(sidecar, "rungway_label_values_folded_total", label="model") == 3
    # A configured model keeps its own label however many client-named ones came first.
    assert sample(sidecar, "rungway_trips_total", ladder="main", rung="1", provider="secondary",
                  model="claude-fallback", reason="timeout") == 1  # fmt: skip
    assert len([k for k in sidecar.board.endpoints if k.startswith("primary/gpt-")]) == 2
