"""Deferral (E1) through real Envoy: a deferrable request no permitted rung can serve gets 202 +
a task id, is stored before that answer, replayed when the rung recovers, and its answer is
fetched by its own tenant only; a tenant's queue is bounded; nothing acknowledged is lost when
the storing process is killed with SIGKILL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import KEY_ENV, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
BATCH = {"x-rungway-task": "batch"}


def deferral_policy(fleet: Fleet, tmp: Path, **deferral: Any) -> dict[str, Any]:
    """Tenant `app` permits only the primary; task class `batch` is deferrable."""
    policy = fleet.policy(
        tmp,
        health={
            "enabled": True,
            "min_samples": 3,
            "probe_interval_s": 0,
            "recovery_probe_s": 0.5,
            "circuit": {"minimum_calls": 2, "consecutive_failures": 2, "open_s": 1, "half_open_successes": 1},
        },
        tenants={"app": {"lowest_tier": 0}, "other": {"lowest_tier": 0}},
        deferral={"store": str(tmp / "tasks.db"), "replay_every_s": 0.2, **deferral},
    )
    policy["tasks"]["batch"] = {"deferrable": True}
    return policy


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


def post(stack: Stack, key: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(
            stack.base_url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": HI, **body},
            headers={"authorization": f"Bearer {key}", **(headers or {})},
        )


def get_task(stack: Stack, key: str, location: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(stack.base_url + location, headers={"authorization": f"Bearer {key}"})


def outage(stack: Stack, fleet: Fleet) -> None:
    """The primary answers 503 until its circuit opens (deferrable requests are deferred then)."""
    fleet.primary.set_mode("status:503")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if post(stack, stack.app_key, BATCH).status_code == 202:
            return
        time.sleep(0.1)
    raise AssertionError("the primary's circuit never opened")


def answered(stack: Stack, key: str, location: str, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = get_task(stack, key, location)
        if reply.status_code != 202:
            return reply
        time.sleep(0.2)
    raise AssertionError(f"{location} was not answered in {timeout}s")


def test_a_deferred_request_gets_202_and_its_answer_once_the_rung_recovers(fresh: Fleet, tmp_path: Path) -> None:
    with running(deferral_policy(fresh, tmp_path), env=KEY_ENV) as stack:
        outage(stack, fresh)
        raw = stack.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, extra_headers=BATCH)
        assert raw.status_code == 202
        task_id = raw.headers["x-rungway-task-id"]
        location = raw.headers["location"]
        assert location == f"/v1/rungway/tasks/{task_id}"
        assert raw.headers["x-rungway-task-status"] == "queued"
        body = json.loads(raw.http_response.text)
        assert body["id"] == task_id and body["object"] == "rungway.task" and body["status_url"] == location
        waiting = get_task(stack, stack.app_key, location)
        assert waiting.status_code == 202 and waiting.json()["status"] in ("queued", "running")
        fresh.primary.set_mode("ok")
        done = answered(stack, stack.app_key, location)
        assert done.status_code == 200
        assert done.headers["x-rungway-task-status"] == "done"
        assert done.headers["x-rungway-served-by"] == "primary/gpt-4o"
        completion = ChatCompletion.model_validate_json(done.content)
        assert completion.choices[0].message.content
