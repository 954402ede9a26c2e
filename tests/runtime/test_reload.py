"""A worker's side of hot reload (the history `rungway up` hands over), noticing an edit, and the
record of reloads: runtime I/O against temporary files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from extproc.health.board import Board
from extproc.policy import History, Policy, PolicyReloaded, ReloadOutcome, parse_policy
from extproc.runtime.reload import HandedPolicy, PolicyReloads, source_fingerprint, write_atomically, written_at
from extproc.runtime.sidecar import Sidecar, configured_endpoints
from tests.builders import PRIMARY_KEY, SECONDARY_KEY, make_policy, make_sidecar, policy_data

NEW_KEY = "sk-new-provider"


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_UNIT_PRIMARY", PRIMARY_KEY)
    monkeypatch.setenv("RW_UNIT_SECONDARY", SECONDARY_KEY)
    monkeypatch.setenv("RW_UNIT_NEW", NEW_KEY)


def with_new_provider(version: str = "unit-2026.2", env: str = "RW_UNIT_NEW") -> Policy:
    data = policy_data(version=version, max_in_flight=7)
    data["providers"]["new"] = {
        "base_url": "http://127.0.0.1:9",
        "dialect": "openai",
        "credential": {"env": env},
    }
    data["ladders"]["main"].insert(1, {"provider": "new", "model": "new-model"})
    return parse_policy(data)


def handed_sidecar(tmp_path: Path, history: History) -> tuple[Sidecar, HandedPolicy]:
    sidecar = make_sidecar()
    handed = HandedPolicy(tmp_path / "history.json", tmp_path / "worker-0.sock")
    write_atomically(handed.history_file, history.encode())
    sidecar.handed = handed
    return sidecar, handed


def test_a_worker_takes_a_handed_revision_and_says_it_serves_it(tmp_path: Path) -> None:
    old, new = make_policy(), with_new_provider()
    sidecar, handed = handed_sidecar(tmp_path, History(old).advance(new))
    sidecar.refresh_policy()
    assert sidecar.policy == new
    assert sidecar.policy_for(old.stamp) == old
    assert sidecar.key_for("new") == NEW_KEY and sidecar.key_for("primary") == PRIMARY_KEY
    assert sidecar.admission.limit == 7
    assert handed.ack.read_text() == new.stamp
    assert handed.ack.name == "worker-0.sock.revision"


def test_a_revision_a_sibling_worker_decided_under_is_taken_at_once(tmp_path: Path) -> None:
    new = with_new_provider()
    sidecar, handed = handed_sidecar(tmp_path, History(make_policy()))
    sidecar.refresh_policy()
    write_atomically(handed.history_file, History(make_policy()).advance(new).encode())
    # No timer has run: the try's lookup reads the hand-over itself.
    assert sidecar.policy_for(new.stamp) == new
    assert sidecar.policy_for("unit-1999+000000000000") is None


def test_a_bad_hand_over_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar, handed = handed_sidecar(tmp_path, History(make_policy()))
    serving = sidecar.policy
    write_atomically(handed.history_file, "{not json")
    with caplog.at_level(logging.ERROR, "rungway.policy"):
        sidecar.refresh_policy()
    assert sidecar.policy is serving
    assert "policy history not taken" in caplog.text
    # A provider whose key this worker cannot read: refused whole, keys untouched.
    monkeypatch.delenv("RW_UNIT_NEW")
    write_atomically(handed.history_file, History(make_policy()).advance(with_new_provider()).encode())
    sidecar.refresh_policy()
    assert sidecar.policy is serving and sidecar.key_for("new") is None
    assert not handed.ack.exists()


def test_the_board_keeps_what_it_learned_and_pins_the_new_revisions_endpoints() -> None:
    old, new = make_policy(), with_new_provider()
    board = Board(old.health, {}, configured_endpoints(old))
    before = board.endpoint("primary/gpt-4o")
    board.reconfigure({"new/new-model": 0.3}, configured_endpoints(new))
    assert board.endpoints["primary/gpt-4o"] is before
    assert board.endpoint("new/new-model").configured_baseline_s == 0.3
    # An endpoint the policy no longer names becomes client-named (evictable) without error.
    board.reconfigure({}, [])
    assert board.endpoint("secondary/claude-fallback") is board.endpoints["secondary/claude-fallback"]


def test_an_edit_to_any_file_of_a_policy_directory_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "defaults.yaml").write_text("a: 1\n")
    first = source_fingerprint(tmp_path)
    (tmp_path / "tenants" / "agency.yaml").write_text("lowest_tier: 2\n")
    second = source_fingerprint(tmp_path)
    assert second != first
    write_atomically(tmp_path / "tenants" / "agency.yaml", "lowest_tier: 1\n")
    third = source_fingerprint(tmp_path)
    assert third != second
    (tmp_path / "tenants" / "agency.yaml").unlink()
    assert source_fingerprint(tmp_path) == first
    assert written_at(third) is not None and written_at(()) is None
    assert source_fingerprint(tmp_path / "missing.yaml") == ()


def test_every_reload_is_counted_and_the_last_error_shown_until_a_good_one() -> None:
    reloads = PolicyReloads()
    rejected = PolicyReloaded(1.0, ReloadOutcome.REJECTED, "v1+a", None, "p", ("defaults.yaml: x: bad",))
    reloads.record(rejected)
    reloads.record(PolicyReloaded(2.0, ReloadOutcome.UNCHANGED, "v1+a", None, "p"))
    assert reloads.snapshot()["error"] == rejected.to_dict()
    applied = PolicyReloaded(3.0, ReloadOutcome.APPLIED, "v1+a", "v2+b", "p", took_s=0.2)
    reloads.record(applied)
    assert reloads.snapshot() == {
        "reloads": {"applied": 1, "unchanged": 1, "rejected": 1},
        "last_reload": applied.to_dict(),
        "error": None,
    }
    reloads.record(
        PolicyReloaded(
            4.0, ReloadOutcome.REJECTED, "v2+b", None, "/etc/rw/policy", ("/etc/rw/policy: x: /run/k/a.key",)
        )
    )
    shown = reloads.snapshot()["error"]
    assert isinstance(shown, dict) and shown["source"] == "policy" and shown["problems"] == ["policy: x: a.key"]
    assert reloads.last is not None and reloads.last.source == "/etc/rw/policy"  # the log line's record is whole
    registry = CollectorRegistry()
    registry.register(reloads)
    text = generate_latest(registry).decode()
    assert 'rungway_policy_reloads_total{outcome="rejected"} 2.0' in text
    assert 'rungway_policy_reloads_total{outcome="applied"} 1.0' in text


def test_rungway_status_says_an_edit_was_rejected_and_why() -> None:
    from extproc.cli import format_status

    error = PolicyReloaded(1.0, ReloadOutcome.REJECTED, "v1+a", None, "/etc/rungway", ("defaults.yaml: x: bad",))
    lines = format_status({"rungs": [], "policy": {"error": error.to_dict()}}).splitlines()
    assert lines[-2:] == ["policy edit REJECTED (/etc/rungway); v1+a still serves:", "  defaults.yaml: x: bad"]
    assert "REJECTED" not in format_status({"rungs": [], "policy": {"error": None}})


def test_a_reload_keeps_each_tenants_spend_unless_its_budget_window_changed_size() -> None:
    from extproc.routing.spend import SpendLedger

    ledger = SpendLedger({"a": 3600.0, "b": 3600.0}, 3600.0)
    ledger.record("a", 10, 1.0, 100.0)
    ledger.record("b", 10, 1.0, 100.0)
    ledger.resize({"a": 3600.0, "b": 60.0}, 3600.0)
    assert ledger.spent("a", 101.0)[0] == 10
    assert ledger.spent("b", 101.0)[0] == 0  # a new window, of the new size
    ledger.record("b", 5, 0.5, 102.0)
    assert ledger.spent("b", 103.0)[0] == 5
