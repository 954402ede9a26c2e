"""Rungway in a mesh's Envoy, end to end: the EnvoyFilter `rungway envoy-config --istio-selector`
renders, loaded into a real Envoy the way istio-proxy would hold it (tests/deploy/test_istio.py
`istio_proxy_bootstrap`), with a lone `rungway serve --socket-mode 660` worker and no supervisor.
The official SDK is served through it, a failing primary falls back, and a dead worker is a 503
that reaches no provider — then the restarted worker serves again, with Envoy never restarted."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from extproc.runtime.keyfile import add_key
from extproc.runtime.supervisor import envoy_binary, free_port
from tests.conftest import KEY_ENV, Fleet
from tests.deploy.test_istio import istio_proxy_bootstrap
from tests.stack import ENVOY_TROUBLE, REPO

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Mesh:
    dir: Path
    socket: Path
    port: int
    admin_port: int
    app_key: str
    worker_argv: list[str]
    envoy: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        log = open(self.dir / "worker.log", "ab")  # noqa: SIM115 - the child holds it
        self.worker = subprocess.Popen(
            self.worker_argv, cwd=REPO, env={**os.environ, **KEY_ENV}, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            assert self.worker.poll() is None and time.monotonic() < deadline, (self.dir / "worker.log").read_text()
            time.sleep(0.05)

    def stop_worker(self) -> None:
        assert self.worker is not None
        self.worker.kill()
        self.worker.wait(timeout=30)
        self.worker = None

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.app_key, max_retries=0)

    def ask(self) -> Any:
        """The raw answer to one chat completion (the client closed after it)."""
        with self.client() as client:
            return client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)

    def envoy_trouble(self) -> list[str]:
        text = (self.dir / "envoy.log").read_text(errors="replace")
        trouble = [line for line in text.splitlines() if ENVOY_TROUBLE.search(line)]
        if self.envoy.poll() is not None:
            trouble.append(f"Envoy exited ({self.envoy.returncode})")
        return trouble


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mesh(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    sockets = root / "sockets"  # the emptyDir istio-proxy and the worker share
    sockets.mkdir()
    store = root / "keys.json"
    app_key, _ = add_key(store, "app")
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(fleet.policy(root, clients={"key_store": str(store)})))
    token = root / "channel-token"
    token.write_text(secrets.token_hex(32))
    port, admin_port = free_port(), free_port()
    sock = sockets / "worker-0.sock"
    rendered = root / "envoyfilter.yaml"
    subprocess.run(
        [
            sys.executable, "-m", "extproc.cli", "envoy-config",
            "--policy", str(policy), "--listen", f"127.0.0.1:{port}",
            "--extproc-socket", str(sock), "--channel-token-file", str(token),
            "--istio-selector", "app=support-bot", "-o", str(rendered),
        ],
        cwd=REPO, check=True, env={**os.environ, **KEY_ENV},
    )  # fmt: skip
    config = root / "istio-proxy.yaml"
    config.write_text(yaml.safe_dump(istio_proxy_bootstrap(yaml.safe_load(rendered.read_text()), admin_port)))
    worker_argv = [
        sys.executable, "-m", "extproc.cli", "serve", "--policy", str(policy), "--socket", str(sock),
        "--socket-mode", "660", "--channel-token-file", str(token), "--log-level", "warning",
    ]  # fmt: skip
    envoy_log = open(root / "envoy.log", "wb")  # noqa: SIM115 - closed below
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--log-level", "warning"],
        stdout=envoy_log,
        stderr=subprocess.STDOUT,
    )
    m = Mesh(root, sock, port, admin_port, app_key, worker_argv, envoy)
    try:
        m.start_worker()
        _wait_for_port(port, envoy, root / "envoy.log")
        yield m
        assert not m.envoy_trouble(), m.envoy_trouble()
    finally:
        if m.worker is not None:
            m.stop_worker()
        envoy.terminate()
        envoy.wait(timeout=30)
        envoy_log.close()


def _served(mesh: Mesh) -> openai.types.chat.ChatCompletion | None:
    """The answer once Envoy's health checks have found the worker (at most a second or two)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            served: openai.types.chat.ChatCompletion = mesh.ask().parse()
            return served
        except openai.InternalServerError:
            time.sleep(0.2)
    return None


def test_the_sdk_is_served_through_the_mesh_proxy(mesh: Mesh, fleet: Fleet) -> None:
    fleet.reset()
    assert _served(mesh) is not None
    raw = mesh.ask()
    assert raw.headers["x-rungway-served-by"] == "primary/gpt-4o"
    assert raw.parse().model == "gpt-4o"
    assert fleet.primary.requests[-1].headers["authorization"] == f"Bearer {KEY_ENV['RW_TEST_PRIMARY_KEY']}"
    assert not mesh.envoy_trouble()


def test_a_failing_primary_falls_back_in_the_mesh_too(mesh: Mesh, fleet: Fleet) -> None:
    fleet.reset()
    assert _served(mesh) is not None
    fleet.primary.set_mode("status:503")
    raw = mesh.ask()
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert (raw.headers["x-rungway-degraded"], raw.headers["x-rungway-reason"]) == ("true", "server_error")
    assert fleet.secondary.requests[-1].path == "/v1/messages"
    fleet.reset()
    assert not mesh.envoy_trouble()


def test_a_dead_worker_is_a_503_that_reaches_no_provider_until_it_is_back(mesh: Mesh, fleet: Fleet) -> None:
    fleet.reset()
    assert _served(mesh) is not None
    mesh.stop_worker()
    mesh.socket.unlink(missing_ok=True)  # so start_worker below waits for the new worker's socket
    sent = (len(fleet.primary.requests), len(fleet.secondary.requests), len(fleet.small.requests))
    with pytest.raises(openai.InternalServerError) as refused:
        mesh.ask()
    assert refused.value.status_code == 503
    assert (len(fleet.primary.requests), len(fleet.secondary.requests), len(fleet.small.requests)) == sent
    mesh.start_worker()
    served = _served(mesh)
    assert served is not None and served.model == "gpt-4o"
    assert not mesh.envoy_trouble()
