"""Tenant isolation on a fallback rung (T3): a noisy tenant at 10 x its share against a failing
primary, and what a quiet tenant on the same ladder still gets.

The primary answers every request 503, so (once its circuit opened) everything lands on the
fallback rung, a provider that serves `capacity` requests at once and answers 429 beyond (a
finite provider: the mock's `max_concurrent`). The rung's policy `capacity` matches it, with a
tenant share of one half. Phases, each `duration` seconds:
  baseline   quiet alone, `quiet` clients in a loop;
  contended  noisy with 10 x its share of clients in a loop (it honours Retry-After, as the
             official SDKs do), and quiet as in the baseline;
  control    (bench only) the same contended load on a policy without `capacity`: what quiet
             gets when nothing keeps the noisy tenant off the fallback.
Reported: quiet's success rate and p50 / p99 latency per phase, the contended/baseline ratios,
and what noisy got (served, 429, 503). tests/e2e/test_isolation.py runs a short version and
asserts the success-rate property; `python -m bench.isolation` measures longer and prints the
figures for bench/ISOLATION.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .shed import quantile

MODEL = "iso-model"
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Outcome:
    status: int
    retry_after: str | None
    latency_s: float
    body: bytes


@dataclass(frozen=True)
class Load:
    capacity: int = 8  # the fallback's concurrent requests (provider and policy)
    quiet: int = 3  # quiet's clients (within its share)
    delay_s: float = 0.2  # the fallback's answer time
    duration_s: float = 6.0
    workers: int = 1
    # Baseline and contended phases alternate this many times; each side's figures pool its
    # phases (a loaded machine drifts: alternating spreads the drift over both sides).
    rounds: int = 1
    # Also a phase with noisy at exactly its share: what noisy's legitimate use of its share
    # costs quiet, apart from what its excess costs.
    at_share: bool = False

    @property
    def share(self) -> int:
        return self.capacity // 2

    @property
    def noisy(self) -> int:
        return 10 * self.share


def isolation_policy(base: dict[str, Any], load: Load, *, limited: bool = True) -> dict[str, Any]:
    """The test fleet's policy plus ladder `iso`: the primary, then the fallback with `capacity`."""
    fallback: dict[str, Any] = {"provider": "secondary", "model": "claude-fallback"}
    if limited:
        fallback["capacity"] = {"max_in_flight": load.capacity, "tenant_share": 0.5}
    return {
        **base,
        # The primary's circuit opens after 5 failures and stays open for the run; no probes.
        "health": {"enabled": True, "probe_interval_s": 0, "circuit": {"open_s": 600}},
        "ladders": {**base["ladders"], "iso": [{"provider": "primary", "attempts": 1}, fallback]},
        "models": [{"match": "iso-*", "ladder": "iso"}, *base["models"]],
    }


