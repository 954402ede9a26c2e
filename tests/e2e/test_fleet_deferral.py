"""Deferral (E1) across a fleet: two `rungway up` stacks (each its own Envoy and workers) share
one Redis, for the health bus and for the deferral queue. A request deferred on one pod is
answered at the other's status URL and replayed once by the fleet when the primary recovers; a
tenant's capacity is the fleet's; a pod killed with SIGKILL mid-drain leaves its tasks to the
other pod's drainer, which takes them over; without Redis no 202 is sent."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from extproc.runtime.fleettasks import GROUP, PREFIX
from tests.conftest import KEY_ENV, Fleet
from tests.e2e.test_deferral import BATCH, answered, deferral_policy, get_task, metric, outage, post
from tests.stack import RedisServer, Stack, running

pytestmark = pytest.mark.e2e
FLEET_ENV = {**KEY_ENV, "RUNGWAY_BUS_SECRET": "e2e-fleet-secret-0123456789abcdef"}


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


@pytest.fixture
def shared() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def fleet_policy(fleet: Fleet, tmp: Path, server: RedisServer, **deferral: Any) -> dict[str, Any]:
    policy = deferral_policy(fleet, tmp, redis=server.url, **deferral)
    policy["health"]["bus"] = server.url
    return policy


def replays(stack: Stack, outcome: str) -> float:
    return metric(stack.metrics(), "rungway_deferred_replays_total", tenant="app", outcome=outcome)


def marked(fleet: Fleet, marker: str) -> int:
    """How many requests carrying `marker` the primary received."""
    return sum(marker in r.body.decode(errors="replace") for r in fleet.primary.requests)


def test_a_task_deferred_on_one_pod_is_answered_on_both_and_replayed_once(
    fresh: Fleet, tmp_path: Path, shared: RedisServer
) -> None:
    policy = fleet_policy(fresh, tmp_path, shared)
    with running(policy, env=FLEET_ENV) as a, running(policy, env=FLEET_ENV) as b:
        outage(a, fresh)
        accepted = {}
        for i in range(6):
            reply = post(a, a.app_key, BATCH, messages=[{"role": "user", "content": f"fleet-job-{i}"}])
            assert reply.status_code == 202
            accepted[reply.headers["location"]] = f"fleet-job-{i}"
        for location in accepted:
            waiting = get_task(b, b.app_key, location)  # the other pod, the same tenant
            assert waiting.status_code == 202 and waiting.json()["status"] in ("queued", "running")
        other = b.issue_key("other")
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        assert get_task(b, other, next(iter(accepted))).status_code == 404  # another tenant's: none
        fresh.primary.set_mode("ok")
        for location in accepted:
            done = answered(b, b.app_key, location)
            assert done.status_code == 200 and done.headers["x-rungway-task-status"] == "done"
            assert done.headers["x-rungway-served-by"] == "primary/gpt-4o"
            assert get_task(a, a.app_key, location).content == done.content  # the same answer on both
        time.sleep(1.0)  # a second replay of any task would have ended by now
        for marker in accepted.values():
            assert marked(fresh, marker) == 1, marker  # replayed exactly once, by one pod
        # The outage's own task is the seventh; between them the pods answered each task once.
        assert replays(a, "answered") + replays(b, "answered") == len(accepted) + 1
        assert replays(a, "duplicate") + replays(b, "duplicate") == 0
        print(f"answered by pod a: {replays(a, 'answered'):.0f}, by pod b: {replays(b, 'answered'):.0f}")
        assert a.status()["deferral"]["queue_depth"] == b.status()["deferral"]["queue_depth"] == 0


def test_a_tenants_queue_is_bounded_across_the_fleet_not_per_pod(
    fresh: Fleet, tmp_path: Path, shared: RedisServer
) -> None:
    policy = fleet_policy(fresh, tmp_path, shared, max_per_tenant=3)
    with running(policy, env=FLEET_ENV) as a, running(policy, env=FLEET_ENV) as b:
        outage(a, fresh)  # one task, on pod a
        assert [post(b, b.app_key, BATCH).status_code for _ in range(2)] == [202, 202]
        refused = post(a, a.app_key, BATCH)  # pod a has stored one task only: the fleet has three
        assert refused.status_code == 429 and "deferral.max_per_tenant" in refused.json()["error"]["message"]
        assert metric(a.metrics(), "rungway_deferred_total", tenant="app", outcome="full") == 1
        assert a.status()["deferral"]["queue_depth"] == b.status()["deferral"]["queue_depth"] == 3


def test_a_pod_killed_mid_drain_leaves_its_tasks_to_the_other_pods_drainer(
    fresh: Fleet, tmp_path: Path, shared: RedisServer
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    lease_s = 2.0
    policy = fleet_policy(fresh, tmp_path, shared, lease_s=lease_s, replays_in_flight=4)
    client = redis.Redis.from_url(shared.url)
    doomed = Stack(policy, env=FLEET_ENV)
    try:
        with running(policy, env=FLEET_ENV) as survivor:
            outage(doomed, fresh)
            accepted: dict[str, str] = {}
            for i in range(24):
                reply = post(doomed, doomed.app_key, BATCH, messages=[{"role": "user", "content": f"kill-job-{i}"}])
                assert reply.status_code == 202
                accepted[reply.headers["x-rungway-task-id"]] = f"kill-job-{i}"
            fresh.primary.set_mode("delay:0.8")  # recovered, and slow: replays overlap the kill
            consumer = f"-{doomed.process.pid}-"  # the doomed pod's drainer in the group

            def held_by_doomed() -> int:
                return sum(
                    int(c["pending"])
                    for c in client.xinfo_consumers(f"{PREFIX}:q:app", GROUP)
                    if consumer in c["name"].decode()
                )

            def running_now() -> int:
                return sum(client.hget(f"{PREFIX}:task:{t}", "state") == b"running" for t in accepted)

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (held_by_doomed() and running_now()):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            state = doomed.refresh_state()
            for pid in [doomed.process.pid, state["envoy_pid"], *state["worker_pids"]]:
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(pid, signal.SIGKILL)
            doomed.process.wait(10)
            # What the dead pod left: entries only a takeover can move, leases only time lapses.
            held, in_flight = held_by_doomed(), running_now()
            assert held > 0 and in_flight > 0, f"seed {seed}: the doomed pod held {held}, {in_flight} running"
            answers = {}
            for task_id in accepted:
                done = answered(survivor, survivor.app_key, f"/v1/rungway/tasks/{task_id}", timeout=60)
                assert done.status_code == 200, f"seed {seed}: {task_id} -> {done.status_code}"
                answers[task_id] = done.content
            time.sleep(1.0)
            for task_id, marker in accepted.items():
                again = get_task(survivor, survivor.app_key, f"/v1/rungway/tasks/{task_id}")
                assert again.content == answers[task_id]  # one answer per task, whoever replayed it
                assert marked(fresh, marker) >= 1, marker
            # Every entry is acknowledged: nothing is left in any drainer's hands.
            assert client.xpending(f"{PREFIX}:q:app", GROUP)["pending"] == 0
    finally:
        doomed.stop()
        client.close()
    print(f"seed {seed}: the doomed pod held {held} entries; {in_flight} tasks running at the kill")


def test_without_its_redis_a_pod_refuses_to_defer_with_503_and_defers_again_once_it_is_back(
    fresh: Fleet, tmp_path: Path, shared: RedisServer
) -> None:
    """A 202 is never sent for a task Redis did not store: with Redis gone, a deferrable request
    gets a prompt 503 (counted), the pod keeps serving, and deferral resumes with Redis."""
    with running(fleet_policy(fresh, tmp_path, shared), env=FLEET_ENV) as stack:
        outage(stack, fresh)
        shared.stop()  # SIGKILL; nothing persisted: the queue is gone with it
        refused = post(stack, stack.app_key, BATCH)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "could not be queued" in refused.json()["error"]["message"]
        assert "x-rungway-task-id" not in refused.headers
        metrics = stack.metrics()
        assert metric(metrics, "rungway_deferred_total", tenant="app", outcome="unavailable") >= 1
        assert metric(metrics, "rungway_deferral_store_up") == 0 and "rungway_deferral_queue_depth" not in metrics
        assert stack.status()["deferral"]["store_error"] == "ConnectionError"
        time.sleep(1.0)  # the drainer's passes fail meanwhile
        shared.start()
        deadline = time.monotonic() + 20
        while (reply := post(stack, stack.app_key, BATCH)).status_code != 202 and time.monotonic() < deadline:
            assert reply.status_code == 503  # the first call on a dropped connection may still fail
            time.sleep(0.2)
        assert reply.status_code == 202
        fresh.primary.set_mode("ok")
        assert answered(stack, stack.app_key, reply.headers["location"]).status_code == 200
        assert metric(stack.metrics(), "rungway_deferral_store_up") == 1
        # The drainer said so once for the whole outage, not once a pass.
        assert (stack.dir / "up.log").read_text(errors="replace").count("deferral pass failed") == 1
