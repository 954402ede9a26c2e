"""Human escalation (E2) through real Envoy: a high-impact request whose answer comes from a
degraded rung is held (202 + task id, the deferral's contract), the on-call's webhook gets the
state signed, and a person's approve / redirect / reject on the admin API (through `rungway
escalation`) decides what the client fetches; held requests survive a restart of `rungway up`,
and every step is an audit record in a chain that still verifies."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion

from extproc.runtime.supervisor import free_port
from tests.conftest import KEY_ENV, Fleet
from tests.e2e.test_deferral import answered, get_task, metric
from tests.stack import REPO, Stack, running

pytestmark = pytest.mark.e2e
SECRET = "escalation-secret-0123456789"
ENV = {**KEY_ENV, "RW_TEST_ESCALATION_SECRET": SECRET}
SUMMARY = {"x-rungway-task": "summarizer"}


class Receiver:
    """The on-call's webhook endpoint: an aiohttp server on a free loopback port, in a thread.
    It refuses its first POST (500) so the retry is exercised, and records the rest."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/oncall"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refused == 0:
            self.refused += 1
            return web.Response(status=500)
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return web.Response(status=204)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/oncall", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def payload(self, task_id: str, timeout: float = 30) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in list(self.received):
                if headers.get("x-rungway-task-id") == task_id:
                    return headers, body
            time.sleep(0.1)
        raise AssertionError(f"no webhook for {task_id} in {timeout}s")


def escalation_policy(fleet: Fleet, tmp: Path, url: str) -> dict[str, Any]:
    """Tenant `app`'s customer-facing requests (the default impact) are held when a tier-1 or
    lower rung answers them."""
    return fleet.policy(
        tmp,
        tenants={"app": {"escalate": {"impact": "customer_facing", "tier": 1}}},
        deferral={"store": str(tmp / "tasks.db"), "replay_every_s": 0.2},
        escalation={"webhook_url": url, "secret": {"env": "RW_TEST_ESCALATION_SECRET"}, "webhook_attempts": 4},
        audit={"dir": str(tmp / "audit"), "fsync_interval_s": 0},
    )


def rungway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def decide(stack: Stack, action: str, task_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    admin = stack.admin_url.removeprefix("http://")
    return rungway("escalation", action, task_id, *extra, "--admin", admin, "--by", "oncall-ana", "--reason", "INC-7")


def held(stack: Stack, content: str) -> str:
    """Send a request the primary cannot serve: the secondary (tier 1) answers, and it is held."""
    raw = stack.openai().chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": content}],
        tools=[{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}],
        tool_choice="none",
    )
    assert raw.status_code == 202, raw.http_response.text
    assert raw.headers["x-rungway-task-status"] == "escalated"
    assert raw.headers["x-rungway-escalation"] == "escalated"
    assert raw.headers["x-rungway-served-by"] == "rungway"
    task_id = raw.headers["x-rungway-task-id"]
    assert raw.headers["location"] == f"/v1/rungway/tasks/{task_id}"
    body = json.loads(raw.http_response.text)
    assert body == {**body, "id": task_id, "object": "rungway.task", "status": "escalated", "choices": []}
    return task_id


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


