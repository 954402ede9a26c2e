"""Policy hot reload under load: how long an edit takes to serve, and what it costs requests.

`rungway up` (two workers) on a policy directory, the mock fleet of the end-to-end tests, and a
client loop (JSON and streams, half of them hopping past a failing primary) while the policy is
edited over and over: alternately a tenant's tier (no Envoy change) and ladder main's rung 1
swapped between two providers (new clusters' relay routes, CDS and RDS). For each kind of edit:
file write → Envoy applied it → every worker serves it (the supervisor's own record, /status),
and file write → the first answer that shows it (as a client sees it); and the requests that
failed (any). The end-to-end test (tests/e2e/test_reload.py) asserts the behaviour with three
edits; `python -m bench.reload` runs more and prints the figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import KEY_ENV, Fleet
from tests.e2e.test_reload import EXTRA, PRIMARY_FAILS, SECONDARY, Load, PolicyDir, first_time, served_by
from tests.stack import MockThread, provider_entry, running


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=20, help="edits of each kind")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between edits")
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        extra = mocks.provider("extra", "openai")
        defaults = fleet.policy(Path(tempfile.mkdtemp(prefix="rungway-bench-keys-")))
        defaults["providers"]["extra"] = provider_entry(extra)
        tenants = {"hospital": {"lowest_tier": 0}, "agency": {"lowest_tier": 2}}
        with running(defaults, env=KEY_ENV, workers=2, tenant_files=tenants) as stack:
            run(stack, PolicyDir(stack), args.edits, args.gap)
    finally:
        mocks.close()


def run(stack: Any, policy: PolicyDir, edits: int, gap: float) -> None:
    agency, hospital = stack.issue_key("agency"), stack.issue_key("hospital")
    time.sleep(2.5)  # every worker re-reads the key store within a second
    steps: dict[str, list[float]] = {}
    hop_rung = {policy.serving(): SECONDARY}  # where each revision serves a request that hops
    current = SECONDARY

    def record(kind: str, written: float, effect: float, stamp: str) -> None:
        last = policy.await_revision(stamp)["policy"]["last_reload"]
        for step, value in (
            ("write → Envoy + workers", last["took_s"]),
            ("  Envoy step (render, write, applied)", last["envoy_s"]),
            ("  workers took it", last["workers_s"]),
            ("write → first answer", effect - written),
        ):
            steps.setdefault(f"{kind}: {step}", []).append(value)

    with Load(stack, agency, threads=4) as load:
        for n in range(edits):
            tier = 1 if n % 2 == 0 else 0

            def set_tier(t: dict[str, Any], tier: int = tier) -> None:
                t["lowest_tier"] = tier

            written, stamp = policy.edit("tenants/hospital.yaml", set_tier)
            expect_served = tier == 1

            def hospital_follows(expect_served: bool = expect_served) -> bool:
                status, rung, _ = _try(stack, hospital)
                return (status == 200 and rung == SECONDARY) == expect_served

            hop_rung[stamp] = current
            record("tenant tier", written, first_time(hospital_follows), stamp)
            time.sleep(gap)
            rung = EXTRA if n % 2 == 0 else SECONDARY
            provider, model = rung.split("/")

            def swap(d: dict[str, Any], provider: str = provider, model: str = model) -> None:
                d["ladders"]["main"][1] = {"provider": provider, "model": model}

            written, stamp = policy.edit("defaults.yaml", swap)
            hop_rung[stamp] = current = rung

            def agency_follows(rung: str = rung) -> bool:
                return served_by(stack, agency, PRIMARY_FAILS)[1] == rung

            effect = first_time(agency_follows)
            record("rung swapped", written, effect, stamp)
            time.sleep(gap)
    answers = load.answers
    failed = [a for a in answers if not a.ok]
    print(
        f"{2 * edits} edits under load: {len(answers)} requests (JSON and streams, half hopping), {len(failed)} failed"
    )
    for a in failed[:5]:
        print(f"  failed: {a}")
    elsewhere = [a for a in answers if a.hop and a.ok and a.served_by != hop_rung.get(str(a.stamp))]
    print(f"hops served by a rung other than their own revision's: {len(elsewhere)}")
    for step, values in steps.items():
        print(f"{step:<52} {quantiles(values)}")


def _try(stack: Any, key: str) -> tuple[int, str | None, str | None]:
    import openai

    try:
        return served_by(stack, key, PRIMARY_FAILS)
    except openai.APIStatusError as exc:
        return exc.status_code, None, None


if __name__ == "__main__":
    main()
