"""Re-runs on recovery (E3) through real Envoy: what keeping degraded answers costs the requests
that are kept (against a tenant whose answers are not), and how fast they are re-run on tier 0
once the primary recovers.

`python -m bench.review` (defaults: 200 degraded requests per tenant, 8 at a time, 2 workers).
Not asserted in any test: tests/e2e/test_review.py checks the behaviour, this measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from .deferral import series
from .shed import quantile


async def degraded(url: str, key: str, n: int, concurrency: int) -> tuple[list[float], dict[int, int]]:
    """n requests answered by a fallback, `concurrency` at a time: latencies and status counts."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": f"question {i}"}]})
            started = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                codes[r.status] = codes.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, codes


async def rerun_all(admin: str, kept: float, timeout: float = 600) -> tuple[float, float]:
    """Seconds from now (the primary's recovery) to the first re-run kept, and to the last."""
    first = None
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < timeout:
            async with session.get(admin + "/metrics") as r:
                text = await r.text()
            done = series(text, "rungway_reviews", state="done")
            now = time.perf_counter() - started
            if done >= 1 and first is None:
                first = now
            if done >= kept:
                assert first is not None
                return first, now
            await asyncio.sleep(0.05)
    raise RuntimeError("the reviews were not all re-run")


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.e2e.test_review import review_policy
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reruns", type=int, default=4, help="review.reruns_in_flight")
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        tmp = Path(tempfile.mkdtemp())
        policy = review_policy(fleet, tmp)
        policy["review"].update(reruns_in_flight=args.reruns, max_per_tenant=100_000)
        with running(policy, env=KEY_ENV, workers=args.workers) as stack:
            plain = stack.issue_key("plain")
            time.sleep(1.5)  # the workers take the changed key store
            fleet.primary.set_mode("status:503")
            asyncio.run(degraded(stack.base_url, plain, 20, 2))  # the circuit opens: fallbacks from here
            for name, key in (("plain (not kept)", plain), ("app (kept)", stack.app_key), ("plain (not kept)", plain)):
                latencies, codes = asyncio.run(degraded(stack.base_url, key, args.n, args.concurrency))
                print(
                    f"{name:<17} {args.n} degraded answers, {args.concurrency} at a time: p50 "
                    f"{1000 * quantile(latencies, 0.5):.1f} ms, p95 {1000 * quantile(latencies, 0.95):.1f} ms; {codes}"
                )
            time.sleep(1.0)  # the workers write kept answers off the request path
            with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            kept = series(text, "rungway_reviews_kept_total", tenant="app", outcome="kept")
            others = {o: series(text, "rungway_reviews_kept_total", outcome=o) for o in ("full", "too_large", "failed")}
            print(f"kept {kept:.0f} of the app's {args.n}; not kept: {others}")
            fleet.primary.set_mode("ok")
            first, last = asyncio.run(rerun_all(stack.admin_url, kept))
            health = policy["health"]
            print(
                f"re-run: {kept:.0f} kept answers, reruns_in_flight {args.reruns}: all re-run on tier 0 "
                f"{last:.2f} s after the recovery, {kept / max(last - first, 1e-9):.0f}/s once re-running\n"
                f"  first re-run kept {first:.2f} s after the primary recovered "
                f"(recovery_probe_s {health['recovery_probe_s']}, open_s {health['circuit']['open_s']}, "
                f"rerun_every_s {policy['review']['rerun_every_s']})"
            )
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