def test_held_answers_wait_for_a_person_across_a_restart_and_are_audited(fresh: Fleet, tmp_path: Path) -> None:
    with Receiver() as oncall:
        policy = escalation_policy(fresh, tmp_path, oncall.url)
        fresh.primary.set_mode("status:503")
        with running(policy, env=ENV) as stack:
            approve_id = held(stack, "refund order 17?")
            redirect_id = held(stack, "refund order 18?")
            reject_id = held(stack, "refund order 19?")
            location = f"/v1/rungway/tasks/{approve_id}"
            waiting = get_task(stack, stack.app_key, location)
            assert waiting.status_code == 202 and waiting.json()["status"] == "escalated"

            headers, body = oncall.payload(approve_id)
            t, v1 = (part.split("=", 1)[1] for part in headers["x-rungway-signature"].split(","))
            assert hmac.compare_digest(
                v1, hmac.new(SECRET.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
            )
            assert oncall.refused == 1  # the first delivery failed and was retried
            event = json.loads(body)
            assert event["event"] == "escalation" and event["id"] == approve_id
            assert event["tenant"] == "app" and event["impact"] == "customer_facing" and event["reasons"] == ["tier"]
            assert event["served_by"] == "secondary/claude-fallback" and event["tier"] == 1
            assert event["history"][0] == {"rung": 0, "outcome": "server_error"}
            assert event["history"][-1] == {"rung": 1, "outcome": "served"}
            assert event["policy"].startswith("test-2026.12.1+")
            assert event["request"]["body"]["messages"] == [{"role": "user", "content": "refund order 17?"}]
            assert event["request"]["body"]["tools"][0]["function"]["name"] == "lookup_order"
            candidate = event["candidate"]
            assert candidate["status"] == 200 and candidate["body"]["choices"][0]["message"]["content"]
            assert event["status_url"] == location

            listed = rungway("escalation", "list", "--admin", stack.admin_url.removeprefix("http://"))
            assert listed.returncode == 0, listed.stderr
            assert all(i in listed.stdout for i in (approve_id, redirect_id, reject_id))
            assert metric(stack.metrics(), "rungway_escalations_total", tenant="app", outcome="escalated") == 3
            assert metric(stack.metrics(), "rungway_escalations_open") == 3
            assert stack.status()["escalation"]["open"] == 3

        # A new `rungway up` on the same store: the held requests are still there, and decided.
        fresh.primary.set_mode("ok")
        with running(policy, env=ENV) as stack:
            approved = decide(stack, "approve", approve_id)
            assert approved.returncode == 0, approved.stderr
            assert "approved" in approved.stdout
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{approve_id}")
            assert answer.status_code == 200
            assert answer.headers["x-rungway-escalation"] == "approved"
            assert answer.headers["x-rungway-task-status"] == "done"
            assert answer.headers["x-rungway-served-by"] == "secondary/claude-fallback"
            completion = ChatCompletion.model_validate_json(answer.content)
            assert completion.choices[0].message.content == candidate["body"]["choices"][0]["message"]["content"]
            again = decide(stack, "reject", approve_id)
            assert again.returncode == 1 and "409" in again.stderr  # decided once, for good

            redirected = decide(stack, "redirect", redirect_id, "small")
            assert redirected.returncode == 0, redirected.stderr
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{redirect_id}")
            assert answer.status_code == 200
            assert answer.headers["x-rungway-served-by"] == "small/small-model"  # the rung the person named
            assert answer.headers["x-rungway-escalation"] == "redirected"
            assert ChatCompletion.model_validate_json(answer.content).choices[0].message.content

            rejected = decide(stack, "reject", reject_id)
            assert rejected.returncode == 0, rejected.stderr
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{reject_id}")
            assert answer.status_code == 403
            assert answer.headers["x-rungway-escalation"] == "rejected"
            error = answer.json()["error"]
            assert error["rungway_reason"] == "not_permitted"
            assert "rejected it: INC-7" in error["message"]

            shown = json.loads(rungway("escalation", "show", reject_id, "--admin", stack.admin_url[7:]).stdout)
            assert shown["escalation"]["state"] == "rejected"
            assert shown["escalation"]["resolution"]["by"] == "oncall-ana"
            assert (
                metric(stack.metrics(), "rungway_escalation_decisions_total", tenant="app", outcome="redirected") == 1
            )
            assert metric(stack.metrics(), "rungway_escalations_open") == 0

    audit_dir = tmp_path / "audit"
    verified = rungway("audit", "verify", str(audit_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = rungway("audit", "show", "--dir", str(audit_dir), "--tenant", "app", "--since", "1h", "--json")
    kinds = [json.loads(line)["kind"] for line in shown.stdout.splitlines() if line.strip()]
    assert kinds.count("escalated") == 3
    for kind in ("escalation_approved", "escalation_redirected", "escalation_rejected"):
        assert kinds.count(kind) == 1, kinds


def test_an_answer_from_the_primary_and_a_stream_are_never_held(fresh: Fleet, tmp_path: Path) -> None:
    with Receiver() as oncall, running(escalation_policy(fresh, tmp_path, oncall.url), env=ENV) as stack:
        raw = stack.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.status_code == 200 and raw.headers["x-rungway-tier"] == "0"
        fresh.primary.set_mode("status:503")
        with stack.openai().chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as streamed:
            assert streamed.status_code == 200 and streamed.headers["x-rungway-tier"] == "1"
            assert "data:" in streamed.read().decode()
        assert metric(stack.metrics(), "rungway_escalations_total", tenant="app", outcome="escalated") == 0
        with httpx.Client(timeout=10) as client:
            assert client.get(stack.admin_url + "/escalations").json() == {"escalations": []}


def test_an_unsure_answer_and_an_anthropic_clients_answer_are_held_behind_an_authenticated_admin(
    fresh: Fleet, tmp_path: Path
) -> None:
    """The confidence signal (the provider's logprobs, when the request asks for them) holds even
    the primary's answer; an Anthropic client gets its own dialect's envelope and error; the admin
    API wants its bearer token for escalations as for everything else."""
    token = "admin-token-0123456789abcdef"
    (tmp_path / "admin.token").write_text(token + "\n")
    with Receiver() as oncall:
        policy = escalation_policy(fresh, tmp_path, oncall.url)
        policy["tenants"]["app"]["escalate"] = {"impact": "customer_facing", "tier": 1, "min_logprob": -1.0}
        with running(policy, env={**ENV, "RUNGWAY_ADMIN_TOKEN": token}) as stack:
            sure = stack.openai().chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], logprobs=True
            )
            assert sure.status_code == 200 and sure.headers["x-rungway-tier"] == "0"
            fresh.primary.set_mode("unsure")
            unsure = stack.openai().chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], logprobs=True
            )
            assert unsure.status_code == 202 and unsure.headers["x-rungway-task-status"] == "escalated"
            _, body = oncall.payload(unsure.headers["x-rungway-task-id"])
            event = json.loads(body)
            assert event["reasons"] == ["logprob"] and event["mean_logprob"] == -2.5 and event["tier"] == 0

            fresh.secondary.set_mode("status:503")  # the Anthropic client's ladder starts there
            raw = stack.anthropic().messages.with_raw_response.create(
                model="claude-sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.status_code == 202 and raw.headers["x-rungway-task-status"] == "escalated"
            task_id = raw.headers["x-rungway-task-id"]
            envelope = json.loads(raw.http_response.text)
            assert (envelope["type"], envelope["content"], envelope["status"]) == ("rungway.task", [], "escalated")

            with httpx.Client(timeout=10) as client:
                assert client.get(stack.admin_url + "/escalations").status_code == 401
                refused = client.post(stack.admin_url + f"/escalations/{task_id}/reject", json={"by": "mallory"})
                assert refused.status_code == 401
            admin = (
                "--admin",
                stack.admin_url.removeprefix("http://"),
                "--admin-token-file",
                str(tmp_path / "admin.token"),
            )
            listed = rungway("escalation", "list", *admin)
            assert listed.returncode == 0 and task_id in listed.stdout, listed.stderr
            rejected = rungway("escalation", "reject", task_id, *admin, "--by", "oncall-ana", "--reason", "wrong tone")
            assert rejected.returncode == 0, rejected.stderr
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{task_id}")
            assert answer.status_code == 403
            error = answer.json()
            assert error["type"] == "error" and error["error"]["rungway_reason"] == "not_permitted"
            assert "wrong tone" in error["error"]["message"]


def test_an_answer_that_breaks_the_contract_on_every_rung_is_held_and_approved_as_a_replay(
    fresh: Fleet, tmp_path: Path
) -> None:
    """The contract signal: every rung answers too short for the task class, so no candidate;
    approving replays the request as it is (never held again), and the recovered primary answers."""
    with Receiver() as oncall:
        policy = escalation_policy(fresh, tmp_path, oncall.url)
        policy["tenants"]["app"]["escalate"] = {"impact": "customer_facing", "contract": True}
        for mock in (fresh.primary, fresh.secondary, fresh.small):
            mock.set_mode("tokens:2")  # the summarizer task class wants at least 10
        with running(policy, env=ENV) as stack:
            raw = stack.openai().chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "summarise"}], extra_headers=SUMMARY
            )
            assert raw.status_code == 202 and raw.headers["x-rungway-task-status"] == "escalated"
            task_id = raw.headers["x-rungway-task-id"]
            _, body = oncall.payload(task_id)
            event = json.loads(body)
            assert event["reasons"] == ["contract"] and event["candidate"] is None
            assert event["history"][-1] == {"rung": 2, "outcome": "quality_regression"}
            for mock in (fresh.primary, fresh.secondary, fresh.small):
                mock.set_mode("ok")
            approved = decide(stack, "approve", task_id)
            assert approved.returncode == 0, approved.stderr
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{task_id}")
            assert answer.status_code == 200
            assert answer.headers["x-rungway-served-by"] == "primary/gpt-4o"
            assert answer.headers["x-rungway-escalation"] == "approved"
            assert ChatCompletion.model_validate_json(answer.content).choices[0].message.content
            assert metric(stack.metrics(), "rungway_escalations_total", tenant="app", outcome="escalated") == 1


