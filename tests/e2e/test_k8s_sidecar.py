"""The Kubernetes sidecar as deployed: `rungway up` run with the image's ENTRYPOINT and the base
manifest's own arguments, policy and secrets (their files laid out as the kubelet would mount
them, TMPDIR standing in for the /tmp emptyDir, loopback ports instead of the pod's). Its probes
answer without the admin token, /metrics only with it, the image's HEALTHCHECK passes, the key
store from the Secret is in force, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from extproc.runtime.supervisor import free_port
from tests.deploy.kustomize import build
from tests.deploy.mounts import lay_out_mounts
from tests.deploy.test_dockerfile import exec_form, last, stages
from tests.deploy.test_k8s import BASE, secret_data, sidecar_of
from tests.stack import ENVOY_TROUBLE, REPO

pytestmark = pytest.mark.e2e


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    log: Path
    listen: int
    admin: str
    token: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    root = tmp_path_factory.mktemp("pod")
    docs = build(BASE)
    spec, container = sidecar_of(docs)
    moved = lay_out_mounts(docs, spec, container, root)
    tmp = moved.path("/tmp")
    assert tmp.is_dir()  # the manifest mounts an emptyDir there
    listen, admin = free_port(), free_port()
    entrypoint = exec_form(last(stages()[-1], "ENTRYPOINT").value)
    # The pod's arguments after the image's entrypoint, then loopback ports (the last flag wins).
    argv = [*entrypoint[1:], *moved.args(container["args"])]
    argv += ["--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}", "--log-level", "warning"]
    log = root / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "extproc.cli", *argv],
            cwd=REPO,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("RUNGWAY_")}, "TMPDIR": str(tmp)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    token = secret_data(docs, "rungway-admin-token")["token"]
    running = Sidecar(process, log, listen, f"http://127.0.0.1:{admin}", token)
    try:
        # The startup probe: /readyz until it answers 200.
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, running.output()
            try:
                if httpx.get(f"{running.admin}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_the_probes_answer_without_the_token_and_metrics_need_it(sidecar: Sidecar) -> None:
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{sidecar.admin}{path}", timeout=5).status_code == 200, path
    ready = httpx.get(f"{sidecar.admin}/readyz", timeout=5).json()
    assert ready["envoy"] is True and ready["workers"] == [True, True]  # --workers 2 from the manifest
    assert httpx.get(f"{sidecar.admin}/metrics", timeout=5).status_code == 401
    metrics = httpx.get(f"{sidecar.admin}/metrics", headers={"authorization": f"Bearer {sidecar.token}"}, timeout=5)
    assert metrics.status_code == 200 and "rungway_" in metrics.text


def test_the_images_healthcheck_passes_against_it(sidecar: Sidecar) -> None:
    check = last(stages()[-1], "HEALTHCHECK").value
    command = exec_form(check.split("CMD", 1)[1].strip())
    command = [re.sub(r"http://127\.0\.0\.1:9901", sidecar.admin, word) for word in command]
    assert command[0] == "python"
    assert subprocess.run([sys.executable, *command[1:]], timeout=30).returncode == 0


def test_the_key_store_from_the_secret_is_in_force(sidecar: Sidecar) -> None:
    # The base's store holds no key yet: every caller is refused, in its SDK's dialect.
    url = f"http://127.0.0.1:{sidecar.listen}/v1"
    with (
        openai.OpenAI(base_url=url, api_key="rwk_unknown", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_sigterm_stops_it_cleanly(sidecar: Sidecar) -> None:
    sidecar.process.send_signal(signal.SIGTERM)
    # terminationGracePeriodSeconds is 30: `up` drains and exits well within it.
    assert sidecar.process.wait(timeout=30) == 0
    trouble = [line for line in sidecar.output().splitlines() if ENVOY_TROUBLE.search(line)]
    assert not trouble, trouble
