"""Where one sidecar worker's CPU goes: `python -m bench.profile [--variant xlat] [--workload json]`.

Starts the fast upstream and a one-worker Rungway stack (as bench.run does), drives it with wrk
and samples the worker with py-spy (not a project dependency: `pip install py-spy` into any
environment, or put it on PATH). Prints the share of samples per cost category and the top
functions. py-spy counts only threads that are running, so the shares are of CPU, not of time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import fixtures as fx
from .load import Wrk, ensure_wrk
from .procs import Procs, cpu_seconds, start_envoy
from .stack import start_mock, start_rungway

# First matching frame (outermost first) below a processor's dispatch decides the category.
_LOGIC = [
    ("metrics (prometheus)", ("metrics.py", "prometheus_client")),
    ("translation (translate/*)", ("translate/openai_to", "translate/anthropic_to", "translate/errors")),
    ("SSE relay (parse, re-encode)", ("relay.py", "translate/sse", "translate/stream")),
    ("validation (validate.py)", ("validate.py",)),
    ("ladder choice (ladder.py)", ("ladder.py",)),
    ("protobuf messages (wire.py)", ("wire.py", "google/protobuf")),
    ("json loads/dumps", ("json/",)),
]


def categorise(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    cats: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        names = [f.split(" (", 1)[0] for f in frames]
        files = [f.split(" (", 1)[1].rstrip(")") if " (" in f else "" for f in frames]
        own[f"{names[-1]} ({files[-1]})"] += n
        for key in {f"{name} ({file.rsplit(':', 1)[0]})" for name, file in zip(names, files, strict=True)}:
            incl[key] += n
        dispatch = next((i for i, name in enumerate(names) if name.endswith("Processor.dispatch")), None)
        if dispatch is not None:
            category = "processor code (decide.py, attempt.py)"
            for file in files[dispatch + 1 :]:
                match = next((c for c, parts in _LOGIC if any(p in file for p in parts)), None)
                if match is not None:
                    category = match
                    break
            cats["Rungway: " + category] += n
        elif names[0].startswith("Thread._bootstrap"):
            cats["gRPC: aio poller thread (completion queue)"] += n
        elif names[-1] == "ExternalProcessor.Process":
            cats["gRPC: inside await context.read()/write() (C-core, (de)serialise)"] += n
        elif names[-1] in ("Runner.run", "run_until_complete", "run_forever"):
            cats["event loop: uvloop + grpc aio callbacks (C)"] += n
        else:
            cats["other Python (asyncio, server.py loop)"] += n
    return total, cats, own, incl


def find_py_spy() -> str | None:
    for candidate in (shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=["pass", "xlat"], default="xlat")
    p.add_argument("--workload", choices=["json", "sse", "sse-chunked"], default="json")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rungway-bench-profile.txt")
    args = p.parse_args(argv)
    py_spy = find_py_spy()
    wrk = ensure_wrk()
    if py_spy is None or wrk is None:
        print("needs py-spy (pip install py-spy) and wrk", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    try:
        up = start_envoy(procs, "upstream", fx.upstream_config(), cpu=0)
        mock = start_mock(procs, token_interval=0.001) if args.workload == "sse-chunked" else None
        policy = fx.policy(
            up.listeners["upstream"], mock.openai_port if mock else None, mock.anthropic_port if mock else None
        )
        stack = start_rungway(procs, "rungway", policy, workers=1, envoy_cpu=0)
        model = fx.MODELS[("mock-" if mock else "") + args.variant]
        headers = (
            {"x-mock-mode": fx.MOCK_MODE} if mock else {fx.BODY_HEADER: "sse" if args.workload == "sse" else "json"}
        )
        body = fx.request_body(model, stream=args.workload != "json")
        url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
        load = Wrk(wrk, procs.dir, 1)
        load.run(url, body, headers, connections=args.conns, seconds=2)
        worker = stack.worker_pids[0]
        cmd = [py_spy, "record", "-p", str(worker), "-d", str(args.seconds + 2), "-r", str(args.rate)]
        cmd += ["-f", "raw", "-o", str(args.out), "--nonblocking"]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        cpu0 = cpu_seconds(worker)
        result = load.run(url, body, headers, connections=args.conns, seconds=args.seconds)
        cpu1 = cpu_seconds(worker)
        spy.wait(timeout=args.seconds + 30)
    finally:
        procs.stop_all()
    total, cats, own, incl = categorise(args.out)
    per_req = (cpu1 - cpu0) / max(result.requests, 1) * 1e6
    print(f"{args.variant} {args.workload} c={args.conns}: {result.rps:.0f} req/s, sidecar {per_req:.0f} µs/req; "
          f"{total} samples in {args.out}")  # fmt: skip
    print("\nshare of worker CPU by category (≈ µs/req):")
    for name, n in cats.most_common():
        print(f"  {100 * n / total:5.1f}%  {per_req * n / total:6.0f}  {name}")
    print(f"\ntop {args.top} functions, inclusive:")
    for name, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print(f"\ntop {args.top} functions, self:")
    for name, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
