"""The health board through real Envoy: circuits, impact-ordered departure, quota signals,
contracts, the retry budget, /status — and a provider outage that ends."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import KEY_ENV, EnvoyGuard, Fleet
from tests.stack import RedisServer, Stack, body_of, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
PROBE_TEXT = "Reply with: ok"
# A Redis bus is a fleet bus: signed with a secret every member holds.
FLEET_ENV = {**KEY_ENV, "RUNGWAY_BUS_SECRET": "e2e-fleet-secret-0123456789abcdef"}


def health_policy(fleet: Fleet, key_dir: Path, **health: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "enabled": True,
        "min_samples": 3,
        "probe_interval_s": 0,
        "recovery_probe_s": 2,
        "circuit": {"minimum_calls": 3, "consecutive_failures": 3, "open_s": 5, "half_open_successes": 1},
        **health,
    }
    return fleet.policy(key_dir, health=settings)


def client_requests(mock: Any) -> list[Any]:
    """What a mock provider received from clients (not Rungway's own probes)."""
    return [r for r in mock.requests if PROBE_TEXT not in r.body.decode(errors="replace")]


def status(stack: Stack) -> dict[str, Any]:
    with httpx.Client(timeout=10) as client:
        reply: dict[str, Any] = client.get(stack.admin_url + "/status").json()
    return reply


def endpoint(
    stack: Stack, key: str, timeout: float = 3.0, until: Callable[[dict[str, Any]], bool] = lambda row: True
) -> dict[str, Any]:
    """The endpoint's row in /status, once the bus has delivered what the workers observed
    (`until`: what the row must show; the supervisor's replica hears the workers a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        row = next((r for r in status(stack)["rungs"] if r["endpoint"] == key), None)
        if (row is not None and until(row)) or time.monotonic() > deadline:
            assert row is not None, f"{key} never reached /status"
            found: dict[str, Any] = row
            return found
        time.sleep(0.05)


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


def ask(stack: Stack, **extra: Any) -> Any:
    return stack.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, **extra)


def test_an_open_circuit_sends_no_traffic_to_its_rung(fresh: Fleet, tmp_path: Path) -> None:
    with running(
        health_policy(fresh, tmp_path, circuit={"consecutive_failures": 3, "open_s": 30}), env=KEY_ENV
    ) as stack:
        fresh.primary.set_mode("status:503")
        for _ in range(3):
            assert ask(stack).headers["x-rungway-served-by"] == "secondary/claude-fallback"
        assert endpoint(stack, "primary/gpt-4o")["circuit"]["state"] == "open"
        before = len(client_requests(fresh.primary))
        started = time.monotonic()
        for _ in range(5):
            raw = ask(stack)
            # Straight to the healthy rung: no try, no timeout paid at the broken one.
            assert raw.headers["x-rungway-attempts"] == "1"
            assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
            assert raw.headers["x-rungway-reason"] == "server_error"
        assert len(client_requests(fresh.primary)) == before
        assert time.monotonic() - started < 3


def test_low_stakes_traffic_leaves_a_sick_rung_first(fresh: Fleet, tmp_path: Path) -> None:
    # 55 % of the primary's answers fail: score about 0.45. The circuit is set not to open
    # (threshold 90 %), so only the impact-class thresholds decide.
    policy = health_policy(
        fresh, tmp_path, min_samples=4, circuit={"failure_rate_threshold": 90, "consecutive_failures": 50}
    )
    with running(policy, env=KEY_ENV) as stack:
        fresh.primary.set_mode("brownout:0.55:0:0:60")
        for _ in range(12):
            ask(stack)
        score = endpoint(stack, "primary/gpt-4o")["score"]
        assert 0.3 < score < 0.6
        assert endpoint(stack, "primary/gpt-4o")["circuit"]["state"] == "closed"

        def first_try(impact: str) -> str:
            before = len(client_requests(fresh.primary))
            ask(stack, extra_headers={"x-rungway-impact": impact})
            return "primary" if len(client_requests(fresh.primary)) > before else "elsewhere"

        assert first_try("deferrable") == "elsewhere"  # leaves below 0.7
        assert first_try("async_acceptable") == "elsewhere"  # below 0.6
        assert first_try("revenue_critical") == "primary"  # stays until 0.2


def test_a_quota_signal_moves_traffic_before_the_429(fresh: Fleet, tmp_path: Path) -> None:
    with running(health_policy(fresh, tmp_path), env=KEY_ENV) as stack:
        fresh.primary.set_mode("quota:0:20", times=1)
        assert ask(stack).headers["x-rungway-served-by"] == "primary/gpt-4o"  # answered, but "0 left"
        raw = ask(stack)
        assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
        assert raw.headers["x-rungway-reason"] == "rate_limited" and raw.headers["x-rungway-attempts"] == "1"
        assert len(client_requests(fresh.primary)) == 1
        assert endpoint(stack, "primary/gpt-4o")["quota_until"] is not None


def test_a_json_schema_contract_makes_a_non_conforming_200_a_partial_outage(fresh: Fleet, tmp_path: Path) -> None:
    policy = health_policy(fresh, tmp_path)
    policy["tasks"]["extractor"] = {
        "json_schema": {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
    }
    with running(policy, env=KEY_ENV) as stack:
        headers = {"x-rungway-task": "extractor"}
        fresh.secondary.set_mode("json")
        raw = ask(stack, extra_headers=headers)  # the primary answers prose: breaks the schema
        assert raw.headers["x-rungway-reason"] == "schema_error"
        assert json.loads(raw.parse().choices[0].message.content or "")["answer"]
        # The request's own schema counts too (response_format json_schema): no rung's JSON has
        # a "verdict", so every try is a partial outage and the client gets a clear 502.
        fresh.primary.set_mode("json")
        schema = {"type": "object", "required": ["verdict"], "properties": {"verdict": {"type": "string"}}}
        with pytest.raises(openai.InternalServerError) as info:
            ask(stack, response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": schema}})
        response = info.value.response
        assert response.status_code == 502 and response.headers["x-rungway-reason"] == "schema_error"
        assert "verdict" in response.json()["error"]["message"] or "JSON" in response.json()["error"]["message"]
        assert body_of(fresh.primary.requests[-1])["response_format"]["json_schema"]["schema"] == schema


def test_the_retry_budget_bounds_extra_tries_fleet_wide(fresh: Fleet, tmp_path: Path, envoy_guard: EnvoyGuard) -> None:
    # Circuits and scores never move traffic here: only the retry budget limits the tries.
    policy = health_policy(
        fresh,
        tmp_path,
        circuit={"failure_rate_threshold": 100, "consecutive_failures": 10_000, "minimum_calls": 10_000},
        leave_below={"revenue_critical": 0, "customer_facing": 0, "async_acceptable": 0, "deferrable": 0},
        retry_budget_ratio=0.2,
        retry_budget_floor=2,
        retry_budget_window_s=60,
    )
    with running(policy, env=KEY_ENV) as stack:
        fresh.primary.set_mode("status:503")
        answered = 0
        for _ in range(20):
            try:
                stack.openai().chat.completions.create(model="gpt-4o", messages=HI)
                answered += 1
            except openai.InternalServerError:
                pass
        served_elsewhere = len(fresh.secondary.requests) + len(fresh.small.requests)
        extra = len(fresh.primary.requests) - 20 + served_elsewhere  # same-rung retries count too
        # At most 20 % of the requests plus the floor of 2 (one in flight may overshoot by one).
        assert extra <= 0.2 * 20 + 2 + 1
        assert answered == served_elsewhere


def test_status_and_the_status_cli_show_circuits_and_scores(fresh: Fleet, tmp_path: Path) -> None:
    with running(health_policy(fresh, tmp_path), env=KEY_ENV) as stack:
        fresh.primary.set_mode("invalid_json")
        for _ in range(3):
            ask(stack)
        snapshot = endpoint(stack, "primary/gpt-4o", until=lambda row: row["circuit"]["state"] == "open")
        assert snapshot["circuit"]["state"] == "open"
        assert snapshot["last_trip"]["reason"] == "schema_error"
        assert snapshot["components"]["schema"] == 0.0
        assert status(stack)["bus"]["kind"] == "hub-server"
        out = subprocess.run(
            [sys.executable, "-m", "extproc.cli", "status", "--admin", f"127.0.0.1:{stack.state['admin_port']}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        line = next(row for row in out.stdout.splitlines() if row.startswith("primary/gpt-4o"))
        assert "open" in line and "schema_error" in line
        metrics = stack.metrics()
        assert 'rungway_circuit_state{endpoint="primary/gpt-4o"} 2.0' in metrics
        assert 'rungway_degradation_score{endpoint="secondary/claude-fallback"}' in metrics


def probes_of(mock: Any, model: str) -> list[float]:
    """When Rungway's synthetic probes of `model` reached a mock provider (time.monotonic())."""
    return [
        r.at
        for r in mock.requests
        if PROBE_TEXT in r.body.decode(errors="replace") and isinstance(r.json, dict) and r.json.get("model") == model
    ]


def most_in_a_minute(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 60) for t in times), default=0)


