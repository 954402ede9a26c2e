"""Holding a request for an operator's approval (T2, routing/hold.py) through real Envoy: the
primary's circuit is open, the tenant's fallback tiers need an approval, and its policy says to
wait for one (`approval_wait_s`). decide holds the request (Envoy's override_message_timeout);
`rungway approve` during the hold lets it through to the approved tier; without one the client
reads the refusal that says how to approve; a client that leaves frees its place; a tenant's
held requests are capped."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.e2e.test_deferral import metric
from tests.stack import REPO, Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
KEYS: dict[str, str] = {}
APPROVALS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def held(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hold")
    policy = fleet.policy(
        tmp,
        # The primary's circuit opens after two failures and stays open for the whole module
        # (a half-open circuit would let a held request through to the primary as its probe).
        health={
            "enabled": True,
            "min_samples": 3,
            "probe_interval_s": 0,
            "circuit": {"minimum_calls": 2, "consecutive_failures": 2, "open_s": 600, "half_open_successes": 1},
        },
        tenants={
            # Served by the primary only, unless an operator approves tier 1; waits for that.
            "clinic": {"approval_beyond_tier": 0, "approval_wait_s": 20},
            "ward": {"approval_beyond_tier": 0, "approval_wait_s": 2},
            "lab": {"approval_beyond_tier": 0, "approval_wait_s": 60, "approval_max_held": 2},
        },
    )
    APPROVALS["path"] = tmp / "approvals.json"
    policy["approvals"] = str(APPROVALS["path"])
    fleet.reset()
    # Two workers: a tenant's cap is the pod's, whichever worker holds its requests.
    with running(policy, env=KEY_ENV, workers=2) as stack:
        KEYS.update({name: stack.issue_key(name) for name in ("clinic", "ward", "lab", "agency")})
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        fleet.primary.set_mode("status:503")
        with stack.openai_as(KEYS["agency"]) as agency:  # every tier: served by the fallback meanwhile
            for _ in range(4):
                agency.chat.completions.create(model="gpt-4o", messages=HI)
        yield stack
    fleet.reset()


def approve(*args: str) -> None:
    command = [sys.executable, "-m", "extproc.cli", "approve", "--store", str(APPROVALS["path"]), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def in_background(call: Callable[[], Any]) -> Callable[[], Any]:
    """Run `call` in a thread; the returned function joins it and returns (or raises) its outcome."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(90)
        assert not thread.is_alive(), "the request never ended"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return join


def held_now(stack: Stack, tenant: str) -> int:
    return int(stack.status()["held_for_approval"].get(tenant, 0))


def until_held(stack: Stack, tenant: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while held_now(stack, tenant) != count:
        assert time.monotonic() < deadline, f"{tenant} never had {count} requests held"
        time.sleep(0.05)


def ask(stack: Stack, tenant: str) -> Any:
    with stack.openai_as(KEYS[tenant]) as client:
        return client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)


def test_an_approval_during_the_hold_serves_the_request_from_the_approved_tier(held: Stack, fleet: Fleet) -> None:
    before = len(fleet.secondary.requests)
    reply = in_background(lambda: ask(held, "clinic"))
    until_held(held, "clinic", 1)
    assert len(fleet.secondary.requests) == before  # nothing reached the fallback while held
    approve("--tenant", "clinic", "--tier", "1", "--for", "1h", "--by", "oncall", "--reason", "INC-11")
    raw = reply()
    assert raw.status_code == 200
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-tier"] == "1" and raw.headers["x-rungway-degraded"] == "true"
    assert raw.parse().choices[0].message.content
    assert held_now(held, "clinic") == 0
    assert metric(held.metrics(), "rungway_approval_holds_total", tenant="clinic", outcome="routed") == 1
    approve("--revoke", "--tenant", "clinic")


