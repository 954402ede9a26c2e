"""Where the requests held for an approval are counted: one contract over a worker's own count
and the pod's shared file (routing/hold.py's HeldCount, runtime/slots.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.runtime.slots import HoldStore, LocalHolds, SharedHolds


@pytest.fixture(params=["local", "shared"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[HoldStore, HoldStore]]:
    """Two workers' views of the count: the same object locally, two handles on one file shared."""
    if request.param == "local":
        local = LocalHolds()
        yield local, local
        return
    first, second = SharedHolds(tmp_path / "holds.json"), SharedHolds(tmp_path / "holds.json")
    yield first, second
    first.close()
    second.close()


def test_a_tenants_held_requests_count_across_the_workers_holding_them(stores: tuple[HoldStore, HoldStore]) -> None:
    one, two = stores
    with one.change(0.0) as held:
        held.take("clinic", owner=1)
    with two.change(0.1) as held:
        held.take("clinic", owner=1)  # pid 1 is alive (the shared file reaps dead owners)
        held.take("lab", owner=1)
    assert one.read(0.2).held("clinic") == 2 and two.read(0.2).snapshot() == {"clinic": 2, "lab": 1}
    with one.change(0.3) as held:
        held.free("clinic", owner=1)
        held.free("lab", owner=1)
        held.free("lab", owner=1)  # never below nothing
    assert two.read(0.4).snapshot() == {"clinic": 1}


def test_the_shared_count_drops_the_holds_of_a_worker_that_died(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    store = SharedHolds(tmp_path / "holds.json")
    assert (tmp_path / "holds.json").stat().st_mode & 0o777 == 0o600
    with store.change(0.0) as held:
        held.take("clinic", owner=int(dead.stdout))
        held.take("clinic", owner=1)
    assert store.read(0.1).held("clinic") == 2
    other = SharedHolds(tmp_path / "holds.json")  # a restarted worker reaps on its first change
    with other.change(5.0):
        pass
    assert store.read(5.1).held("clinic") == 1
    store.close()
    other.close()


def test_a_broken_shared_file_starts_over_empty(tmp_path: Path) -> None:
    (tmp_path / "holds.json").write_text('{"v": 9, "held": []}')
    store = SharedHolds(tmp_path / "holds.json")
    assert store.read(0.0).snapshot() == {}
    store.close()
