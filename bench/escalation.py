"""Human escalation's figures through real Envoy: what arming a request costs when its answer is
served (its tries also send the request body to the sidecar), how long a held answer's 202 takes
(stored with fsync first), and how soon the client can fetch the outcome of a decision.

`python -m bench.escalation` (defaults: 200 requests per kind, one at a time, interleaved in rounds
of 20, 1 worker). Not asserted in any test: tests/e2e/test_escalation.py checks the behaviour, this
measures it. Compare kinds within one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from .shed import quantile

HI = [{"role": "user", "content": "hi"}]


async def one(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, float, str]:
    body = json.dumps({"model": "gpt-4o", "messages": HI})
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    started = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
        await r.read()
        return r.status, time.perf_counter() - started, r.headers.get("x-rungway-task-id", "")


async def measure(
    url: str, keys: dict[str, str], set_primary: Callable[[str], None], n: int, rounds: int
) -> tuple[dict[str, list[float]], list[str]]:
    """Latency per kind (tenant, primary mode → served or held), interleaved round by round, and
    the held requests' task ids."""
    kinds = {
        "unarmed, tier 0": ("plain", "ok", 200),
        "armed, tier 0 (served)": ("app", "ok", 200),
        "unarmed, tier 1 (served)": ("plain", "status:503", 200),
        "armed, tier 1 (held, 202)": ("app", "status:503", 202),
    }
    out: dict[str, list[float]] = {kind: [] for kind in kinds}
    held: list[str] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for kind, (tenant, mode, want) in kinds.items():
                set_primary(mode)
                for _ in range(n // rounds):
                    status, took, task_id = await one(session, url, keys[tenant])
                    if status != want:
                        raise RuntimeError(f"{kind}: HTTP {status}, expected {want}")
                    out[kind].append(took)
                    if task_id:
                        held.append(task_id)
    return out, held


async def decide_and_fetch(url: str, admin: str, key: str, task_ids: list[str], review: str) -> list[float]:
    """Seconds from a decision's POST to the client's first fetch of its outcome."""
    took = []
    async with aiohttp.ClientSession() as session:
        for task_id in task_ids:
            started = time.perf_counter()
            decision = {"by": "bench", "reason": "", **({"rung": "small"} if review == "redirect" else {})}
            async with session.post(f"{admin}/escalations/{task_id}/{review}", json=decision) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{review} {task_id}: HTTP {r.status}")
            while True:
                async with session.get(
                    f"{url}/v1/rungway/tasks/{task_id}", headers={"authorization": f"Bearer {key}"}
                ) as r:
                    await r.read()
                    if r.status != 202:
                        took.append(time.perf_counter() - started)
                        break
                await asyncio.sleep(0.01)
    return took


def ms(values: list[float]) -> str:
    return f"p50 {1000 * quantile(values, 0.5):.1f} ms, p95 {1000 * quantile(values, 0.95):.1f} ms"


def main() -> None:
    from tests.conftest import KEY_ENV, Fleet
    from tests.e2e.test_escalation import ENV, escalation_policy
    from tests.stack import MockThread, running

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=200, help="requests per kind")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        tmp = Path(tempfile.mkdtemp())
        # A webhook nobody answers: the desk retries it off the request path, as in an outage of the pager.
        policy = escalation_policy(fleet, tmp, "http://127.0.0.1:9/nobody")
        policy["audit"] = {"enabled": False}  # escalation's own cost, not the trail's
        with running(policy, env={**KEY_ENV, **ENV}, workers=args.workers) as stack:
            keys = {"app": stack.app_key, "plain": stack.issue_key("plain")}
            time.sleep(1.5)  # the sidecar takes a changed key store within a second
            found, held = asyncio.run(measure(stack.base_url, keys, fleet.primary.set_mode, args.n, args.rounds))
            print(
                f"{args.n} requests per kind, 1 connection, {args.rounds} interleaved rounds, {args.workers} worker(s):"
            )
            for kind, values in found.items():
                print(f"  {kind:<28} {ms(values)}")
            fleet.primary.set_mode("ok")
            approved = asyncio.run(
                decide_and_fetch(stack.base_url, stack.admin_url, stack.app_key, held[:50], "approve")
            )
            redirected = asyncio.run(
                decide_and_fetch(stack.base_url, stack.admin_url, stack.app_key, held[50:100], "redirect")
            )
            print(f"  approve → the candidate fetched: {ms(approved)} ({len(approved)} decisions)")
            print(f"  redirect → the rung's answer fetched: {ms(redirected)} ({len(redirected)} decisions; "
                  f"replay_every_s {policy['deferral']['replay_every_s']})")  # fmt: skip
    finally:
        mocks.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