def test_flap_the_primary_fails_for_60s_then_recovers(fresh: Fleet, tmp_path: Path) -> None:
    """The issue's flap scenario: primary 503 for 60 s, then healthy; 20 requests 4 s apart.
    Two passing probes close the circuit; recovery probes every 5 s; a hold of 45 s (a flapping
    rung's doubled open_s is longer still). The hold ends at about 53 s, mid-outage: a failing
    probe there used to re-open the circuit for another hold (live traffic back only after about
    100 s). Now the open circuit is probed all along and failing probes do not prolong it, so
    the recovery is found within seconds."""
    circuit = {"consecutive_failures": 3, "open_s": 45, "half_open_successes": 2}
    policy = health_policy(fresh, tmp_path, recovery_probe_s=5, circuit=circuit)
    with running(policy, env=KEY_ENV) as stack:
        fresh.primary.set_mode("status:503")
        start = time.monotonic()
        served: list[tuple[float, str]] = []
        primary_during_outage = 0
        recovered = False
        recovered_at = recovered_wall = math.inf
        for i in range(20):
            target = start + 4 * i
            time.sleep(max(0.0, target - time.monotonic()))
            if not recovered and time.monotonic() - start >= 60:
                fresh.primary.set_mode("ok")
                recovered = True
                recovered_at, recovered_wall = time.monotonic() - start, time.time()
            before = len(client_requests(fresh.primary))
            raw = ask(stack)  # raises on anything but a 2xx: every request is answered
            if not recovered:
                primary_during_outage += len(client_requests(fresh.primary)) - before
            served.append((time.monotonic() - start, raw.headers["x-rungway-served-by"]))
        # Once the circuit opened (after 3 failures), no client request went to the dead primary:
        # the first two requests each tried it twice (a 503 gets the same rung once).
        assert primary_during_outage <= 4
        back = [t for t, by in served if by == "primary/gpt-4o" and t >= recovered_at]
        assert back, served
        assert back[0] - recovered_at <= 30, served
        # During the outage, once open: probes only, every recovery_probe_s: at most 12 a minute.
        opened = start + 9  # after the live request at 8 s, the third failure
        outage = [at for at in (r.at for r in fresh.primary.requests) if opened < at < start + recovered_at]
        assert most_in_a_minute(outage) <= 60 / 5, outage
        closed = endpoint(stack, "primary/gpt-4o")["circuit"]["last_transition"]
        assert closed["target"] == "closed" and closed["at"] - recovered_wall <= 20, closed
        print(
            f"\nflap: circuit closed {closed['at'] - recovered_wall:.1f} s after the recovery ({closed['reason']});"
            f" first live request on the primary {back[0] - recovered_at:.1f} s after it;"
            f" primary calls while open: {len(outage)} in {recovered_at - 9:.0f} s"
            f" (at most {most_in_a_minute(outage)} in a minute)"
        )