async def clients(url: str, key: str, n: int, until: float) -> list[Outcome]:
    """n clients, each sending one request after another until `until` (perf_counter); after a
    429 or 503 a client waits the Retry-After first."""
    body = json.dumps({"model": MODEL, "messages": HI, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    out: list[Outcome] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                    data = await response.read()
                    retry_after = response.headers.get("retry-after")
                    out.append(Outcome(response.status, retry_after, time.perf_counter() - started, data))
                if response.status in (429, 503):
                    await asyncio.sleep(min(float(retry_after or 1), until - time.perf_counter()))

        await asyncio.gather(*(client() for _ in range(n)))
    return out


@dataclass(frozen=True)
class Summary:
    requests: int
    served: int
    limited: int  # 429
    shed: int  # 503
    p50_s: float
    p95_s: float
    p99_s: float

    @property
    def success(self) -> float:
        return self.served / self.requests if self.requests else float("nan")

    def text(self) -> str:
        return (
            f"{self.requests} requests, success {self.success:.1%} ({self.limited} x 429, {self.shed} x 503), "
            f"p50 {self.p50_s * 1000:.0f} ms, p95 {self.p95_s * 1000:.0f} ms, p99 {self.p99_s * 1000:.0f} ms"
        )


def summarise(outcomes: list[Outcome]) -> Summary:
    served = [o.latency_s for o in outcomes if o.status == 200]
    return Summary(
        requests=len(outcomes),
        served=len(served),
        limited=sum(1 for o in outcomes if o.status == 429),
        shed=sum(1 for o in outcomes if o.status == 503),
        p50_s=quantile(served, 0.5),
        p95_s=quantile(served, 0.95),
        p99_s=quantile(served, 0.99),
    )


async def warm(url: str, key: str) -> None:
    """Until the primary's circuit is open: requests that land on the fallback without a try
    on the primary (x-rungway-attempts 1)."""
    body = json.dumps({"model": MODEL, "messages": HI, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                await response.read()
                if response.status == 200 and response.headers.get("x-rungway-attempts") == "1":
                    return
    raise RuntimeError("the primary's circuit never opened")


async def baseline(url: str, quiet_key: str, load: Load) -> list[Outcome]:
    return await clients(url, quiet_key, load.quiet, time.perf_counter() + load.duration_s)


def _noisy(url: str, key: str, n: int, duration_s: float) -> list[Outcome]:
    return asyncio.run(clients(url, key, n, time.perf_counter() + duration_s))


def contended(
    url: str, quiet_key: str, noisy_key: str, load: Load, noisy_clients: int
) -> tuple[list[Outcome], list[Outcome]]:
    """Noisy first (it holds the fallback when quiet arrives), quiet half a second later.
    Noisy's clients run in a process of their own: in this one they would slow the mock
    providers and quiet's client (one GIL), and that is not what is measured."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(time.sleep, 0).result()  # the process is up before the clock starts
        noisy = pool.submit(_noisy, url, noisy_key, noisy_clients, load.duration_s + 0.5)
        time.sleep(0.5)
        quiet = asyncio.run(clients(url, quiet_key, load.quiet, time.perf_counter() + load.duration_s))
        return quiet, noisy.result()


@dataclass(frozen=True)
class Result:
    baseline: Summary
    quiet: Summary
    noisy: Summary
    noisy_outcomes: list[Outcome]
    provider_over_limit: int  # the fallback's own 429s
    metrics: str
    capacity_after: dict[str, Any]  # /status's `capacity` once the load is over
    at_share: Summary | None = None  # quiet beside noisy at its share (Load.at_share)

    def text(self, load: Load) -> str:
        return (
            f"fallback capacity {load.capacity} (tenant share 1/2 = {load.share}), answer time "
            f"{load.delay_s:g} s, {load.workers} worker(s), {load.rounds} x {load.duration_s:g} s per side\n"
            f"  quiet alone ({load.quiet} clients):        {self.baseline.text()}\n"
            + (
                f"  quiet beside noisy at its share ({load.share} clients): {self.at_share.text()}\n"
                f"  p95 ratio to it {self.quiet.p95_s / self.at_share.p95_s:.3f}, "
                f"p99 ratio to it {self.quiet.p99_s / self.at_share.p99_s:.3f}\n"
                if self.at_share is not None
                else ""
            )
            + f"  quiet beside noisy:                 {self.quiet.text()}\n"
            f"  noisy ({load.noisy} clients = 10 x share): {self.noisy.text()}\n"
            f"  quiet success ratio {self.quiet.success / self.baseline.success:.3f}, "
            f"p95 ratio {self.quiet.p95_s / self.baseline.p95_s:.3f}, "
            f"p99 ratio {self.quiet.p99_s / self.baseline.p99_s:.3f}; "
            f"the fallback's own 429s: {self.provider_over_limit}"
        )


def run(stack: Any, secondary: Any, load: Load) -> Result:
    """Both phases on a running stack whose policy came from isolation_policy."""
    quiet_key, noisy_key = stack.issue_key("quiet"), stack.issue_key("noisy")
    time.sleep(1.5)  # the workers read the key store about once a second
    asyncio.run(warm(stack.base_url, quiet_key))
    secondary.max_concurrent = load.capacity
    secondary.over_limit = 0
    alone: list[Outcome] = []
    quiet: list[Outcome] = []
    noisy: list[Outcome] = []
    fair: list[Outcome] = []
    for i in range(load.rounds):
        if i:
            time.sleep(1.5)  # noisy's last requests end before the next baseline
        alone += asyncio.run(baseline(stack.base_url, quiet_key, load))
        if load.at_share:
            fair += contended(stack.base_url, quiet_key, noisy_key, load, load.share)[0]
        beside, flood = contended(stack.base_url, quiet_key, noisy_key, load, load.noisy)
        quiet += beside
        noisy += flood
    over_limit = secondary.over_limit
    time.sleep(0.2)  # the last tries' streams end just after their answers
    return Result(
        summarise(alone),
        summarise(quiet),
        summarise(noisy),
        noisy,
        over_limit,
        stack.metrics(),
        stack.status()["capacity"],
        summarise(fair) if load.at_share else None,
    )


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of baseline and contended")
    parser.add_argument("--no-control", action="store_true", help="skip the run without capacity")
    args = parser.parse_args()
    load = Load(duration_s=args.duration, workers=args.workers, rounds=args.rounds, at_share=True)
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        for limited in (True, False) if not args.no_control else (True,):
            fleet.reset()
            fleet.primary.set_mode("status:503")
            fleet.secondary.set_mode(f"delay:{load.delay_s:g}")
            policy = isolation_policy(fleet.policy(Path(tempfile.mkdtemp())), load, limited=limited)
            with running(policy, env=KEY_ENV, workers=load.workers) as stack:
                result = run(stack, fleet.secondary, load)
            print("with capacity:" if limited else "control, no capacity in the policy:")
            print(result.text(load))
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
