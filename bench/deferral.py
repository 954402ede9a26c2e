"""The deferral queue's figures through real Envoy: how fast deferrable requests are accepted
during an outage (stored with fsync before each 202), how fast the queue drains once the
provider recovers, and how long after the recovery the first replayed answer is stored.

`python -m bench.deferral` (defaults: 400 requests, 16 at a time, 2 workers). Not asserted in
any test: tests/e2e/test_deferral.py checks the behaviour, this measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path

import aiohttp

from .shed import quantile

HI = [{"role": "user", "content": "hi"}]


async def accept(url: str, key: str, n: int, concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    """n deferrable requests, `concurrency` at a time: wall time, 202 latencies, status counts."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}", "x-rungway-task": "batch"}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": f"job {i}"}]})
            started = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                codes[r.status] = codes.get(r.status, 0) + 1
                if r.status == 202:
                    latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, codes


def series(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def drain(admin: str, accepted: float, timeout: float = 600) -> tuple[float, float]:
    """Seconds from now (the provider's recovery) to the first answered replay, and to the last."""
    first = None
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < timeout:
            async with session.get(admin + "/metrics") as r:
                text = await r.text()
            answered = series(text, "rungway_deferred_replays_total", outcome="answered")
            now = time.perf_counter() - started
            if answered >= 1 and first is None:
                first = now
            if answered >= accepted:
                assert first is not None
                return first, now
            await asyncio.sleep(0.02)
    raise RuntimeError("the queue did not drain")


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.e2e.test_deferral import deferral_policy, outage
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replays", type=int, default=16, help="deferral.replays_in_flight")
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        tmp = Path(tempfile.mkdtemp())
        policy = deferral_policy(fleet, tmp, replays_in_flight=args.replays, max_per_tenant=100_000)
        with running(policy, env=KEY_ENV, workers=args.workers) as stack:
            outage(stack, fleet)  # the circuit is open: one task accepted
            wall, latencies, codes = asyncio.run(accept(stack.base_url, stack.app_key, args.n, args.concurrency))
            accepted = codes.get(202, 0)
            print(
                f"accept: {args.n} deferrable requests, {args.concurrency} at a time, {args.workers} workers: "
                f"{accepted} accepted (202) in {wall:.2f} s = {accepted / wall:.0f}/s; other {codes}\n"
                f"  202 latency (stored + fsynced first): p50 {1000 * quantile(latencies, 0.5):.1f} ms, "
                f"p95 {1000 * quantile(latencies, 0.95):.1f} ms, max {1000 * max(latencies):.1f} ms"
            )
            recovery = policy["health"]
            fleet.primary.set_mode("ok")
            first, last = asyncio.run(drain(stack.admin_url, accepted + 1))
            print(
                f"drain: {accepted + 1} tasks, replays_in_flight {args.replays}: all answered {last:.2f} s after "
                f"the recovery; {(accepted + 1) / (last - first):.0f}/s once replaying\n"
                f"  first replayed answer stored {first:.2f} s after the provider recovered "
                f"(recovery_probe_s {recovery['recovery_probe_s']}, open_s {recovery['circuit']['open_s']}, "
                f"half_open_successes {recovery['circuit']['half_open_successes']}, "
                f"replay_every_s {policy['deferral']['replay_every_s']})"
            )
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
