"""Load shedding under a burst: a worker with a small max_in_flight, a provider slow enough that
requests stay in flight, and bursts of several times the worker's capacity at once.

What it measures, as the client sees it: how fast the excess is answered (503 + Retry-After,
the shed latency's p50 / p95), and that the admitted requests still complete in about the
provider's delay. The end-to-end test (tests/e2e/test_load.py) runs a short version with
generous bounds; `python -m bench.shed` runs more waves and prints the precise figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .procs import envoy_admin

HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Outcome:
    status: int
    retry_after: str | None
    latency_s: float
    body: bytes


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def burst(session: aiohttp.ClientSession, url: str, key: str, n: int, model: str = "gpt-4o") -> list[Outcome]:
    """n requests at once, as the holder of `key`; each one's status, Retry-After and latency."""
    body = json.dumps({"model": model, "messages": HI}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    gate = asyncio.Event()

    async def one() -> Outcome:
        await gate.wait()
        started = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
            data = await response.read()
            return Outcome(response.status, response.headers.get("retry-after"), time.perf_counter() - started, data)

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)  # every task waits at the gate
    gate.set()
    return list(await asyncio.gather(*tasks))


async def _warm(session: aiohttp.ClientSession, url: str, key: str) -> None:
    """Open a connection (an authenticated pass-through: the model list)."""
    async with session.get(url + "/v1/models", headers={"authorization": f"Bearer {key}"}) as response:
        await response.read()


async def waves(url: str, key: str, n: int, count: int, pause_s: float) -> list[Outcome]:
    """`count` bursts of n, each after the previous one's admitted requests are done."""
    out: list[Outcome] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Open the connections first: a burst measures Rungway, not TCP handshakes.
        await asyncio.gather(*(_warm(session, url, key) for _ in range(n)))
        for _ in range(count):
            out += await burst(session, url, key, n)
            await asyncio.sleep(pause_s)
    return out


async def one_by_one(url: str, key: str, limit: int, n: int) -> list[Outcome]:
    """The worker held full by `limit` slow requests; then n requests one after another: each
    one's shed latency without a burst's queueing in front of it."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(_warm(session, url, key) for _ in range(limit + 1)))
        holding = asyncio.create_task(burst(session, url, key, limit))
        await asyncio.sleep(0.2)  # their tries have started
        out = []
        for _ in range(n):
            out += await burst(session, url, key, 1)
        await holding
    return out


@dataclass(frozen=True)
class Summary:
    requests: int
    admitted: int
    shed: int
    other: int
    shed_p50_ms: float
    shed_p95_ms: float
    shed_max_ms: float
    admitted_p50_s: float
    admitted_max_s: float

    def text(self, delay_s: float, limit: int) -> str:
        return (
            f"{self.requests} requests in bursts of {5 * limit} at max_in_flight={limit}, provider delay "
            f"{delay_s:g} s: {self.admitted} admitted, {self.shed} shed, {self.other} other\n"
            f"shed (503 + Retry-After): p50 {self.shed_p50_ms:.1f} ms, p95 {self.shed_p95_ms:.1f} ms, "
            f"max {self.shed_max_ms:.1f} ms\n"
            f"admitted (200): p50 {self.admitted_p50_s:.3f} s, max {self.admitted_max_s:.3f} s"
        )


def summarise(outcomes: list[Outcome]) -> Summary:
    shed = [o.latency_s * 1000 for o in outcomes if o.status == 503 and o.retry_after is not None]
    admitted = [o.latency_s for o in outcomes if o.status == 200]
    return Summary(
        requests=len(outcomes),
        admitted=len(admitted),
        shed=len(shed),
        other=len(outcomes) - len(shed) - len(admitted),
        shed_p50_ms=quantile(shed, 0.5),
        shed_p95_ms=quantile(shed, 0.95),
        shed_max_ms=max(shed, default=float("nan")),
        admitted_p50_s=quantile(admitted, 0.5),
        admitted_max_s=max(admitted, default=float("nan")),
    )


def envoy_counters(admin_socket: str, name_filter: str) -> dict[str, int]:
    """Envoy's counters whose name matches `name_filter` (e.g. ext_proc message timeouts), from
    its admin socket."""
    data = envoy_admin(admin_socket, f"/stats?format=json&filter={name_filter}").json()
    return {s["name"]: s["value"] for s in data.get("stats", []) if isinstance(s.get("value"), int)}


def shedding_policy(base: dict[str, Any], limit: int) -> dict[str, Any]:
    return {**base, "max_in_flight": limit, "shed_retry_after_s": 1}


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=4, help="the worker's max_in_flight")
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument("--delay", type=float, default=1.0, help="the provider's delay, seconds")
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        fleet.primary.set_mode(f"delay:{args.delay:g}")
        policy = shedding_policy(fleet.policy(Path(tempfile.mkdtemp())), args.limit)
        with running(policy, env=KEY_ENV) as stack:
            outcomes = asyncio.run(waves(stack.base_url, stack.app_key, 5 * args.limit, args.waves, 0.2))
            single = asyncio.run(one_by_one(stack.base_url, stack.app_key, args.limit, 50))
            stats = envoy_counters(stack.envoy_admin_socket, "http.rungway.ext_proc")
        print(summarise(outcomes).text(args.delay, args.limit))
        alone = summarise(single)
        print(
            f"one at a time while full ({alone.shed} shed): p50 {alone.shed_p50_ms:.1f} ms, "
            f"p95 {alone.shed_p95_ms:.1f} ms, max {alone.shed_max_ms:.1f} ms"
        )
        print("Envoy's decide ext_proc counters:", {k: v for k, v in stats.items() if v})
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
