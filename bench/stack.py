"""`rungway up` as a subprocess, exactly as tests/stack.py starts it, plus the Python mock
providers in their own process (the upstream that writes SSE events one by one)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.runtime.keyfile import add_key

from .procs import Procs, envoy_admin, pin

REPO = Path(__file__).absolute().parent.parent


@dataclass
class RungwayStack:
    name: str
    workers: int
    state: dict[str, Any]
    key: str  # the load generator's client key

    @property
    def port(self) -> int:
        return int(self.state["listen_port"])

    @property
    def envoy_pid(self) -> int:
        return int(self.state["envoy_pid"])

    @property
    def worker_pids(self) -> list[int]:
        return [int(p) for p in self.state["worker_pids"]]

    @property
    def envoy_admin_socket(self) -> str:
        return str(self.state["envoy_admin_socket"])

    def envoy_stats(self, prefix_filter: str) -> dict[str, int]:
        data = envoy_admin(self.envoy_admin_socket, f"/stats?format=json&filter={prefix_filter}").json()
        return {s["name"]: s["value"] for s in data.get("stats", []) if isinstance(s.get("value"), int)}


def start_rungway(
    procs: Procs, name: str, policy: dict[str, Any], *, workers: int, envoy_cpu: int | None, timeout: float = 60.0
) -> RungwayStack:
    policy_path = procs.dir / f"{name}-policy.yaml"
    # Every caller is authenticated: a key store and one key for the load generator.
    key_store = procs.dir / f"{name}-keys.json"
    policy = {**policy, "clients": {"key_store": str(key_store)}}
    key, _ = add_key(key_store, "bench")
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    state_path = procs.dir / f"{name}-state.json"
    cmd = [
        sys.executable, "-m", "extproc.cli", "up",
        "--policy", str(policy_path),
        "--listen", "127.0.0.1:0",
        "--admin", "127.0.0.1:0",
        "--workers", str(workers),
        "--envoy-concurrency", "1",
        "--access-log", "/dev/null",
        "--state-file", str(state_path),
        # Each stack its own audit trail: the trail's default is beside the state file, and two
        # stacks writing one chain is refused.
        "--audit-dir", str(procs.dir / f"{name}-audit"),
        "--log-level", "warning",
    ]  # fmt: skip
    proc = procs.start(name, cmd, cwd=str(REPO))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rungway up ({name}) exited with code {proc.returncode}:\n{procs.tail(name)}")
        if state_path.exists():
            state: dict[str, Any] = json.loads(state_path.read_text())
            stack = RungwayStack(name, workers, state, key)
            if envoy_cpu is not None:
                pin(stack.envoy_pid, envoy_cpu)
            _await_workers_healthy(stack, deadline)
            return stack
        time.sleep(0.05)
    raise RuntimeError(f"rungway up ({name}) did not start in {timeout:.0f}s:\n{procs.tail(name)}")


def _await_workers_healthy(stack: RungwayStack, deadline: float) -> None:
    """Envoy health-checks the workers once a second; wait until all are in rotation."""
    while time.monotonic() < deadline:
        data = envoy_admin(stack.envoy_admin_socket, "/clusters?format=json").json()
        for cluster in data.get("cluster_statuses", []):
            if cluster.get("name") != "rungway_extproc":
                continue
            hosts = cluster.get("host_statuses", [])
            healthy = [h for h in hosts if not h.get("health_status", {}).get("failed_active_health_check")]
            if len(hosts) == stack.workers and len(healthy) == stack.workers:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{stack.name}: sidecar workers did not become healthy in Envoy")


@dataclass
class MockProcess:
    openai_port: int
    anthropic_port: int
    pid: int


def start_mock(procs: Procs, *, token_interval: float, timeout: float = 30.0) -> MockProcess:
    ready_path = procs.dir / "mock.ready"
    cmd = [
        sys.executable, "-m", "extproc.demo.mock_provider",
        "--provider", "mo=openai:0",
        "--provider", "ma=anthropic:0",
        "--token-interval", str(token_interval),
        "--max-recorded", "16",
    ]  # fmt: skip
    with open(ready_path, "wb") as out:
        proc = procs.start("mock", cmd, cwd=str(REPO), stdout=out.fileno())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mock provider exited with code {proc.returncode}:\n{procs.tail('mock')}")
        text = ready_path.read_text().strip()
        if text:
            ready = json.loads(text.splitlines()[0])
            urls = ready["providers"]
            return MockProcess(int(urls["mo"].rsplit(":", 1)[1]), int(urls["ma"].rsplit(":", 1)[1]), proc.pid)
        time.sleep(0.05)
    raise RuntimeError("mock provider did not start in time")