def test_a_task_class_that_hands_off_an_outage_hands_it_to_a_person(fresh: Fleet, tmp_path: Path) -> None:
    """T6 tier 3 with a desk: every rung down, the request is not answered with the handoff
    notice but held for a person (202 at tier 3, the webhook says `handoff`); once the providers
    are back, approving it replays it and the client fetches a real answer. No tenant rule needed."""
    with Receiver() as oncall:
        policy = escalation_policy(fresh, tmp_path, oncall.url)
        del policy["tenants"]["app"]["escalate"]
        policy["tasks"]["default"]["when_exhausted"] = {"tier": 3, "message": "A person will reply by email."}
        for mock in (fresh.primary, fresh.secondary, fresh.small):
            mock.set_mode("status:503")
        with running(policy, env=ENV) as stack:
            raw = stack.openai().chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "where is my parcel?"}]
            )
            assert raw.status_code == 202, raw.http_response.text
            assert raw.headers["x-rungway-task-status"] == "escalated" and raw.headers["x-rungway-tier"] == "3"
            assert raw.headers["x-rungway-served-by"] == "rungway/handoff"
            task_id = raw.headers["x-rungway-task-id"]
            _, body = oncall.payload(task_id)
            event = json.loads(body)
            assert event["reasons"] == ["handoff"] and event["candidate"] is None
            assert event["request"]["body"]["messages"] == [{"role": "user", "content": "where is my parcel?"}]
            for mock in (fresh.primary, fresh.secondary, fresh.small):
                mock.set_mode("ok")
            approved = decide(stack, "approve", task_id)
            assert approved.returncode == 0, approved.stderr
            answer = answered(stack, stack.app_key, f"/v1/rungway/tasks/{task_id}")
            assert answer.status_code == 200 and answer.headers["x-rungway-escalation"] == "approved"
            assert ChatCompletion.model_validate_json(answer.content).choices[0].message.content
            # A stream is never held: it still gets the notice, as a whole stream.
            for mock in (fresh.primary, fresh.secondary, fresh.small):
                mock.set_mode("status:503")
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in stack.openai().chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                if chunk.choices
            )
            assert text == "A person will reply by email."
