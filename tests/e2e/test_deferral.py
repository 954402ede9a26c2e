"""Deferral (E1) through real Envoy: a deferrable request no permitted rung can serve gets 202 +
a task id, is stored before that answer, replayed when the rung recovers, and its answer is
fetched by its own tenant only; a tenant's queue is bounded; nothing acknowledged is lost when
the storing process is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from tests.conftest import KEY_ENV, Fleet
from tests.stack import RedisServer, Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
BATCH = {"x-rungway-task": "batch"}


def deferral_policy(fleet: Fleet, tmp: Path, **deferral: Any) -> dict[str, Any]:
    """Tenant `app` permits only the primary; task class `batch` is deferrable. The queue is an
    SQLite file in `tmp`, or the Redis `redis=` names."""
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
        deferral={
            **({} if "redis" in deferral else {"store": str(tmp / "tasks.db")}),
            "replay_every_s": 0.2,
            **deferral,
        },
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
        try:
            reply = get_task(stack, key, location)
        except httpx.HTTPError:
            continue
        # A worker killed mid-poll fails closed (503 without a task id): ask again.
        if reply.status_code != 202 and "x-rungway-task-id" in reply.headers:
            return reply
        if reply.status_code not in (202, 503):
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
        assert get_task(stack, stack.app_key, location).content == done.content  # kept for its TTL
        # Another tenant's key finds no such task; nor does a made-up id.
        other = stack.issue_key("other")
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        assert get_task(stack, other, location).status_code == 404
        assert get_task(stack, stack.app_key, "/v1/rungway/tasks/task_madeup123").status_code == 404
        metrics = stack.metrics()
        assert metric(metrics, "rungway_deferred_total", tenant="app", outcome="accepted") >= 2
        assert metric(metrics, "rungway_deferred_replays_total", tenant="app", outcome="answered") >= 2
        # The audit trail: the deferral (the worker's chain) and its answer (the pod's drainer).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = httpx.get(stack.admin_url + "/audit", params={"since": "10m", "tenant": "app"}, timeout=10)
            mine = [r for r in records.json()["records"] if r["kind"] == "deferral" and task_id in str(r["detail"])]
            if {r["trigger"] for r in mine} >= {"accepted", "answered"}:
                break
            time.sleep(0.2)
        by_trigger = {r["trigger"]: r for r in mine}
        assert by_trigger["accepted"]["detail"]["reason"] and len(by_trigger["accepted"]["prompt_hash"]) == 64
        assert by_trigger["answered"]["detail"]["served_by"] == "primary/gpt-4o"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_an_anthropic_client_gets_its_dialects_envelope_and_answer(fresh: Fleet, tmp_path: Path) -> None:
    with running(deferral_policy(fresh, tmp_path), env=KEY_ENV) as stack:
        fresh.secondary.set_mode("status:529")
        client = stack.anthropic()
        deadline = time.monotonic() + 20
        raw = None
        while raw is None and time.monotonic() < deadline:
            try:  # the SDK raises on the 529s before the circuit opens
                raw = client.messages.with_raw_response.create(
                    model="claude-x", max_tokens=20, messages=HI, extra_headers={"x-rungway-impact": "deferrable"}
                )
            except anthropic.APIStatusError as exc:
                assert exc.status_code == 529
        assert raw is not None and raw.status_code == 202
        body = json.loads(raw.http_response.text)
        assert body["type"] == "rungway.task" and body["content"] == [] and body["role"] == "assistant"
        fresh.secondary.set_mode("ok")
        done = answered(stack, stack.app_key, raw.headers["location"])
        assert done.status_code == 200
        message = Message.model_validate_json(done.content)
        assert message.content and done.headers["x-rungway-served-by"] == "secondary/claude-x"
        # The replay carried the client's API version, never its key.
        replayed = [r for r in fresh.secondary.requests if b"Reply with: ok" not in r.body][-1]  # not a probe
        assert replayed.headers["anthropic-version"] == raw.http_response.request.headers["anthropic-version"]
        assert stack.app_key not in json.dumps(dict(replayed.headers))


def test_a_tenants_queue_is_bounded_with_a_clear_429_and_a_metric(fresh: Fleet, tmp_path: Path) -> None:
    with running(deferral_policy(fresh, tmp_path, max_per_tenant=3), env=KEY_ENV) as stack:
        outage(stack, fresh)  # one task
        codes = [post(stack, stack.app_key, BATCH).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        refused = post(stack, stack.app_key, BATCH)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "deferral.max_per_tenant" in refused.json()["error"]["message"]
        metrics = stack.metrics()
        assert metric(metrics, "rungway_deferred_total", tenant="app", outcome="full") == 2
        assert metric(metrics, "rungway_deferral_queue_depth") == 3
        assert metric(metrics, "rungway_deferral_oldest_age_seconds") > 0
        # Not deferrable (no task class or impact says so): the honest refusal, as before.
        assert post(stack, stack.app_key).status_code == 503


def test_draining_serves_tenants_in_turn_not_in_arrival_order(fresh: Fleet, tmp_path: Path) -> None:
    with running(deferral_policy(fresh, tmp_path, replays_in_flight=1), env=KEY_ENV) as stack:
        other = stack.issue_key("other")
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        outage(stack, fresh)
        tasks = []
        for key, name, n in [(stack.app_key, "app", 8), (other, "other", 2)]:  # the app's backlog first
            for i in range(n):
                reply = post(stack, key, BATCH, messages=[{"role": "user", "content": f"{name}-{i}"}])
                assert reply.status_code == 202
                tasks.append((key, reply.headers["location"]))
        fresh.primary.set_mode("ok")
        for key, location in tasks:
            assert answered(stack, key, location).status_code == 200
        replayed = [
            text
            for r in fresh.primary.requests
            for text in [r.body.decode(errors="replace")]
            if "app-" in text or "other-" in text
        ]
        order = [next(m for m in (*(f"app-{i}" for i in range(8)), "other-0", "other-1") if m in t) for t in replayed]
        # One replay at a time: the other tenant's two tasks go second and fourth (or so: the
        # outage's own task is the app's too), not after the app's whole backlog.
        assert order.index("other-0") <= 2 and order.index("other-1") <= 4, order


def test_a_deferrable_request_over_its_budget_waits_for_the_next_window(fresh: Fleet, tmp_path: Path) -> None:
    policy = deferral_policy(fresh, tmp_path)
    policy["tenants"]["app"]["budget"] = {"max_tokens": 1, "window_s": 3600}
    with running(policy, env=KEY_ENV) as stack:
        assert post(stack, stack.app_key).status_code == 200  # spends the window's budget
        deadline = time.monotonic() + 10
        while (reply := post(stack, stack.app_key, BATCH)).status_code != 202 and time.monotonic() < deadline:
            time.sleep(0.1)  # the spend is counted once the answer is in
        assert reply.status_code == 202 and reply.headers["x-rungway-reason"] == "budget_exceeded"
        refused = post(stack, stack.app_key)  # not deferrable: the budget's 429, as before
        assert refused.status_code == 429
        time.sleep(1.5)  # the drainer has tried: its replay was refused 429 and waits out the window
        waiting = get_task(stack, stack.app_key, reply.headers["location"])
        assert waiting.status_code == 202 and waiting.json()["status"] == "queued"
        assert metric(stack.metrics(), "rungway_deferred_replays_total", tenant="app", outcome="retried") >= 1


class Callbacks(BaseHTTPRequestHandler):
    """A tenant's callback receiver: refuses the first POST (500), records the rest."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    refused: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if Callbacks.refused == 0:
            Callbacks.refused += 1
            self.send_response(500)
        else:
            Callbacks.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_answer_is_posted_to_the_tenants_callback_signed_and_retried(fresh: Fleet, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "callback-secret-0123456789"
    policy = deferral_policy(fresh, tmp_path, callback_secret={"env": "RW_TEST_CALLBACK_SECRET"})
    policy["tenants"]["app"]["callback_url"] = f"http://127.0.0.1:{server.server_address[1]}/rungway"
    try:
        with running(policy, env={**KEY_ENV, "RW_TEST_CALLBACK_SECRET": secret}) as stack:
            outage(stack, fresh)
            task_id = post(stack, stack.app_key, BATCH).headers["x-rungway-task-id"]
            fresh.primary.set_mode("ok")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                h["x-rungway-task-id"] == task_id for h, _ in Callbacks.received
            ):
                time.sleep(0.2)
            headers, body = next((h, b) for h, b in Callbacks.received if h["x-rungway-task-id"] == task_id)
            t, v1 = (part.split("=", 1)[1] for part in headers["x-rungway-signature"].split(","))
            expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(v1, expected)
            payload = json.loads(body)
            assert payload["id"] == task_id and payload["status"] == 200
            assert payload["body"]["choices"][0]["message"]["content"]
            assert Callbacks.refused == 1  # the first POST failed and was retried
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["sqlite", "redis"])
def queue_at(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Where the queue is: the pod's SQLite file, or a fleet's Redis (a real redis-server)."""
    if request.param == "sqlite":
        yield {}
        return
    server = RedisServer()
    server.start()
    try:
        yield {"redis": server.url}
    finally:
        server.stop()


def test_nothing_acknowledged_is_lost_when_the_storing_process_is_killed(
    fresh: Fleet, tmp_path: Path, queue_at: dict[str, str]
) -> None:
    """Deferrable requests keep coming while the workers (which store them) are killed with
    SIGKILL at random moments, during acceptance and during the replays; every request that got
    a 202 is answered, once per task id."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    with running(deferral_policy(fresh, tmp_path, **queue_at), env=KEY_ENV, workers=2) as stack:
        outage(stack, fresh)
        accepted: dict[str, str] = {}  # task id -> the request's own marker
        stop = threading.Event()
        lock = threading.Lock()
        codes: dict[int, int] = {}

        def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                marker = f"req-{n}-{i}"
                i += 1
                try:
                    reply = post(stack, stack.app_key, BATCH, messages=[{"role": "user", "content": marker}])
                except httpx.HTTPError:
                    continue
                with lock:
                    codes[reply.status_code] = codes.get(reply.status_code, 0) + 1
                if reply.status_code == 202:
                    with lock:
                        accepted[reply.headers["x-rungway-task-id"]] = marker

        killed: set[int] = set()

        def kill_a_worker() -> None:
            pids = [p for p in stack.refresh_state()["worker_pids"] if p and p not in killed]
            if pids:
                with contextlib.suppress(ProcessLookupError):  # it may have just exited
                    os.kill(pid := rng.choice(pids), signal.SIGKILL)
                    killed.add(pid)

        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(client, n)
            deadline = time.monotonic() + 90
            while (len(accepted) < 20 or len(killed) < 4) and time.monotonic() < deadline:
                # Once the stack accepts again (a restarted worker opens its own circuit after
                # two failures), kill at a random moment of the accepting.
                seen = len(accepted)
                while len(accepted) < seen + 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
                kill_a_worker()
            time.sleep(0.5)
            stop.set()
        assert len(accepted) >= 20, f"seed {seed}: only {len(accepted)} accepted ({codes})"
        assert len(killed) >= 3, f"seed {seed}: killed only {killed}"
        fresh.primary.set_mode("ok")
        for _ in range(3):  # and while the replays run
            time.sleep(rng.uniform(0.1, 0.8))
            kill_a_worker()
        answers: dict[str, bytes] = {}
        for task_id in accepted:
            done = answered(stack, stack.app_key, f"/v1/rungway/tasks/{task_id}", timeout=60)
            assert done.status_code == 200, f"seed {seed}: {task_id} -> {done.status_code} {done.text[:200]}"
            answers[task_id] = done.content
        for task_id, marker in accepted.items():
            # One answer per task id, the same on every read (a duplicate replay changes nothing),
            # and it is this request's answer: the provider saw the request's own marker.
            assert get_task(stack, stack.app_key, f"/v1/rungway/tasks/{task_id}").content == answers[task_id]
            assert any(marker in r.body.decode(errors="replace") for r in fresh.primary.requests), marker
        print(f"seed {seed}: {len(accepted)} accepted, {len(killed)} workers killed, answers {codes}")


def test_a_drainer_killed_mid_replay_leaves_no_task_unanswered(fresh: Fleet, tmp_path: Path) -> None:
    """`rungway up` (the pod's drainer) and everything it started are killed with SIGKILL while
    replays are in flight; a new `rungway up` on the same store answers every task: the dead
    drainer's leases lapse and those tasks are replayed again."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    policy = deferral_policy(fresh, tmp_path, lease_s=2, replays_in_flight=4)
    first = Stack(policy, env=KEY_ENV)
    try:
        outage(first, fresh)
        accepted: dict[str, str] = {}
        for i in range(12):
            reply = post(first, first.app_key, BATCH, messages=[{"role": "user", "content": f"job-{i}"}])
            assert reply.status_code == 202
            accepted[reply.headers["x-rungway-task-id"]] = f"job-{i}"
        fresh.primary.set_mode("delay:0.8")  # recovered, and slow enough that replays overlap the kill
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not states(tmp_path / "tasks.db").get("running"):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        at_kill = states(tmp_path / "tasks.db")
        state = first.refresh_state()
        for pid in [first.process.pid, state["envoy_pid"], *state["worker_pids"]]:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()
    assert at_kill.get("running"), f"seed {seed}: no replay was in flight at the kill: {at_kill}"
    with running(policy, env=KEY_ENV) as second:
        answers = {}
        for task_id in accepted:
            done = answered(second, second.app_key, f"/v1/rungway/tasks/{task_id}", timeout=60)
            assert done.status_code == 200, f"seed {seed}: {task_id} -> {done.status_code}"
            answers[task_id] = done.content
        time.sleep(1.0)  # any duplicate replay of a lapsed lease has ended by now
        for task_id, marker in accepted.items():
            assert get_task(second, second.app_key, f"/v1/rungway/tasks/{task_id}").content == answers[task_id]
            assert any(marker in r.body.decode(errors="replace") for r in fresh.primary.requests), marker
    print(f"seed {seed}: at the kill {at_kill}")


def states(store: Path) -> dict[str, int]:
    """How many tasks the store holds in each state (read as another process would)."""
    with contextlib.closing(sqlite3.connect(store, timeout=10)) as db:
        return dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
