"""Requests held for an operator's approval, through real Envoy: how soon after an approval is
written the held requests are answered from the approved tier, and how close to its
`approval_wait_s` a hold without one ends in the refusal.

`python -m bench.hold` (defaults: 5 rounds of 16 held requests, 2 workers). Not asserted in any
test: tests/e2e/test_approval_hold.py checks the behaviour, this measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from extproc.routing.approval import approval
from extproc.runtime.approvals import grant, revoke

from .shed import quantile

HI: Any = [{"role": "user", "content": "hi"}]


async def held_status(session: aiohttp.ClientSession, admin: str, tenant: str) -> int:
    async with session.get(admin + "/status") as r:
        held: dict[str, int] = (await r.json())["held_for_approval"]
        return held.get(tenant, 0)


async def one(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, float, dict[str, Any]]:
    """A request's status, when it was answered (perf_counter) and its x-rungway headers."""
    body = json.dumps({"model": "gpt-4o", "messages": HI})
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
        await r.read()
        flags = {k: v for k, v in r.headers.items() if k.lower().startswith("x-rungway-")}
        return r.status, time.perf_counter(), flags


async def release_round(url: str, admin: str, key: str, store: Path, n: int) -> tuple[list[float], dict[int, int]]:
    """n requests held at once, then one approval: each one's seconds from the approval's write."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        requests = [asyncio.ensure_future(one(session, url, key)) for _ in range(n)]
        deadline = time.perf_counter() + 30
        while await held_status(session, admin, "clinic") < n:
            if time.perf_counter() > deadline:
                done = [r.result()[0] for r in requests if r.done()]
                held = await held_status(session, admin, "clinic")
                raise RuntimeError(f"the requests were never all held: {held} held, answered {done}")
            await asyncio.sleep(0.02)
        approved_at = time.perf_counter()
        grant(store, approval("clinic", 1, 600, time.time(), by="bench"))
        results = await asyncio.gather(*requests)
    revoke(store, "clinic", None)
    await asyncio.sleep(1.5)  # every worker follows a revocation within a second
    codes: dict[int, int] = {}
    for status, _, _ in results:
        codes[status] = codes.get(status, 0) + 1
    return [at - approved_at for _, at, _ in results], codes


async def expiry(url: str, key: str, n: int, wait_s: float) -> tuple[list[float], dict[int, int]]:
    """n requests of a tenant nobody approves: each one's seconds from sending to the refusal."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(session, url, key) for _ in range(n)))
    codes: dict[int, int] = {}
    for status, _, _ in results:
        codes[status] = codes.get(status, 0) + 1
    return [at - started - wait_s for _, at, _ in results], codes


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=16, help="requests held at once")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        tmp = Path(tempfile.mkdtemp())
        store = tmp / "approvals.json"
        policy = fleet.policy(
            tmp,
            health={
                "enabled": True,
                "min_samples": 3,
                "probe_interval_s": 0,
                "circuit": {"minimum_calls": 2, "consecutive_failures": 2, "open_s": 600, "half_open_successes": 1},
            },
            tenants={
                "clinic": {"approval_beyond_tier": 0, "approval_wait_s": 60, "approval_max_held": args.n},
                "ward": {"approval_beyond_tier": 0, "approval_wait_s": 2, "approval_max_held": args.n},
            },
            approvals=str(store),
        )
        with running(policy, env=KEY_ENV, workers=args.workers) as stack:
            keys = {name: stack.issue_key(name) for name in ("clinic", "ward", "agency")}
            time.sleep(1.5)  # the workers take the changed key store within a second
            fleet.primary.set_mode("status:503")
            with stack.openai_as(keys["agency"]) as agency:
                for _ in range(4):
                    agency.chat.completions.create(model="gpt-4o", messages=HI)  # the circuit opens
            released: list[float] = []
            codes: dict[int, int] = {}
            for _ in range(args.rounds):
                times, got = asyncio.run(release_round(stack.base_url, stack.admin_url, keys["clinic"], store, args.n))
                released += times
                for code, count in got.items():
                    codes[code] = codes.get(code, 0) + count
            print(
                f"release: {args.rounds} rounds of {args.n} held requests, {args.workers} workers: answers {codes}\n"
                f"  approval written -> answered from tier 1: p50 {1000 * quantile(released, 0.5):.0f} ms, "
                f"p95 {1000 * quantile(released, 0.95):.0f} ms, max {1000 * max(released):.0f} ms"
            )
            late, refused = asyncio.run(expiry(stack.base_url, keys["ward"], args.n, 2.0))
            print(
                f"expiry: {args.n} held requests, approval_wait_s 2, no approval: answers {refused}\n"
                f"  refusal after the wait, late by: p50 {1000 * quantile(late, 0.5):.0f} ms, "
                f"p95 {1000 * quantile(late, 0.95):.0f} ms, max {1000 * max(late):.0f} ms"
            )
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