def test_without_an_approval_the_held_request_gets_the_refusal_that_says_how_to_approve(held: Stack) -> None:
    reply = in_background(lambda: ask(held, "ward"))
    until_held(held, "ward", 1)
    with pytest.raises(openai.APIStatusError) as caught:
        reply()
    assert caught.value.status_code == 503
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "not_permitted"
    assert "rungway approve --tenant ward --tier 1" in error["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert held_now(held, "ward") == 0
    # An Anthropic client is held the same way and reads the refusal in its own dialect.
    with held.anthropic_as(KEYS["ward"]) as client:
        message = in_background(lambda: client.messages.create(model="gpt-4o", max_tokens=16, messages=HI))
        until_held(held, "ward", 1)
        with pytest.raises(anthropic.APIStatusError) as refused:
            message()
    assert refused.value.status_code == 503
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "rungway approve --tenant ward --tier 1" in body["error"]["message"]
    assert metric(held.metrics(), "rungway_approval_holds_total", tenant="ward", outcome="expired") == 2


def test_a_client_that_leaves_while_held_frees_its_place(held: Stack) -> None:
    def leave() -> None:
        with httpx.Client(timeout=1.5) as client, pytest.raises(httpx.TimeoutException):
            client.post(
                held.base_url + "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": HI},
                headers={"authorization": f"Bearer {KEYS['lab']}"},
            )

    gone = in_background(leave)
    until_held(held, "lab", 1)
    gone()
    until_held(held, "lab", 0)  # long before lab's 60 s wait ends
    assert metric(held.metrics(), "rungway_approval_holds_total", tenant="lab", outcome="gone") == 1


def test_past_its_cap_a_tenants_next_request_is_refused_at_once_and_an_approval_frees_the_held(
    held: Stack,
) -> None:
    waiting = [in_background(lambda: ask(held, "lab")) for _ in range(2)]
    until_held(held, "lab", 2)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(held, "lab")
    assert caught.value.status_code == 503
    assert "rungway approve --tenant lab --tier 1" in str(caught.value.body)
    assert held_now(held, "lab") == 2  # the refused one was never held
    assert metric(held.metrics(), "rungway_approval_holds_total", tenant="lab", outcome="full") == 1
    approve("--tenant", "lab", "--tier", "1", "--for", "10m", "--by", "oncall")
    for join in waiting:
        raw = join()
        assert raw.status_code == 200 and raw.headers["x-rungway-tier"] == "1"
    assert held_now(held, "lab") == 0


def test_what_the_hold_spent_comes_off_the_requests_route_timeout(fleet: Fleet, tmp_path: Path) -> None:
    policy = fleet.policy(
        tmp_path,
        route_timeout_s=6,
        health={
            "enabled": True,
            "min_samples": 3,
            "probe_interval_s": 0,
            "circuit": {"minimum_calls": 2, "consecutive_failures": 2, "open_s": 600, "half_open_successes": 1},
        },
        tenants={"clinic": {"approval_beyond_tier": 0, "approval_wait_s": 20}},  # held 5 s at most
        approvals=str(tmp_path / "approvals.json"),
    )
    APPROVALS["path"] = tmp_path / "approvals.json"
    fleet.reset()
    try:
        with running(policy, env=KEY_ENV) as stack:
            clinic, agency = stack.issue_key("clinic"), stack.issue_key("agency")
            time.sleep(1.5)  # the sidecar takes a changed key store within a second
            fleet.primary.set_mode("status:503")
            with stack.openai_as(agency) as client:
                for _ in range(4):
                    client.chat.completions.create(model="gpt-4o", messages=HI)
                fleet.secondary.set_mode("delay:4.5")
                # Not held: the whole 6 s route timeout, and the slow fallback's answer fits in it.
                assert client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI).status_code == 200
            KEYS["clinic"] = clinic
            reply = in_background(lambda: ask(stack, "clinic"))
            until_held(stack, "clinic", 1)
            time.sleep(2)  # held at least 2 s: at most 4 s of the route timeout are left
            approve("--tenant", "clinic", "--tier", "1", "--for", "1h", "--by", "oncall")
            with pytest.raises(openai.APIStatusError) as caught:
                reply()
            assert caught.value.status_code == 504
            assert metric(stack.metrics(), "rungway_approval_holds_total", tenant="clinic", outcome="routed") == 1
    finally:
        fleet.reset()
