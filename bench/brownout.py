"""Brownout replay: the write-ups' provider brownout against three set-ups, same load.

The primary's p95 climbs from 2.1 s toward 38 s and 31 % of its answers are 503s (after a
healthy start: a false alarm there sends traffic away for nothing); the fallback provider stays
healthy. Latencies are lognormal (sigma `--jitter`, 0.45 by default: p95 / median = 2.1), as an
LLM provider's are. Open-loop load (requests arrive at a fixed rate whatever the answers do),
measured as the client sees it:

* `direct`: the app calls the primary itself (no Envoy, no Rungway) — the outage as it was;
* `ladder`: Rungway's ladder with its health board off: every request starts at the primary;
* `circuits`: the same with circuits, scores and probes on.

Besides hard failures and the p50/p95 of every request, it reports the healthy phase's share
served by the fallback (false alarms), the p95 of the brownout's requests, and the share of
them that waited out the primary's whole per-try budget (10 s) before the fallback answered.

`python -m bench.brownout` runs it at full scale (60 s healthy, then a 108 s brownout: ~9 min)
and writes bench/BROWNOUT.md; `--scale 0.1` compresses every time (latencies, timeouts,
windows) ten-fold. The end-to-end test runs the compressed replay. `BROWNOUT_TRACE=1` prints one
line per request (set-up, sent at, took, served by) to see where a tail comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from extproc.demo.mock_provider import MockProvider
from extproc.runtime.keyfile import add_key

REPO = Path(__file__).resolve().parent.parent
PROBE_TEXT = "Reply with: ok"
HI = [{"role": "user", "content": "Where is my order #1234?"}]
PRIMARY_BUDGET_S: Final = 10.0  # the primary rung's per-try timeout, at full scale
HEALTHY_P95_S: Final = 2.1
SICK_P95_S: Final = 38.0
FALLBACK_P95_S: Final = 1.5


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


@dataclass
class Result:
    variant: str
    requests: int
    hard_failures: int
    p50_s: float
    p95_s: float
    attempts_per_request: float
    primary_share: float
    primary_calls_per_request: float = 1.0
    healthy_fallback_share: float | None = None  # of the healthy phase's requests (None: no ladder)
    stress_p95_s: float = 0.0  # p95 of the requests sent during the brownout
    full_budget_share: float = 0.0  # of the brownout's requests: waited out the primary's budget

    @property
    def failure_rate(self) -> float:
        return self.hard_failures / self.requests if self.requests else 0.0

    def row(self, scale: float) -> str:
        healthy = "-" if self.healthy_fallback_share is None else f"{self.healthy_fallback_share:.1%}"
        return (
            f"| {self.variant} | {self.requests} | {self.failure_rate:.1%} | {self.p50_s / scale:.2f} s "
            f"| {self.p95_s / scale:.2f} s | {self.attempts_per_request:.2f} | {self.primary_share:.0%} "
            f"| {healthy} | {self.stress_p95_s / scale:.2f} s | {self.full_budget_share:.1%} "
            f"| {self.primary_calls_per_request:.2f} |"
        )


def policy(primary: MockProvider, fallback: MockProvider, *, scale: float, circuits: bool) -> dict[str, Any]:
    return {
        "version": "brownout-replay",
        "envoy_ejection": None,  # compare Rungway's own board with and without, nothing else
        "providers": {
            "primary": {"base_url": primary.url, "dialect": "openai"},
            "fallback": {"base_url": fallback.url, "dialect": "anthropic"},
        },
        "ladders": {
            "main": [
                {"provider": "primary", "timeout_s": PRIMARY_BUDGET_S * scale},
                {"provider": "fallback", "model": "claude-fallback", "timeout_s": 30 * scale},
            ]
        },
        "models": [{"match": "*", "ladder": "main"}],
        "route_timeout_s": 120 * scale,
        "health": {
            "enabled": circuits,
            "window_s": 60 * scale,
            "latency_slo_s": 60 * scale,
            "latency_floor_s": 0.5 * scale,
            "probe_interval_s": 0,
            "recovery_probe_s": 5 * scale,
            "circuit": {"window_s": 60 * scale, "open_s": 30 * scale, "probe_bound_s": 30 * scale},
        },
    }


async def _start_up(policy_data: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """`rungway up` on the policy: its process, listen port, and a client key."""
    policy_path = workdir / "policy.yaml"
    key_store = workdir / "keys.json"
    key, _ = add_key(key_store, "replay")
    policy_path.write_text(yaml.safe_dump({**policy_data, "clients": {"key_store": str(key_store)}}, sort_keys=False))
    state = workdir / "state.json"
    state.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "extproc.cli", "up", "--policy", str(policy_path),
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--access-log", "/dev/null",
            "--state-file", str(state), "--log-level", "warning",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not state.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("rungway up did not start")
        await asyncio.sleep(0.05)
    return process, int(json.loads(state.read_text())["listen_port"]), key


async def replay(
    variant: str, *, scale: float, duration: float, rate: float, healthy: float | None = None, jitter: float = 0.45
) -> Result:
    """`duration` and `healthy` (the healthy start; default a tenth) in compressed seconds."""
    primary = MockProvider("primary", "openai", token_interval=0, jitter=jitter, seed=1)
    fallback = MockProvider("fallback", "anthropic", token_interval=0, jitter=jitter, seed=2)
    await primary.start()
    await fallback.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        headers: dict[str, str] = {}
        if variant == "direct":
            base = primary.url
        else:
            workdir = Path(tempfile.mkdtemp(prefix="rungway-brownout-"))
            process, port, key = await _start_up(
                policy(primary, fallback, scale=scale, circuits=variant == "circuits"), workdir
            )
            base = f"http://127.0.0.1:{port}"
            headers = {"authorization": f"Bearer {key}"}
        well = HEALTHY_P95_S * scale
        primary.set_mode(f"delay:{well}")
        fallback.set_mode(f"delay:{FALLBACK_P95_S * scale}")
        latencies: list[float] = []
        failures = 0
        total = int(duration * rate)
        brownout_from = int((duration * 0.1 if healthy is None else healthy) * rate)
        healthy_fallback = 0  # healthy-phase requests the fallback served
        stress: list[float] = []  # latencies of the requests sent during the brownout

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal failures, healthy_fallback
            started = time.monotonic()
            served_by = "failed"
            try:
                async with session.post(
                    base + "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, headers=headers
                ) as response:
                    body = await response.read()
                    served_by = response.headers.get("x-rungway-served-by", "-")
                    if response.status != 200:
                        failures += 1
                        if os.environ.get("BROWNOUT_DEBUG"):
                            print(variant, response.status, dict(response.headers).get("x-rungway-reason"), body[:150])
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
            latencies.append(time.monotonic() - started)
            if i < brownout_from:
                healthy_fallback += served_by.startswith("fallback/")
            else:
                stress.append(latencies[-1])
            if os.environ.get("BROWNOUT_TRACE"):  # one line per request: sent at, took, served by
                print(variant, f"{started - start:.2f}", f"{time.monotonic() - started:.3f}", served_by)

        timeout = aiohttp.ClientTimeout(total=120 * scale + 5)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = []
            start = time.monotonic()
            for i in range(total):
                if i == brownout_from:
                    span = (total - brownout_from) / rate
                    primary.set_mode(f"brownout:0.31:{well}:{SICK_P95_S * scale}:{span}")
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one(session, i)))
            await asyncio.gather(*tasks)

        def client_calls(mock: MockProvider) -> int:
            return sum(1 for r in mock.requests if PROBE_TEXT.encode() not in r.body)

        primary_calls, fallback_calls = client_calls(primary), client_calls(fallback)
        latencies.sort()
        n = len(latencies)
        budget = PRIMARY_BUDGET_S * scale
        return Result(
            variant=variant,
            requests=n,
            hard_failures=failures,
            p50_s=latencies[n // 2],
            p95_s=p95(latencies),
            attempts_per_request=(primary_calls + fallback_calls) / n,
            primary_share=1.0 if variant == "direct" else 1 - fallback_calls / n if n else 0.0,
            primary_calls_per_request=primary_calls / n,
            healthy_fallback_share=None if variant == "direct" else healthy_fallback / max(1, brownout_from),
            stress_p95_s=p95(stress),
            # Directly, a request waits as long as the primary takes: past the budget counts too.
            full_budget_share=sum(1 for took in stress if took >= budget) / max(1, len(stress)),
        )
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        await primary.stop()
        await fallback.stop()


async def run_all(
    scale: float, duration: float, rate: float, healthy: float | None = None, jitter: float = 0.45
) -> list[Result]:
    return [
        await replay(v, scale=scale, duration=duration, rate=rate, healthy=healthy, jitter=jitter)
        for v in ("direct", "ladder", "circuits")
    ]


def report(
    results: list[Result], scale: float, duration: float, rate: float, healthy: float | None, jitter: float
) -> str:
    lines = [
        "| set-up | requests | hard failures | p50 | p95 | provider calls / request | served by the primary "
        "| healthy phase: served by the fallback | brownout: p95 | brownout: waited out the primary's budget "
        "| primary calls / request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(r.row(scale) for r in results),
    ]
    well = duration * 0.1 if healthy is None else healthy
    spread = f"lognormal latencies (sigma {jitter:g})" if jitter else "constant latencies"
    note = (
        f"{duration / scale:.0f} s replay at {rate * scale:.1f} requests/s (open loop), times shown at full scale"
        + (f" (run compressed {1 / scale:.0f}x)" if scale != 1 else "")
        + f", {spread}. Primary: healthy for {well / scale:.0f} s (p95 {HEALTHY_P95_S:g} s), then its p95 "
        f"climbing to {SICK_P95_S:g} s over {(duration - well) / scale:.0f} s with 31 % 503s; fallback (another "
        f"provider, translated): healthy, p95 {FALLBACK_P95_S:g} s. The primary rung's per-try budget is "
        f"{PRIMARY_BUDGET_S:g} s."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="compress every time by this factor (0.1 = 10x)")
    parser.add_argument("--duration", type=float, default=168.0, help="replay length at full scale, seconds")
    parser.add_argument("--healthy", type=float, default=60.0, help="healthy start at full scale, seconds")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second at full scale")
    parser.add_argument("--jitter", type=float, default=0.45, help="sigma of the lognormal latencies (0: constant)")
    args = parser.parse_args()
    duration = args.duration * args.scale
    healthy = args.healthy * args.scale
    rate = args.rate / args.scale
    results = asyncio.run(run_all(args.scale, duration, rate, healthy, args.jitter))
    text = report(results, args.scale, duration, rate, healthy, args.jitter)
    print(text)
    if args.scale == 1.0:
        out = REPO / "bench" / "BROWNOUT.md"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out.write_text(f"# Brownout replay\n\nRun {stamp} · `python -m bench.brownout` · 2 vCPU, noisy\n\n{text}")
        print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