def test_probes_wait_out_a_retry_after_and_are_no_tenants_traffic(fresh: Fleet, tmp_path: Path) -> None:
    """The issue's 429: Retry-After 3 s, and no probe of that model inside it, though probes
    of it are otherwise due every half second."""
    policy = health_policy(fresh, tmp_path, probe_interval_s=0.5, recovery_probe_s=0.5)
    with running(policy, env=KEY_ENV) as stack:
        assert ask(stack).headers["x-rungway-served-by"] == "primary/gpt-4o"  # a client-named model: a target
        deadline = time.monotonic() + 10
        while len(probes_of(fresh.primary, "gpt-4o")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(probes_of(fresh.primary, "gpt-4o")) >= 2
        fresh.primary.set_mode("status:429:3")
        raw = ask(stack)
        assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
        limited_at = client_requests(fresh.primary)[-1].at
        time.sleep(4.5)
        fresh.primary.set_mode("ok")
        after = [at for at in probes_of(fresh.primary, "gpt-4o") if at > limited_at]
        assert after, "probes resume once the Retry-After is over"
        assert min(after) >= limited_at + 2.9, [round(at - limited_at, 2) for at in after]
        metrics = stack.metrics()
        # Probes have their own series; the app tenant's count is the two client requests.
        assert 'rungway_probes_total{endpoint="primary/gpt-4o",outcome="ok"}' in metrics
        decided = [
            line
            for line in metrics.splitlines()
            if line.startswith("rungway_decisions_total{") and 'tenant="app"' in line
        ]
        assert [float(line.rsplit(" ", 1)[1]) for line in decided] == [2.0], decided
        served = [line for line in metrics.splitlines() if line.startswith("rungway_served_total{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in served) == 2.0, served


def test_two_sidecars_on_one_bus_probe_an_endpoint_once_per_interval_between_them(fresh: Fleet, tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    try:
        policy = health_policy(fresh, tmp_path, bus=redis.url, probe_interval_s=2)
        with running(policy, env=FLEET_ENV) as a, running(policy, env=FLEET_ENV) as b:
            for stack in (a, b):
                assert status(stack)["bus"]["connected"] is True
            time.sleep(2)  # both probers settled into their schedules
            since = time.monotonic()
            time.sleep(12)
            probed = [at for at in probes_of(fresh.primary, "gpt-fallback") if at >= since]
            # One probe every 2 to 2.5 s between the two of them (each alone would send as many).
            assert 3 <= len(probed) <= 12 / 2 + 1, probed
            sent = [
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in stack.metrics().splitlines()
                    if line.startswith('rungway_probes_total{endpoint="primary/gpt-fallback"')
                )
                for stack in (a, b)
            ]
            assert sum(sent) >= len(probed), sent  # each supervisor counts the probes it sent
    finally:
        redis.stop()


def test_two_sidecars_sharing_redis_see_the_same_picture(fresh: Fleet, tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    try:
        policy = health_policy(fresh, tmp_path, bus=redis.url, circuit={"consecutive_failures": 3, "open_s": 30})
        with running(policy, env=FLEET_ENV) as a, running(policy, env=FLEET_ENV) as b:
            fresh.primary.set_mode("status:503")
            for _ in range(3):
                ask(a)  # only sidecar A meets the broken primary
            # /status is the supervisor's replica of the board, fed by the bus (Redis here).
            deadline = time.monotonic() + 3
            while endpoint(a, "primary/gpt-4o")["circuit"]["state"] != "open" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert endpoint(a, "primary/gpt-4o")["circuit"]["state"] == "open"
            bus = status(b)["bus"]
            assert (bus["kind"], bus["connected"]) == ("redis", True)
            # B learned it through Redis: it never sends a client to the primary.
            deadline = time.monotonic() + 3
            while endpoint(b, "primary/gpt-4o")["circuit"]["state"] != "open" and time.monotonic() < deadline:
                time.sleep(0.05)
            before = len(client_requests(fresh.primary))
            raw = ask(b)
            assert raw.headers["x-rungway-attempts"] == "1"
            assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
            assert len(client_requests(fresh.primary)) == before
            # Losing Redis degrades to local state, never to an outage.
            redis.stop()
            fresh.primary.set_mode("ok")
            for stack in (a, b):
                assert ask(stack).status_code == 200
            assert status(b)["bus"]["connected"] is False
    finally:
        redis.stop()


def test_brownout_replay_compressed_tenfold() -> None:
    """The write-ups' brownout (p95 2 s → 38 s, 31 % 503s), ten times faster: with the health
    board on, at most their router's 1.2 % hard failures and a clearly lower p95 than the ladder
    alone. (The full-scale figures, p95 against their 6.4 s, come from `python -m bench.brownout`;
    compressed ten-fold, scheduling noise on a 2-core machine is too large a share of a p95.)"""
    import asyncio

    from bench.brownout import run_all

    direct, ladder, circuits = asyncio.run(run_all(scale=0.1, duration=12.0, rate=40.0))
    assert direct.failure_rate > 0.2  # the outage is real
    assert circuits.failure_rate <= 0.012
    assert circuits.p95_s < 0.65 * ladder.p95_s
    assert circuits.p50_s < 0.5 * ladder.p50_s
    assert circuits.attempts_per_request < ladder.attempts_per_request


def test_a_canary_share_keeps_fallback_rungs_measured_but_never_for_revenue_critical(
    fresh: Fleet, tmp_path: Path
) -> None:
    with running(health_policy(fresh, tmp_path, canary_share=0.5), env=KEY_ENV) as stack:
        reasons = [ask(stack).headers["x-rungway-reason"] for _ in range(30)]
        canaries = reasons.count("canary")
        assert 5 <= canaries <= 25, reasons  # about half
        assert set(reasons) <= {"canary", "none"}
        assert len(client_requests(fresh.secondary)) == canaries  # served there, on purpose
        before = len(client_requests(fresh.secondary))
        for _ in range(10):
            raw = ask(stack, extra_headers={"x-rungway-impact": "revenue_critical"})
            assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
        assert len(client_requests(fresh.secondary)) == before
