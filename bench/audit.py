"""The audit trail (A1): what its writer sustains, and what it costs the request path.

`python -m bench.audit` (about 2 minutes):

1. Writer: one AuditLog (runtime/auditlog.py) in a temporary directory, fed realistic records
   (a tier change, two rungs, a request id and a prompt hash) as fast as one thread can submit
   them; records per second until every one is written (the kernel has it) and fsynced, at the
   default fsync interval and with an fsync after every batch; and the cost of `submit()` alone,
   which is all the request path pays.
2. Request path: two `rungway up` stacks (real Envoy, one worker each) on the e2e mock fleet,
   one with the trail on (its default under `up`) and one with `audit: {enabled: false}`, the
   same closed-loop load on each in alternating rounds: (a) tier-0 answers (no record; with the
   trail on decide reads the body to hash it), (b) a fallback on every request (primary 503:
   two trips, a hop and a tier change, four records per request). Throughput, p50/p99 and the
   worker's CPU per request, each as the ratio on/off of the same run.

Writes bench/AUDIT.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from extproc.audit import Entry, Kind, RungRef, prompt_hash, verify
from extproc.policy import AuditSettings
from extproc.runtime.auditlog import AuditLog, chain_lines, segments

from .load import AsyncioLoad, LoadResult
from .procs import cpu_count, cpu_seconds
from .run import git_describe, md_table

HERE = Path(__file__).absolute().parent
AUDIT_MD = HERE / "AUDIT.md"
# AUDIT.md is regenerated above this line; whatever follows it is kept across runs.
NOTES_MARKER = "<!-- Everything below this line is kept when bench.audit rewrites the file. -->"
PRIMARY = RungRef("main", 0, "primary", "gpt-4o", 0)
SECONDARY = RungRef("main", 1, "secondary", "claude-fallback", 1)


def record(i: int) -> Entry:
    return Entry(
        at=1_700_000_000.0 + i / 1000,
        kind=Kind.TIER_CHANGE,
        tenant="acme",
        task="default",
        trigger="server_error",
        source=PRIMARY,
        target=SECONDARY,
        policy="bench-2026.12",
        request_id=f"5f2b8c1e-{i:08d}-4d6a-9c1b-0e7f3a2d9b44",
        prompt_hash=prompt_hash(str(i).encode()),
        tokens=42,
        cost=0.00063,
    )


def writer(n: int, fsync_interval_s: float) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="rungway-audit-bench-"))
    entries = [record(i) for i in range(n)]
    log = AuditLog(directory, "w0", AuditSettings(fsync_interval_s=fsync_interval_s, queue_records=100_000)).open()
    start = time.perf_counter()
    submit_s = 0.0
    for e in entries:
        t = time.perf_counter()
        log.submit(e)
        submit_s += time.perf_counter() - t
    assert log.flush(timeout=600)
    written = time.perf_counter() - start
    assert log.sync(timeout=600)
    synced = time.perf_counter() - start
    log.close()
    verdict = verify(chain_lines(segments(directory)["w0"]))
    size = sum(p.stat().st_size for _, p in segments(directory)["w0"])
    return {
        "records": n,
        "written_per_s": n / written,
        "synced_per_s": n / synced,
        "submit_us": submit_s / n * 1e6,
        "bytes_per_record": size / n,
        "intact": float(type(verdict).__name__ == "Intact"),
    }


def load_round(stack: Any, key: str, seconds: float, connections: int) -> tuple[LoadResult, float]:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Where is my order #1234?"}]})
    pid = stack.state["worker_pids"][0]
    cpu0 = cpu_seconds(pid)
    result = AsyncioLoad().run(
        stack.base_url + "/v1/chat/completions",
        body.encode(),
        {"authorization": f"Bearer {key}"},
        connections=connections,
        seconds=seconds,
    )
    return result, (cpu_seconds(pid) - cpu0) / max(result.requests, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    from tests.conftest import KEY_ENV, Fleet
    from tests.stack import MockThread, running

    commit = git_describe()
    print("writer…", flush=True)
    batched = writer(args.records, AuditSettings().fsync_interval_s)
    every = writer(args.records // 5, 0.0)
    print(f"  {batched['written_per_s']:.0f} records/s written, {batched['synced_per_s']:.0f}/s fsynced", flush=True)

    mocks = MockThread()
    runs: dict[tuple[str, str], list[tuple[LoadResult, float]]] = {}
    try:
        fleet = Fleet(mocks)
        for mock in (fleet.primary, fleet.secondary, fleet.small):
            mock.max_recorded = 8
        base = Path(tempfile.mkdtemp(prefix="rungway-audit-bench-"))
        for p in (base / "on", base / "off"):
            p.mkdir()
        on_policy = fleet.policy(base / "on")
        off_policy = fleet.policy(base / "off", audit={"enabled": False})
        with running(on_policy, env=KEY_ENV) as on, running(off_policy, env=KEY_ENV) as off:
            stacks = {"on": on, "off": off}
            for stack in stacks.values():  # warm-up
                load_round(stack, stack.app_key, 1.0, args.connections)
            for rnd in range(args.rounds):
                for traffic, mode in (("tier0", "ok"), ("fallback", "status:503")):
                    fleet.reset()
                    fleet.primary.set_mode(mode)
                    order = ["on", "off"] if rnd % 2 == 0 else ["off", "on"]
                    for name in order:
                        stack = stacks[name]
                        result, cpu_us = load_round(stack, stack.app_key, args.seconds, args.connections)
                        runs.setdefault((traffic, name), []).append((result, cpu_us))
                        print(
                            f"round {rnd} {traffic:8s} audit {name:3s}: {result.rps:6.0f} req/s  p50 "
                            f"{result.p50_ms:5.1f} ms  p99 {result.p99_ms:6.1f} ms  worker {cpu_us:5.0f} µs/req  "
                            f"errors {result.errors}",
                            flush=True,
                        )
            fleet.reset()
            audit_files = list((on.dir / "audit").glob("*.jsonl"))
            records_on = sum(len(p.read_bytes().splitlines()) for p in audit_files)
    finally:
        mocks.close()

    def med(traffic: str, name: str, pick: Any) -> float:
        return float(statistics.median(pick(r) for r in runs[(traffic, name)]))

    rows = []
    for traffic in ("tier0", "fallback"):
        cells = []
        for label, pick in (
            ("req/s", lambda r: r[0].rps),
            ("p50 ms", lambda r: r[0].p50_ms),
            ("p99 ms", lambda r: r[0].p99_ms),
            ("worker µs/req", lambda r: r[1]),
        ):
            on_v, off_v = med(traffic, "on", pick), med(traffic, "off", pick)
            cells.append((label, on_v, off_v))
        for label, on_v, off_v in cells:
            rows.append([traffic, label, f"{on_v:.1f}", f"{off_v:.1f}", f"{on_v / off_v:.3f}"])
    errors = sum(r[0].errors for rs in runs.values() for r in rs)
    text = f"""# Audit trail (A1): writer throughput and request-path cost

