"""Where the capacity ledger lives: one contract over a worker's own and the pod's shared file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.core import Impact
from extproc.routing.capacity import Denial, Holder, Ledger, Limits
from extproc.runtime.slots import LedgerStore, LocalLedger, SharedLedger

RUNG = ("main", 1)
A = Holder("a", Impact.CUSTOMER_FACING)
B = Holder("b", Impact.REVENUE_CRITICAL)


@pytest.fixture(params=["local", "shared"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LedgerStore, LedgerStore]]:
    """Two workers' views of the ledger: the same object locally, two handles on one file shared."""
    if request.param == "local":
        local = LocalLedger()
        yield local, local
        return
    first, second = SharedLedger(tmp_path / "capacity.json"), SharedLedger(tmp_path / "capacity.json")
    yield first, second
    first.close()
    second.close()


def test_a_reservation_made_by_one_worker_is_taken_up_by_the_try_in_another(
    stores: tuple[LedgerStore, LedgerStore],
) -> None:
    decider, runner = stores
    with decider.change(0.0) as ledger:
        ledger.reserve(RUNG, A, 0.0)
    with runner.change(0.01) as ledger:
        ledger.take(RUNG, A, 0.01, owner=1)
    assert runner.read(0.02).snapshot(0.02) == {"main/1": {"a": 1}}
    assert decider.read(0.02).snapshot(0.02) == {"main/1": {"a": 1}}  # one slot, not two
    limits = Limits(2, {}, 0.5)
    assert decider.read(0.02).admits(RUNG, limits, A, 0.02) is Denial.TENANT_SHARE
    with runner.change(0.03) as ledger:
        ledger.free(RUNG, A, owner=1)
    assert decider.read(0.04).snapshot(0.04) == {}


def test_the_shared_ledger_drops_the_tries_of_a_worker_that_died(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    store = SharedLedger(tmp_path / "capacity.json")
    assert (tmp_path / "capacity.json").stat().st_mode & 0o777 == 0o600  # the pod's workers' only
    with store.change(0.0) as ledger:
        ledger.take(RUNG, A, 0.0, owner=int(dead.stdout))
        ledger.take(RUNG, B, 0.0, owner=1)  # pid 1 is alive
    assert store.read(0.1).snapshot(0.1) == {"main/1": {"a": 1, "b": 1}}
    other = SharedLedger(tmp_path / "capacity.json")  # a restarted worker reaps on its first change
    with other.change(5.0):
        pass
    assert store.read(5.0).snapshot(5.0) == {"main/1": {"b": 1}}
    store.close()
    other.close()


def test_an_unreadable_ledger_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "capacity.json"
    path.write_text('{"v": 99, "rungs": []}')
    store = SharedLedger(path)
    assert store.read(0.0).snapshot(0.0) == {}
    with store.change(0.0) as ledger:
        ledger.take(RUNG, A, 0.0)
    assert store.read(0.0).snapshot(0.0) == {"main/1": {"a": 1}}
    store.close()


def test_the_ledgers_encoding_round_trips_and_refuses_anything_else() -> None:
    ledger = Ledger()
    ledger.reserve(RUNG, A, 1.0)
    ledger.take(RUNG, B, 1.0, owner=7)
    ledger.refused(("other", 0), "c", 1.0)
    again = Ledger.decode(ledger.encode(1.1))
    assert again.encode(1.1) == ledger.encode(1.1)
    assert again.snapshot(1.1) == {"main/1": {"a": 1, "b": 1}}
    bad: object
    for bad in ({"v": 2, "rungs": []}, {"rungs": []}, {"v": 1, "rungs": [{"ladder": "x"}]}, [], "x"):
        with pytest.raises(ValueError):
            Ledger.decode(bad)
