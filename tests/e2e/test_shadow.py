"""Continuous verification through real Envoy (issue 13, D2): a sampled live request is also sent,
non-streamed, to the other rungs of its ladder, through Envoy's side listener, off the client's
path; each answer is judged and counted, a broken fallback is seen before it is needed, and the
client never sees any of it. With Envoy's crash check on."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import KEY_ENV, SECONDARY_KEY, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def shadowing(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policy = fleet.policy(tmp_path_factory.mktemp("shadow"))
    policy["shadow"] = {"share": 1.0, "timeout_s": 5, "max_in_flight": 8}
    policy["providers"]["secondary"]["cost_per_1k"] = {"input": 1.0, "output": 1.0}
    with running(policy, env=KEY_ENV) as stack:
        yield stack


@pytest.fixture
def shadow(fleet: Fleet, shadowing: Stack) -> Iterator[Stack]:
    fleet.reset()
    shadowing.envoy_trouble()
    yield shadowing
    fleet.reset()
    trouble = shadowing.envoy_trouble()
    assert not trouble, f"Envoy reported bugs or crashed: {trouble}"


def checks(stack: Stack, rung: int, verdict: str) -> float:
    pattern = rf'rungway_shadow_checks_total\{{[^}}]*rung="{rung}"[^}}]*verdict="{verdict}"[^}}]*\}} (\S+)'
    found = re.findall(pattern, stack.metrics())
    return sum(float(v) for v in found)


def eventually(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_a_sampled_request_is_shadowed_to_each_fallback_and_the_client_sees_only_its_answer(
    shadow: Stack, fleet: Fleet
) -> None:
    before = (checks(shadow, 1, "ok"), checks(shadow, 2, "ok"))
    reply = shadow.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert reply.headers["x-rungway-tier"] == "0" and reply.headers["x-rungway-degraded"] == "false"
    assert (reply.parse().choices[0].message.content or "").startswith("Hello from primary")
    assert eventually(lambda: checks(shadow, 1, "ok") > before[0] and checks(shadow, 2, "ok") > before[1])
    (asked,) = [r for r in fleet.secondary.requests if r.json and r.json.get("model") == "claude-fallback"]
    assert asked.path.endswith("/v1/messages") and "stream" not in (asked.json or {})  # its own dialect, whole
    assert asked.headers["x-api-key"] == SECONDARY_KEY  # the rung's own key, nothing of the client's
    assert not [h for h in asked.headers if h.startswith("x-rungway")]
    assert 'rungway_shadow_cost_total{ladder="main",rung="1",tenant="app"}' in shadow.metrics()


def test_a_broken_fallback_is_seen_before_it_is_needed(shadow: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("invalid_json")
    before = checks(shadow, 1, "schema_error")
    with shadow.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Hello from primary")  # the client's stream is the primary's, untouched
    assert eventually(lambda: checks(shadow, 1, "schema_error") > before)
    asked = [r for r in fleet.secondary.requests if r.json and r.json.get("model") == "claude-fallback"]
    assert asked and all("stream" not in (r.json or {}) for r in asked)  # a stream is shadowed whole


def test_a_shadow_that_fails_never_touches_the_clients_answer_or_the_health_board(shadow: Stack, fleet: Fleet) -> None:
    fleet.secondary.set_mode("status:500")
    fleet.small.set_mode("delay:10")  # past the shadow's 5 s budget
    before = checks(shadow, 2, "timeout")
    for _ in range(3):
        reply = shadow.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
        assert reply.headers["x-rungway-tier"] == "0"
    assert eventually(lambda: checks(shadow, 1, "server_error") >= 3)
    assert eventually(lambda: checks(shadow, 2, "timeout") > before, timeout=15)


def test_a_tenant_over_its_shadow_budget_is_not_shadowed(
    fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> None:
    policy = fleet.policy(tmp_path_factory.mktemp("shadow-budget"))
    policy["shadow"] = {"share": 1.0, "max_cost_per_tenant_hour": 0}
    fleet.reset()
    with running(policy, env=KEY_ENV) as stack:
        stack.openai().chat.completions.create(model="gpt-4o", messages=HI)
        assert eventually(lambda: 'rungway_shadow_skipped_total{reason="budget"} 2.0' in stack.metrics())
        assert not [r for r in fleet.secondary.requests if r.json and r.json.get("model") == "claude-fallback"]
        assert not stack.envoy_trouble()
