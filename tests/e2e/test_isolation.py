"""Tenant isolation through real Envoy (T3): a noisy tenant at 10 x its share of a fallback rung,
against a failing primary, leaves a quiet tenant's success rate where it was alone. The noisy
tenant's excess is answered at once with a 429 + Retry-After in its dialect, and the fallback
provider's own concurrency limit is never reached. Timings are measured in bench/isolation.py
(bench/ISOLATION.md), never asserted here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

from bench.isolation import Load, isolation_policy, run, warm
from tests.conftest import KEY_ENV, Fleet
from tests.stack import REPO, running

HI: Any = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.e2e


def test_a_noisy_tenant_at_ten_times_its_share_leaves_the_quiet_tenants_success_rate(
    fleet: Fleet, tmp_path: Path
) -> None:
    # Two workers: a request's decide and its try often run in different ones, and the limits
    # and shares hold for the pod all the same (one ledger, runtime/slots.py).
    load = Load(duration_s=4.0, workers=2)
    fleet.reset()
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode(f"delay:{load.delay_s:g}")
    try:
        with running(isolation_policy(fleet.policy(tmp_path), load), env=KEY_ENV, workers=load.workers) as stack:
            result = run(stack, fleet.secondary, load)
    finally:
        fleet.reset()
    print(result.text(load))  # the figures, for whoever runs with -s
    assert result.baseline.requests > 0 and result.baseline.success == 1.0
    assert result.quiet.success >= 0.9 * result.baseline.success, result.text(load)
    # The noisy tenant was held to its share: most of its requests were answered 429 at once...
    assert result.noisy.limited > result.noisy.served > 0
    limited = [o for o in result.noisy_outcomes if o.status == 429]
    assert all(o.retry_after == "1" for o in limited)
    error = json.loads(limited[0].body)["error"]
    assert error["type"] == "rate_limit_exceeded" and "noisy" in error["message"]  # the OpenAI dialect
    # ...so the fallback provider never saw more than it can serve.
    assert result.provider_over_limit == 0
    assert result.capacity_after == {}  # every slot taken was freed: /status shows none in flight
    series = 'rungway_requests_limited_total{impact="customer_facing",reason="tenant_share",tenant="noisy"}'
    assert series in result.metrics
    assert 'tenant="quiet"' not in "\n".join(
        line for line in result.metrics.splitlines() if line.startswith("rungway_requests_limited_total")
    )


def test_slots_reserved_for_revenue_critical_work_are_its_alone_and_explain_says_why(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The fallback takes 3 at once, 1 of them kept for revenue_critical. The tenant shop's
    checkout task class is revenue_critical (its policy, not a header). While two ordinary
    requests hold the fallback, a third ordinary one is refused at once (503 + Retry-After, in
    the Anthropic dialect its SDK speaks) and a checkout request is served;
    `policy explain --admin` names the capacity reason."""
    load = Load(capacity=3)
    policy = isolation_policy(fleet.policy(tmp_path), load)
    policy["ladders"]["iso"][1]["capacity"] = {"max_in_flight": 3, "reserved": {"revenue_critical": 1}}
    policy["tasks"]["checkout"] = {"min_output_tokens": 1}
    policy["tenants"] = {"shop": {"tasks": {"checkout": {"impact": "revenue_critical"}}, "header_impacts": []}}
    fleet.reset()
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode("delay:0.2")
    try:
        with running(policy, env=KEY_ENV) as stack:
            key = stack.issue_key("shop")
            time.sleep(1.5)  # the workers read the key store about once a second
            asyncio.run(warm(stack.base_url, key))
            fleet.secondary.set_mode("delay:3")
            held: list[int] = []

            def ordinary() -> None:
                with stack.openai_as(key) as client:
                    raw = client.chat.completions.with_raw_response.create(model="iso-model", messages=HI)
                    held.append(raw.http_response.status_code)

            holders = [threading.Thread(target=ordinary) for _ in range(2)]
            for t in holders:
                t.start()
            time.sleep(1.0)  # both are on the fallback
            with stack.anthropic_as(key) as claude:
                # Claiming revenue_critical by header is not shop's to do (header_impacts: []).
                claimed = {"x-rungway-impact": "revenue_critical"}
                with pytest.raises(anthropic.APIStatusError) as refused:
                    claude.messages.create(model="iso-model", max_tokens=16, messages=HI, extra_headers=claimed)
            explain = [sys.executable, "-m", "extproc.cli", "policy", "explain", str(stack.policy_path)]
            explain += ["--tenant", "shop"]
            explain += ["--model", "iso-model", "--admin", stack.admin_url.removeprefix("http://")]
            explained = subprocess.run(explain, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            with stack.openai_as(key) as gpt:
                checkout = gpt.chat.completions.with_raw_response.create(
                    model="iso-model", messages=HI, extra_headers={"x-rungway-task": "checkout"}
                )
            for t in holders:
                t.join()
            metrics = stack.metrics()
    finally:
        fleet.reset()
    assert held == [200, 200]
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"  # Anthropic's shape
    assert "customer_facing" in body["error"]["message"]
    assert checkout.http_response.status_code == 200
    assert explained.returncode == 0, explained.stderr
    assert "capacity: the free slots are reserved for impacts above customer_facing" in explained.stdout
    series = 'rungway_requests_limited_total{impact="customer_facing",reason="reserved",tenant="shop"} 1.0'
    assert series in metrics
