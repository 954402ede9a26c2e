"""Brownout replay: the write-ups' provider brownout against three set-ups, same load.

The primary's latency climbs from 2 s toward 38 s and 31 % of its answers are 503s (after a
short healthy start, so baselines exist); the fallback provider stays healthy. Open-loop load
(requests arrive at a fixed rate whatever the answers do), measured as the client sees it:

* `direct`: the app calls the primary itself (no Envoy, no Rungway) — the outage as it was;
* `ladder`: Rungway's ladder with its health board off: every request starts at the primary;
* `circuits`: the same with circuits, scores and probes on.

`python -m bench.brownout` runs it at full scale (~7 min) and writes bench/BROWNOUT.md;
`--scale 0.1` compresses every time (latencies, timeouts, windows) ten-fold. The end-to-end
test runs the compressed replay. `BROWNOUT_TRACE=1` prints one line per request (set-up, sent
at, took, served by) to see where a tail comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from extproc.demo.mock_provider import MockProvider

REPO = Path(__file__).resolve().parent.parent
PROBE_TEXT = "Reply with: ok"
HI = [{"role": "user", "content": "Where is my order #1234?"}]


@dataclass
class Result:
    variant: str
    requests: int
    hard_failures: int
    p50_s: float
    p95_s: float
    attempts_per_request: float
    primary_share: float

    @property
    def failure_rate(self) -> float:
        return self.hard_failures / self.requests if self.requests else 0.0

    def row(self, scale: float) -> str:
        return (
            f"| {self.variant} | {self.requests} | {self.failure_rate:.1%} | {self.p50_s / scale:.2f} s "
            f"| {self.p95_s / scale:.2f} s | {self.attempts_per_request:.2f} | {self.primary_share:.0%} |"
        )


def policy(primary: MockProvider, fallback: MockProvider, *, scale: float, circuits: bool) -> dict[str, Any]:
    return {
        "version": "brownout-replay",
        "envoy_ejection": None,  # compare Rungway's own board with and without, nothing else
        "providers": {
            "primary": {"base_url": primary.url, "dialect": "openai"},
            "fallback": {"base_url": fallback.url, "dialect": "anthropic"},
        },
        "ladders": {
            "main": [
                {"provider": "primary", "timeout_s": 10 * scale},
                {"provider": "fallback", "model": "claude-fallback", "timeout_s": 30 * scale},
            ]
        },
        "models": [{"match": "*", "ladder": "main"}],
        "route_timeout_s": 120 * scale,
        "health": {
            "enabled": circuits,
            "window_s": 60 * scale,
            "latency_slo_s": 60 * scale,
            "latency_floor_s": 0.5 * scale,
            "probe_interval_s": 0,
            "recovery_probe_s": 5 * scale,
            "circuit": {"window_s": 60 * scale, "open_s": 30 * scale, "probe_bound_s": 30 * scale},
        },
    }


async def _start_up(policy_data: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy_data, sort_keys=False))
    state = workdir / "state.json"
    state.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "extproc.cli", "up", "--policy", str(policy_path),
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--access-log", "/dev/null",
            "--state-file", str(state), "--log-level", "warning",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not state.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("rungway up did not start")
        await asyncio.sleep(0.05)
    return process, int(json.loads(state.read_text())["listen_port"])


async def replay(variant: str, *, scale: float, duration: float, rate: float) -> Result:
    primary = MockProvider("primary", "openai", token_interval=0)
    fallback = MockProvider("fallback", "anthropic", token_interval=0)
    await primary.start()
    await fallback.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        if variant == "direct":
            base = primary.url
        else:
            workdir = Path(tempfile.mkdtemp(prefix="rungway-brownout-"))
            process, port = await _start_up(
                policy(primary, fallback, scale=scale, circuits=variant == "circuits"), workdir
            )
            base = f"http://127.0.0.1:{port}"
        healthy = 2 * scale
        primary.set_mode(f"delay:{healthy}")
        fallback.set_mode(f"delay:{1.5 * scale}")
        latencies: list[float] = []
        failures = 0

        async def one(session: aiohttp.ClientSession) -> None:
            nonlocal failures
            started = time.monotonic()
            served_by = "failed"
            try:
                async with session.post(
                    base + "/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}
                ) as response:
                    body = await response.read()
                    served_by = response.headers.get("x-rungway-served-by", "-")
                    if response.status != 200:
                        failures += 1
                        if os.environ.get("BROWNOUT_DEBUG"):
                            print(variant, response.status, dict(response.headers).get("x-rungway-reason"), body[:150])
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
            latencies.append(time.monotonic() - started)
            if os.environ.get("BROWNOUT_TRACE"):  # one line per request: sent at, took, served by
                print(variant, f"{started - start:.2f}", f"{time.monotonic() - started:.3f}", served_by)

        timeout = aiohttp.ClientTimeout(total=120 * scale + 5)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = []
            start = time.monotonic()
            total = int(duration * rate)
            brownout_from = int(total * 0.1)
            for i in range(total):
                if i == brownout_from:
                    span = duration * 0.9
                    primary.set_mode(f"brownout:0.31:{healthy}:{38 * scale}:{span}")
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one(session)))
            await asyncio.gather(*tasks)

        def client_calls(mock: MockProvider) -> int:
            return sum(1 for r in mock.requests if PROBE_TEXT.encode() not in r.body)

        primary_calls, fallback_calls = client_calls(primary), client_calls(fallback)
        latencies.sort()
        n = len(latencies)
        return Result(
            variant=variant,
            requests=n,
            hard_failures=failures,
            p50_s=latencies[n // 2],
            p95_s=latencies[min(n - 1, int(0.95 * n))],
            attempts_per_request=(primary_calls + fallback_calls) / n,
            primary_share=1.0 if variant == "direct" else 1 - fallback_calls / n if n else 0.0,
        )
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        await primary.stop()
        await fallback.stop()


async def run_all(scale: float, duration: float, rate: float) -> list[Result]:
    return [await replay(v, scale=scale, duration=duration, rate=rate) for v in ("direct", "ladder", "circuits")]


def report(results: list[Result], scale: float, duration: float, rate: float) -> str:
    lines = [
        "| set-up | requests | hard failures | p50 | p95 | provider calls / request | served by the primary |",
        "|---|---|---|---|---|---|---|",
        *(r.row(scale) for r in results),
    ]
    note = (
        f"{duration / scale:.0f} s replay at {rate * scale:.1f} requests/s (open loop), times shown at full scale"
        + (f" (run compressed {1 / scale:.0f}x)" if scale != 1 else "")
        + ". Primary: healthy 2 s answers for the first 10 %, then latency climbing to 38 s and 31 % 503s; "
        "fallback (another provider, translated): healthy, 1.5 s. The primary rung's per-try budget is 10 s."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="compress every time by this factor (0.1 = 10x)")
    parser.add_argument("--duration", type=float, default=120.0, help="replay length at full scale, seconds")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second at full scale")
    args = parser.parse_args()
    duration = args.duration * args.scale
    rate = args.rate / args.scale
    results = asyncio.run(run_all(args.scale, duration, rate))
    text = report(results, args.scale, duration, rate)
    print(text)
    if args.scale == 1.0:
        out = REPO / "bench" / "BROWNOUT.md"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out.write_text(f"# Brownout replay\n\nRun {stamp} · `python -m bench.brownout` · 2 vCPU, noisy\n\n{text}")
        print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
