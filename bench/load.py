"""Load generators: wrk (preferred, C, pinned to its own CPU) and an asyncio fallback whose
numbers are NOT comparable with wrk's (it is Python, and shares the CPUs with the sidecar)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_LUA = """
wrk.method = "POST"
local f = assert(io.open("{body_path}", "rb"))
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    bytes: int


def ensure_wrk() -> str | None:
    """The wrk binary; installs Debian's package when it is missing (root, apt)."""
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk is not installed: installing it with apt-get (Debian package 'wrk') ...", flush=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            capture_output=True,
            timeout=300,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"could not install wrk ({exc}); falling back to the asyncio load generator", flush=True)
        return None
    return shutil.which("wrk")


class Wrk:
    def __init__(self, binary: str, workdir: Path, cpu: int | None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.cpu = cpu
        self._scripts: dict[tuple[bytes, tuple[tuple[str, str], ...]], Path] = {}

    def _script(self, body: bytes, headers: dict[str, str]) -> Path:
        key = (body, tuple(sorted(headers.items())))
        if key not in self._scripts:
            n = len(self._scripts)
            body_path = self.workdir / f"body{n}.json"
            body_path.write_bytes(body)
            all_headers = {"content-type": "application/json", **headers}
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in all_headers.items())
            script = self.workdir / f"load{n}.lua"
            script.write_text(_LUA.format(body_path=body_path, headers=lines))
            self._scripts[key] = script
        return self._scripts[key]

    def run(self, url: str, body: bytes, headers: dict[str, str], *, connections: int, seconds: float) -> LoadResult:
        script = self._script(body, headers)
        cmd = [
            self.binary,
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        for line in out.stdout.splitlines():
            if line.startswith("WRKJSON "):
                data = json.loads(line.removeprefix("WRKJSON "))
                secs = data["duration_us"] / 1e6
                errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
                return LoadResult(
                    requests=data["requests"],
                    seconds=secs,
                    rps=data["requests"] / secs if secs else 0.0,
                    p50_ms=data["p50_us"] / 1000,
                    p90_ms=data["p90_us"] / 1000,
                    p99_ms=data["p99_us"] / 1000,
                    errors=errors,
                    bytes=data["bytes"],
                )
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


class AsyncioLoad:
    """Closed-loop HTTP/1.1 keep-alive clients on one event loop. Fallback only."""

    def run(self, url: str, body: bytes, headers: dict[str, str], *, connections: int, seconds: float) -> LoadResult:
        return asyncio.run(self._run(url, body, headers, connections, seconds))

    async def _run(
        self, url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
    ) -> LoadResult:
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        head = f"POST /{path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        request = head.encode() + body
        latencies: list[float] = []
        errors = 0
        total_bytes = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal errors, total_bytes
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                while time.monotonic() < deadline:
                    start = time.monotonic()
                    writer.write(request)
                    status, size = await _read_response(reader)
                    latencies.append(time.monotonic() - start)
                    total_bytes += size
                    if not 200 <= status < 400:
                        errors += 1
            finally:
                writer.close()

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.monotonic() - started
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

        return LoadResult(
            len(latencies), elapsed, len(latencies) / elapsed, pct(50), pct(90), pct(99), errors, total_bytes
        )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length: int | None = None
    chunked = False
    size = len(status_line)
    while True:
        line = await reader.readline()
        size += len(line)
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            line = await reader.readline()
            n = int(line.split(b";")[0], 16)
            data = await reader.readexactly(n + 2)
            size += len(line) + len(data)
            if n == 0:
                break
    elif length is not None:
        size += len(await reader.readexactly(length))
    return status, size