`python -m bench.audit --records {args.records} --rounds {args.rounds} --seconds {args.seconds:g} --connections {args.connections}`
at {commit}, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, {cpu_count()} CPUs shared with other work
(medians over rounds; the machine is shared, so read ratios of the same run, not absolute figures).

## Writer (runtime/auditlog.py), one chain, one submitting thread

| fsync | records | written/s (kernel has them) | fsynced/s | submit() µs (the request path's cost) | bytes/record | verify |
|---|---|---|---|---|---|---|
| every {AuditSettings().fsync_interval_s:g}s (default) | {batched["records"]:.0f} | {batched["written_per_s"]:.0f} | {batched["synced_per_s"]:.0f} | {batched["submit_us"]:.1f} | {batched["bytes_per_record"]:.0f} | {"intact" if batched["intact"] else "BROKEN"} |
| after every batch | {every["records"]:.0f} | {every["written_per_s"]:.0f} | {every["synced_per_s"]:.0f} | {every["submit_us"]:.1f} | {every["bytes_per_record"]:.0f} | {"intact" if every["intact"] else "BROKEN"} |

## Request path, audit on vs off (two `rungway up` stacks, alternating rounds, same run)

{args.connections} closed-loop keep-alive connections, {args.seconds:g}s per round; tier0: the primary answers;
fallback: the primary answers 503 (two trips, a hop, a tier change: four records a request).
{records_on} records written by the "on" stack; {errors} non-2xx answers in all.

{md_table(["traffic", "measure", "audit on", "audit off", "ratio on/off"], rows)}
"""
    kept = AUDIT_MD.read_text().partition(NOTES_MARKER)[2] if AUDIT_MD.exists() else ""
    AUDIT_MD.write_text(f"{text}\n{NOTES_MARKER}{kept or chr(10)}")
    print(text, flush=True)


if __name__ == "__main__":
    main()
