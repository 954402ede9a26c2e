"""The deferral queue's figures through real Envoy: how fast deferrable requests are accepted
during an outage (stored with fsync before each 202), how fast the queue drains once the
provider recovers, and how long after the recovery the first replayed answer is stored.

`python -m bench.deferral` (defaults: 400 requests, 16 at a time, 2 workers, the SQLite store);
`--redis always|everysec|no` keeps the queue in a redis-server instead (the fleet's store, with
that `appendfsync`). Not asserted in any test: tests/e2e/test_deferral.py and
test_fleet_deferral.py check the behaviour, this measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

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


async def drain(admins: list[str], accepted: float, timeout: float = 600) -> tuple[float, float]:
    """Seconds from now (the provider's recovery) to the first answered replay, and to the last
    (answered by any of the pods whose admin URLs are given)."""
    first = None
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < timeout:
            answered = 0.0
            for admin in admins:
                async with session.get(admin + "/metrics") as r:
                    answered += series(await r.text(), "rungway_deferred_replays_total", outcome="answered")
            now = time.perf_counter() - started
            if answered >= 1 and first is None:
                first = now
            if answered >= accepted:
                assert first is not None
                return first, now
            await asyncio.sleep(0.02)
    raise RuntimeError("the queue did not drain")


async def accept_on(stacks: list[Any], n: int, concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    """`accept` on every pod at once, the requests and clients split evenly between them."""
    started = time.perf_counter()
    runs = await asyncio.gather(
        *(accept(s.base_url, s.app_key, n // len(stacks), concurrency // len(stacks)) for s in stacks)
    )
    codes: dict[int, int] = {}
    for _, _, c in runs:
        for code, count in c.items():
            codes[code] = codes.get(code, 0) + count
    return time.perf_counter() - started, [x for _, lat, _ in runs for x in lat], codes


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.e2e.test_deferral import deferral_policy, outage
    from tests.stack import MockThread, RedisServer, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replays", type=int, default=16, help="deferral.replays_in_flight")
    parser.add_argument("--redis", choices=["always", "everysec", "no"], help="the Redis store, with this appendfsync")
    parser.add_argument("--pods", type=int, default=1, help="`rungway up` stacks sharing the Redis store")
    args = parser.parse_args()
    if args.pods > 1 and args.redis is None:
        parser.error("--pods needs --redis: SQLite is one pod's store")
    mocks = MockThread()
    tmp = Path(tempfile.mkdtemp())
    server = None
    if args.redis is not None:
        server = RedisServer("--appendonly", "yes", "--appendfsync", args.redis, "--dir", str(tmp))
        server.start()
    try:
        fleet = Fleet(mocks)
        queue = {"redis": server.url} if server is not None else {}
        policy = deferral_policy(fleet, tmp, replays_in_flight=args.replays, max_per_tenant=100_000, **queue)
        env = KEY_ENV
        if server is not None:
            policy["health"]["bus"] = server.url  # a fleet: the pods see one health picture
            env = {**KEY_ENV, "RUNGWAY_BUS_SECRET": "bench-fleet-secret-0123456789abcdef"}
        store = f"Redis (appendfsync {args.redis})" if server is not None else "SQLite (fsync)"
        print(f"store: {store}, {args.pods} pod(s)")
        with contextlib.ExitStack() as pods:
            stacks = [pods.enter_context(running(policy, env=env, workers=args.workers)) for _ in range(args.pods)]
            outage(stacks[0], fleet)  # the circuit is open: one task accepted
            wall, latencies, codes = asyncio.run(accept_on(stacks, args.n, args.concurrency))
            accepted = codes.get(202, 0)
            print(
                f"accept: {args.n} deferrable requests, {args.concurrency} at a time, {args.pods} x {args.workers} "
                f"workers: {accepted} accepted (202) in {wall:.2f} s = {accepted / wall:.0f}/s; other {codes}\n"
                f"  202 latency (stored first): p50 {1000 * quantile(latencies, 0.5):.1f} ms, "
                f"p95 {1000 * quantile(latencies, 0.95):.1f} ms, max {1000 * max(latencies):.1f} ms"
            )
            recovery = policy["health"]
            fleet.primary.set_mode("ok")
            first, last = asyncio.run(drain([s.admin_url for s in stacks], accepted + 1))
            print(
                f"drain: {accepted + 1} tasks, replays_in_flight {args.replays} per pod: all answered {last:.2f} s "
                f"after the recovery; {(accepted + 1) / (last - first):.0f}/s once replaying\n"
                f"  first replayed answer stored {first:.2f} s after the provider recovered "
                f"(recovery_probe_s {recovery['recovery_probe_s']}, open_s {recovery['circuit']['open_s']}, "
                f"half_open_successes {recovery['circuit']['half_open_successes']}, "
                f"replay_every_s {policy['deferral']['replay_every_s']})"
            )
    finally:
        mocks.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
