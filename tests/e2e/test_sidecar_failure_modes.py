"""What clients see when the sidecar itself is down: a clean 503 in their dialect, never a request
that reaches a provider without the sidecar (it alone authenticates callers and holds keys)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import KEY_ENV, PRIMARY_KEY, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_dead_sidecar_means_503_in_the_clients_dialect_and_no_provider_call(fresh: Fleet, tmp_path: Path) -> None:
    # Fail closed, always: only the sidecar authenticates callers and holds the providers' keys.
    with running(fresh.policy(tmp_path), env=KEY_ENV, restart=False) as stack:
        stack.kill_workers()
        time.sleep(0.5)
        response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "server_error"
        response = stack.post("/v1/messages", {"model": "claude-x", "max_tokens": 5, "messages": HI})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "overloaded_error"
        assert not fresh.primary.requests and not fresh.secondary.requests


def test_a_killed_worker_is_restarted_and_traffic_resumes(fresh: Fleet, tmp_path: Path) -> None:
    with running(fresh.policy(tmp_path), env=KEY_ENV, workers=2) as stack:
        before = stack.refresh_state()["worker_pids"]
        stack.kill_workers()
        assert wait_until(lambda: set(stack.refresh_state()["worker_pids"]).isdisjoint(before))

        def serves() -> bool:
            response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
            return response.status_code == 200 and response.headers.get("x-rungway-served-by") == "primary/gpt-4o"

        assert wait_until(serves, timeout=15)
        # Both workers take traffic again (Envoy round-robins over them).
        for _ in range(6):
            assert serves()
        assert fresh.primary.requests[-1].headers["authorization"] == f"Bearer {PRIMARY_KEY}"


def test_sigterm_lets_an_in_flight_request_finish(fresh: Fleet, tmp_path: Path) -> None:
    stack = Stack(fresh.policy(tmp_path), env=KEY_ENV)
    try:
        fresh.primary.set_mode("delay:1")
        result: dict[str, int] = {}

        def ask() -> None:
            result["status"] = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}).status_code

        worker = threading.Thread(target=ask)
        worker.start()
        time.sleep(0.4)
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=20) == 0
        worker.join(timeout=10)
        assert result == {"status": 200}
        assert len(fresh.primary.requests) == 1
    finally:
        stack.stop()


def test_an_envoy_restart_is_never_silent(fresh: Fleet, tmp_path: Path) -> None:
    with running(fresh.policy(tmp_path), env=KEY_ENV, envoy_trouble_expected=True) as stack:
        for mock in (fresh.primary, fresh.secondary):
            mock.set_mode("delay:8")
        errors: list[BaseException] = []

        def in_flight() -> None:
            try:
                stack.openai().chat.completions.create(model="gpt-4o", messages=HI)
            except BaseException as exc:  # the crash cuts it
                errors.append(exc)

        threads = [threading.Thread(target=in_flight) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(2.5)  # the supervisor has seen them in flight (it looks once a second)
        os.kill(int(stack.refresh_state()["envoy_pid"]), signal.SIGSEGV)
        for t in threads:
            t.join(timeout=30)
        assert len(errors) == 3  # every in-flight request was cut
        assert wait_until(lambda: stack.refresh_state().get("envoy_restarts") == 1, timeout=30)
        fresh.reset()
        assert wait_until(lambda: _answers(stack), timeout=30)  # Envoy is back
        with httpx.Client(timeout=10) as client:
            envoy = client.get(stack.admin_url + "/status").json()["envoy"]
        assert envoy["restarts"] == 1 and envoy["requests_lost"] >= 1
        assert envoy["last_restart"]["exit"] == "signal SIGSEGV"
        metrics = stack.metrics()
        assert "rungway_envoy_restarts_total 1.0" in metrics
        assert "Envoy exited (signal SIGSEGV)" in stack.output()
        assert stack.envoy_trouble()  # what the e2e guard sees for every other test


def _answers(stack: Stack) -> bool:
    try:
        return stack.openai().chat.completions.create(model="gpt-4o", messages=HI).model == "gpt-4o"
    except openai.APIError:
        return False
