"""Plain Envoy vs the Rungway full path against the same fast upstream: `python -m bench.run`.

Interleaved rounds (plain, rungway variants, plain, ...), medians over rounds, at 1 and 16
connections, for JSON and SSE answers. Per round: req/s and latency (wrk), sidecar CPU from
/proc/<pid>/stat of every worker, Envoy CPU, RSS, and ext_proc messages per request from
Envoy's stats. Everything is also given as a ratio to plain Envoy measured in the same run.

`--quick` is a ~1 minute smoke run that leaves bench/RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import fixtures as fx
from .load import AsyncioLoad, LoadResult, Wrk, ensure_wrk
from .procs import EnvoyProc, Procs, cpu_count, cpu_seconds, envoy_version, rss_kib, start_envoy
from .stack import MockProcess, RungwayStack, start_mock, start_rungway

HERE = Path(__file__).absolute().parent
RESULTS_MD = HERE / "RESULTS.md"
RAW_DIR = HERE / "results"
# RESULTS.md is regenerated above this line; whatever follows it is kept across runs.
NOTES_MARKER = "<!-- Everything below this line is kept when bench.run rewrites the file. -->"

ENVOY_CPU = 0  # every Envoy (under test and upstream)
LOAD_CPU = 1  # wrk
IDLE_SECONDS = 5.0  # an idle worker's CPU is measured over this long
IDLE_RESOLUTION_MS = 1000 / os.sysconf("SC_CLK_TCK") / IDLE_SECONDS  # ms of CPU per second
MOCK_TOKEN_INTERVAL = 0.001  # seconds between the mock's SSE events: each one its own read

# Targets, with ONE sidecar worker (from the issue).
TARGET_ADDED_P50_MS = 2.5
TARGET_RPS_RATIO = 0.07
TARGET_SIDECAR_CPU_MS = 1.3

WORKLOADS = {
    "json": "JSON answer (fast Envoy upstream, direct_response)",
    "sse": "SSE, ~20 events (fast Envoy upstream: the whole stream arrives as one chunk)",
    "sse-chunked": f"SSE, ~20 events written one by one (Python mock upstream, {MOCK_TOKEN_INTERVAL * 1000:g} ms apart)",
}
VARIANTS = {
    "plain": "plain Envoy (listener → router)",
    "pass": "Rungway (a) same dialect, model unchanged, 1 worker",
    "xlat": "Rungway (b) OpenAI client → Anthropic upstream, translated + validated, 1 worker",
    "xlat-w2": "Rungway (c) = (b) with --workers 2",
}


@dataclass
class Target:
    variant: str
    port: int
    model: str
    headers: dict[str, str]
    envoy_pid: int
    sidecar_pids: list[int]
    upstream_pid: int
    upstream_events: int  # SSE events the upstream sends per answer (0 for JSON)
    stack: RungwayStack | None = None


@dataclass
class Cell:
    workload: str
    conns: int
    targets: list[Target]


@dataclass
class Sample:
    """One measured run of one target in one round."""

    round: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    sidecar_cpu_us: float | None  # per request, all workers
    sidecar_cpu_us_event: float | None
    envoy_cpu_us: float
    upstream_cpu_us: float
    loadgen_cpu_us: float
    sidecar_rss_kib: int | None
    envoy_rss_kib: int
    extproc_msgs: float | None  # ext_proc messages Envoy sent per request, both filters
    extproc_failures: int  # failed streams, fail-open, timeouts, retries: must stay 0
    other_cpu: float  # CPU-seconds per second used by processes not in this run (noise)


@dataclass
class Row:
    workload: str
    conns: int
    variant: str
    samples: list[Sample] = field(default_factory=list)

    def med(self, name: str) -> float | None:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return statistics.median(values) if values else None


# ---- measurement ---------------------------------------------------------------------------------


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


def _safe_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_STAT_FILTER = r"ext_proc\.(stream_msgs_sent|streams_failed|failure_mode_allowed|message_timeouts)$|upstream_rq_retry$"


def _extproc_counters(stack: RungwayStack) -> tuple[int, int]:
    stats = stack.envoy_stats(_STAT_FILTER)
    msgs = sum(v for k, v in stats.items() if k.endswith("stream_msgs_sent"))
    bad = sum(v for k, v in stats.items() if not k.endswith("stream_msgs_sent"))
    return msgs, bad


def measure(
    load: Any, target: Target, cell: Cell, rnd: int, seconds: float, warmup: float, own_pids: list[int]
) -> Sample:
    url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
    body = fx.request_body(target.model, stream=cell.workload != "json")
    if warmup > 0:
        load.run(url, body, target.headers, connections=cell.conns, seconds=warmup)
    pids = [target.envoy_pid, target.upstream_pid, *target.sidecar_pids]
    before = {pid: _safe_cpu(pid) for pid in pids}
    own_before = sum(_safe_cpu(p) for p in own_pids)
    msgs0, bad0 = _extproc_counters(target.stack) if target.stack else (0, 0)
    busy0, children0 = _busy_jiffies(), _children_cpu()
    result: LoadResult = load.run(url, body, target.headers, connections=cell.conns, seconds=seconds)
    busy1, children1 = _busy_jiffies(), _children_cpu()
    after = {pid: _safe_cpu(pid) for pid in pids}
    own_after = sum(_safe_cpu(p) for p in own_pids)
    msgs1, bad1 = _extproc_counters(target.stack) if target.stack else (0, 0)
    n = max(result.requests, 1)

    def per_req(pid_list: list[int]) -> float:
        return sum(after[p] - before[p] for p in pid_list) / n * 1e6

    sidecar = per_req(target.sidecar_pids) if target.sidecar_pids else None
    clk = os.sysconf("SC_CLK_TCK")
    busy_s = (busy1 - busy0) / clk
    ours = (own_after - own_before) + (children1 - children0)
    return Sample(
        round=rnd,
        requests=result.requests,
        seconds=result.seconds,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        sidecar_cpu_us=sidecar,
        sidecar_cpu_us_event=sidecar / target.upstream_events
        if sidecar is not None and target.upstream_events
        else None,
        envoy_cpu_us=per_req([target.envoy_pid]),
        upstream_cpu_us=per_req([target.upstream_pid]),
        loadgen_cpu_us=(children1 - children0) / n * 1e6,
        sidecar_rss_kib=sum(rss_kib(p) for p in target.sidecar_pids) if target.sidecar_pids else None,
        envoy_rss_kib=rss_kib(target.envoy_pid),
        extproc_msgs=(msgs1 - msgs0) / n if target.stack else None,
        extproc_failures=bad1 - bad0,
        other_cpu=max(0.0, busy_s - ours) / max(result.seconds, 1e-9),
    )


# ---- correctness before measuring ---------------------------------------------------------------


def check_target(target: Target, workload: str) -> None:
    """One request through the target: a 200 in the client's (OpenAI) dialect, served by the rung
    we mean to measure, with the whole stream."""
    body = fx.request_body(target.model, stream=workload != "json")
    req = urllib.request.Request(
        f"http://127.0.0.1:{target.port}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", **target.headers},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        status, headers, data = r.status, r.headers, r.read()
    where = f"{target.variant}/{workload}"
    if status != 200:
        raise RuntimeError(f"{where}: HTTP {status}: {data[:300]!r}")
    if target.stack is not None:
        served = headers.get("x-rungway-served-by", "")
        want = "anthropic" if "xlat" in target.variant else "openai"
        if want not in served:
            raise RuntimeError(f"{where}: not served through the Rungway ladder (x-rungway-served-by={served!r})")
    if workload == "json":
        answer = json.loads(data)
        if answer.get("object") != "chat.completion" or not answer["choices"][0]["message"]["content"]:
            raise RuntimeError(f"{where}: unexpected answer {data[:300]!r}")
    else:
        events = [e for e in data.decode().split("\n\n") if e.strip()]
        if events[-1].strip() != "data: [DONE]" or len(events) < fx.ANSWER_TOKENS:
            raise RuntimeError(f"{where}: unexpected stream ({len(events)} events): {data[-300:]!r}")


# ---- reporting ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _spread(values: list[float]) -> str:
    """Half the range over rounds, as a share of the median."""
    if len(values) < 2 or not statistics.median(values):
        return "-"
    return f"±{(max(values) - min(values)) / 2 / statistics.median(values) * 100:.0f}%"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}x"


HEAD = [
    "workload", "conns", "variant", "req/s", "spread", "xplain", "p50 ms", "xplain", "p99 ms", "xplain",
    "sidecar CPU µs/req", "µs/event", "Envoy CPU µs/req", "xplain", "Envoy+sidecar CPU xplain",
    "sidecar RSS MiB", "ext_proc msgs/req",
]  # fmt: skip


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    plain: dict[tuple[str, int], Row] = {(r.workload, r.conns): r for r in rows if r.variant == "plain"}
    for row in rows:
        base = plain.get((row.workload, row.conns))

        def b(name: str, base: Row | None = base) -> float | None:
            return base.med(name) if base else None

        sidecar, envoy = row.med("sidecar_cpu_us"), row.med("envoy_cpu_us")
        total = (sidecar or 0.0) + (envoy or 0.0)
        rss = row.med("sidecar_rss_kib")
        warn = " ⚠" if any(s.errors or s.extproc_failures for s in row.samples) else ""
        out.append(
            [
                row.workload,
                str(row.conns),
                row.variant + warn,
                _f(row.med("rps")),
                _spread([s.rps for s in row.samples]),
                _ratio(row.med("rps"), b("rps")),
                _f(row.med("p50_ms"), 2),
                _ratio(row.med("p50_ms"), b("p50_ms")),
                _f(row.med("p99_ms"), 2),
                _ratio(row.med("p99_ms"), b("p99_ms")),
                _f(sidecar),
                _f(row.med("sidecar_cpu_us_event")),
                _f(envoy),
                _ratio(envoy, b("envoy_cpu_us")),
                _ratio(total, b("envoy_cpu_us")) if row.variant != "plain" else "1.00x",
                _f(rss / 1024 if rss is not None else None, 1),
                _f(row.med("extproc_msgs"), 1),
            ]
        )
    return out


def text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append(
            "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)


def md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def targets_check(rows: list[Row]) -> list[list[str]]:
    by = {(r.workload, r.conns, r.variant): r for r in rows}
    out = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("PASS" if ok else "MISS")

    for variant in ("pass", "xlat"):
        plain1, rw1 = by.get(("json", 1, "plain")), by.get(("json", 1, variant))
        if plain1 and rw1:
            p_plain, p_rw = plain1.med("p50_ms"), rw1.med("p50_ms")
            added = p_rw - p_plain if p_rw is not None and p_plain is not None else None
            out.append([variant, "added p50, JSON, 1 conn", f"≤ {TARGET_ADDED_P50_MS} ms", f"{_f(added, 2)} ms",
                        verdict(None if added is None else added <= TARGET_ADDED_P50_MS)])  # fmt: skip
        plain16, rw16 = by.get(("json", 16, "plain")), by.get(("json", 16, variant))
        if plain16 and rw16:
            r_plain, r_rw = plain16.med("rps"), rw16.med("rps")
            ratio = r_rw / r_plain if r_rw is not None and r_plain else None
            out.append([variant, "req/s vs plain, JSON, 16 conns", f"≥ {TARGET_RPS_RATIO}x", f"{_f(ratio, 4)}x",
                        verdict(None if ratio is None else ratio >= TARGET_RPS_RATIO)])  # fmt: skip
        for conns in (1, 16):
            row = by.get(("json", conns, variant))
            cpu = row.med("sidecar_cpu_us") if row else None
            if row is not None:
                ms = cpu / 1000 if cpu is not None else None
                out.append([variant, f"sidecar CPU per JSON request, {conns} conn{'s' if conns > 1 else ''}",
                            f"≤ {TARGET_SIDECAR_CPU_MS} ms", f"{_f(ms, 2)} ms",
                            verdict(None if ms is None else ms <= TARGET_SIDECAR_CPU_MS)])  # fmt: skip
    return out


TARGET_HEAD = ["variant", "target", "goal", "measured (median)", "verdict"]


def render_markdown(meta: dict[str, Any], rows: list[Row]) -> str:
    body = table_rows(rows)
    lines = [
        "# Rungway benchmark: plain Envoy vs the Rungway path",
        "",
        f"Run {meta['date']} · commit {meta['commit']} · Envoy {meta['envoy']} · {meta['machine']} · "
        f"`python -m bench.run{meta['argv']}`",
        "",
        f"{meta['rounds']} interleaved rounds per cell (plain, (a), (b), (c), plain, …), {meta['seconds']:g} s each "
        f"after a {meta['warmup']:g} s warm-up; figures are medians over rounds. Load generator: {meta['loadgen']}. "
        f"Pinning: {meta['pinning']}.",
        "",
        "## Results",
        "",
        md_table(HEAD, body),
        "",
        "## Targets (one sidecar worker)",
        "",
        md_table(TARGET_HEAD, targets_check(rows)),
        "",
        "## How to read it",
        "",
        *[f"* **{k}**: {v}." for k, v in WORKLOADS.items()],
        *[f"* **{k}**: {v}." for k, v in VARIANTS.items()],
        "* The request is a 2 KB OpenAI chat completion request (system prompt, 4 messages); the answer has "
        f"{fx.ANSWER_TOKENS} completion tokens. The upstream reads the whole request body before it answers.",
        f"* µs/event divides the sidecar CPU per request by the events the upstream sends per answer "
        f"({fx.SSE_EVENTS['openai']} for OpenAI: role chunk, {fx.ANSWER_TOKENS} tokens, finish, [DONE]; "
        f"{fx.SSE_EVENTS['anthropic']} for Anthropic). With the fast upstream a whole stream reaches the sidecar "
        "as one body message, so in the `sse` rows that is a request's cost spread over its events, not a cost per "
        "event; the `sse-chunked` rows, where every event is its own ext_proc message (see msgs/req), are the "
        "honest per-event figure (the one to quote).",
        "* Sidecar CPU is utime+stime of every worker process (all threads) from /proc/<pid>/stat; Envoy CPU is "
        "the Envoy under test (Rungway's own Envoy for the Rungway rows). `Envoy+sidecar CPU xplain` is the "
        "Rungway side's total CPU per request over plain Envoy's. RSS is the sum of the workers' VmRSS after a round.",
        "* ext_proc msgs/req: messages Envoy sent to the sidecar per client request (decide + attempt filters).",
        "* spread: half the range of req/s over the rounds, as a share of the median.",
        f"* An idle worker used {meta['idle_sidecar_ms_per_s']:.1f} ms of CPU per second (health checks, gRPC "
        f"pollers; /proc resolution {IDLE_RESOLUTION_MS:.0f} ms/s): negligible in the per-request figures.",
        f"* Noise: other processes used a median of {meta['other_cpu']:.2f} CPU-s/s during the measured runs "
        f"(max {meta['other_cpu_max']:.2f}); the machine has {meta['cpus']} vCPUs.",
        "* ⚠ marks a row with HTTP errors or ext_proc failures/retries in some round (none should appear).",
        "",
        "Raw per-round data: `bench/results/latest.raw.json` (not committed).",
        "",
    ]
    return "\n".join(lines)


def idle_sidecar_cpu(pids: list[int], seconds: float) -> float:
    """CPU milliseconds per second one idle worker uses (health checks, gRPC pollers)."""
    before = sum(_safe_cpu(p) for p in pids)
    time.sleep(seconds)
    return (sum(_safe_cpu(p) for p in pids) - before) / len(pids) / seconds * 1000


def git_describe() -> str:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=HERE.parent, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "extproc")
    return commit + (" + uncommitted changes in extproc/" if dirty else "")


# ---- orchestration ------------------------------------------------------------------------------


def build_cells(args: argparse.Namespace, up: EnvoyProc, plain: EnvoyProc, rw1: RungwayStack,
                rw2: RungwayStack | None, mock: MockProcess | None) -> list[Cell]:  # fmt: skip
    cells: list[Cell] = []
    json_h = {fx.BODY_HEADER: "json"}
    sse_h = {fx.BODY_HEADER: "sse"}
    mock_h = {"x-mock-mode": fx.MOCK_MODE}
    ev = fx.SSE_EVENTS

    def plain_t(headers: dict[str, str], up_pid: int, events: int) -> Target:
        return Target("plain", plain.listeners["plain"], fx.MODELS["pass"], headers, plain.pid, [], up_pid, events)

    def rw_t(
        variant: str, stack: RungwayStack, model: str, headers: dict[str, str], up_pid: int, events: int
    ) -> Target:
        headers = {**headers, "authorization": f"Bearer {stack.key}"}
        return Target(
            variant, stack.port, fx.MODELS[model], headers, stack.envoy_pid, stack.worker_pids, up_pid, events, stack
        )

    for conns in args.conns:
        targets = [
            plain_t(json_h, up.pid, 0),
            rw_t("pass", rw1, "pass", json_h, up.pid, 0),
            rw_t("xlat", rw1, "xlat", json_h, up.pid, 0),
        ]
        if rw2 is not None:
            targets.append(rw_t("xlat-w2", rw2, "xlat", json_h, up.pid, 0))
        cells.append(Cell("json", conns, targets))
    for conns in args.conns:
        cells.append(
            Cell(
                "sse",
                conns,
                [
                    plain_t(sse_h, up.pid, ev["openai"]),
                    rw_t("pass", rw1, "pass", sse_h, up.pid, ev["openai"]),
                    rw_t("xlat", rw1, "xlat", sse_h, up.pid, ev["anthropic"]),
                ],
            )
        )
    if mock is not None:
        for conns in args.chunked_conns:
            cells.append(
                Cell(
                    "sse-chunked",
                    conns,
                    [
                        plain_t({**mock_h, fx.UPSTREAM_HEADER: "mock"}, mock.pid, ev["openai"]),
                        rw_t("pass", rw1, "mock-pass", mock_h, mock.pid, ev["openai"]),
                        rw_t("xlat", rw1, "mock-xlat", mock_h, mock.pid, ev["anthropic"]),
                    ],
                )
            )
    return cells


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~1 min smoke run: 1 round, 2 s runs; RESULTS.md untouched")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="measured seconds per run (whole seconds: wrk)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run")
    p.add_argument("--conns", type=int, nargs="+", default=[1, 16])
    p.add_argument("--chunked-conns", type=int, nargs="*", default=[16], help="connections for the sse-chunked rows")
    p.add_argument("--no-chunked", action="store_true", help="skip the Python-mock SSE rows")
    p.add_argument("--no-workers2", action="store_true", help="skip variant (c), --workers 2")
    p.add_argument("--no-pin", action="store_true", help="do not pin Envoys and wrk to CPUs")
    p.add_argument("--loadgen", choices=["wrk", "asyncio"], default="wrk")
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--render-only", type=Path, metavar="RAW_JSON", help="only re-render RESULTS.md from a raw file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 2, 1
        args.no_write = True
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only is not None:
        return render_only(args.render_only)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must reach the cleanup even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    commit = git_describe()  # before the run: what was measured
    pin_ok = not args.no_pin and cpu_count() >= 2
    envoy_cpu = ENVOY_CPU if pin_ok else None
    load_cpu = LOAD_CPU if pin_ok else None
    procs = Procs()
    load: Wrk | AsyncioLoad
    wrk = ensure_wrk() if args.loadgen == "wrk" else None
    if wrk is not None:
        load = Wrk(wrk, procs.dir, load_cpu)
        loadgen = "wrk 1 thread (C, `--latency` percentiles via a Lua `done` hook)"
    else:
        load = AsyncioLoad()
        loadgen = "asyncio fallback (Python; NOT comparable with wrk figures)"
        print("NOTE: using the asyncio load generator; its figures are not comparable with wrk's.", flush=True)
    where_load = f"load generator on CPU {LOAD_CPU}" if wrk is not None else "asyncio load generator unpinned"
    pinning = (
        f"all Envoys (under test and upstream) on CPU {ENVOY_CPU}, {where_load}, "
        "sidecar workers and the Python mock unpinned"
        if pin_ok
        else "none"
    )
    print(f"setup: {pinning}", flush=True)
    rows: dict[tuple[str, int, str], Row] = {}
    idle = 0.0
    started = time.monotonic()
    try:
        up = start_envoy(procs, "upstream", fx.upstream_config(), cpu=envoy_cpu)
        upstream_port = up.listeners["upstream"]
        mock = None if args.no_chunked else start_mock(procs, token_interval=MOCK_TOKEN_INTERVAL)
        plain = start_envoy(
            procs, "plain", fx.plain_config(upstream_port, mock.openai_port if mock else None), cpu=envoy_cpu
        )
        policy = fx.policy(upstream_port, mock.openai_port if mock else None, mock.anthropic_port if mock else None)
        rw1 = start_rungway(procs, "rungway-w1", policy, workers=1, envoy_cpu=envoy_cpu)
        rw2 = None if args.no_workers2 else start_rungway(procs, "rungway-w2", policy, workers=2, envoy_cpu=envoy_cpu)
        idle = idle_sidecar_cpu(rw1.worker_pids, IDLE_SECONDS)
        print(f"idle sidecar worker: {idle:.1f} ms CPU per second (resolution {IDLE_RESOLUTION_MS:.0f})", flush=True)
        cells = build_cells(args, up, plain, rw1, rw2, mock)
        for cell in cells:
            for target in cell.targets:
                check_target(target, cell.workload)
        print(f"all {sum(len(c.targets) for c in cells)} targets answer correctly; measuring "
              f"{args.rounds} round(s) x {len(cells)} cells", flush=True)  # fmt: skip
        own_pids = [os.getpid(), up.pid, plain.pid, rw1.envoy_pid, *rw1.worker_pids]
        own_pids += [item.proc.pid for item in procs.items]
        if rw2 is not None:
            own_pids += [rw2.envoy_pid, *rw2.worker_pids]
        if mock is not None:
            own_pids.append(mock.pid)
        own_pids = sorted(set(own_pids))
        for rnd in range(1, args.rounds + 1):
            for cell in cells:
                for target in cell.targets:
                    procs.check_alive()
                    sample = measure(load, target, cell, rnd, args.seconds, args.warmup, own_pids)
                    key = (cell.workload, cell.conns, target.variant)
                    rows.setdefault(key, Row(*key)).samples.append(sample)
                    print_sample(rnd, cell, target, sample)
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - started
    ordered = sorted(rows.values(), key=_row_order)
    other = [s.other_cpu for r in ordered for s in r.samples]
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "envoy": envoy_version(),
        "machine": f"{os.cpu_count()} vCPU, noisy ({platform.machine()}, Linux {platform.release()})",
        "cpus": os.cpu_count(),
        "argv": (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "loadgen": loadgen,
        "pinning": pinning,
        "other_cpu": statistics.median(other) if other else 0.0,
        "other_cpu_max": max(other) if other else 0.0,
        "elapsed_s": round(elapsed, 1),
        "idle_sidecar_ms_per_s": round(idle, 2),
        "commit": commit,
    }
    report(meta, ordered)
    RAW_DIR.mkdir(exist_ok=True)
    raw_path = RAW_DIR / ("quick.raw.json" if args.quick else "latest.raw.json")
    raw = {
        "meta": meta,
        "rows": [
            {**{k: v for k, v in asdict(r).items() if k != "samples"}, "samples": [asdict(s) for s in r.samples]}
            for r in ordered
        ],
    }
    raw_path.write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        write_results(meta, ordered)
        print(f"wrote {RESULTS_MD.relative_to(HERE.parent)} and {raw_path.relative_to(HERE.parent)}")
    else:
        print(f"wrote {raw_path.relative_to(HERE.parent)} (RESULTS.md untouched)")
    return 0


def _row_order(r: Row) -> tuple[int, int, int]:
    return (list(WORKLOADS).index(r.workload), r.conns, list(VARIANTS).index(r.variant))


def print_sample(rnd: int, cell: Cell, target: Target, sample: Sample) -> None:
    flag = ""
    if sample.errors or sample.extproc_failures:
        flag = f"  ⚠ errors={sample.errors} ext_proc failures={sample.extproc_failures}"
    sidecar = f"{sample.sidecar_cpu_us:6.0f}" if sample.sidecar_cpu_us is not None else "     -"
    print(
        f"round {rnd} {cell.workload:11s} c={cell.conns:<2d} {target.variant:8s} "
        f"{sample.rps:8.0f} req/s  p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
        f"sidecar {sidecar} µs/req  envoy {sample.envoy_cpu_us:5.0f} µs/req  "
        f"other load {sample.other_cpu:.2f}{flag}",
        flush=True,
    )


def report(meta: dict[str, Any], ordered: list[Row]) -> None:
    print()
    print(text_table(HEAD, table_rows(ordered)))
    print()
    print(text_table(TARGET_HEAD, targets_check(ordered)))
    print(
        f"\n{meta['pinning']}; {meta['rounds']} rounds x {meta['seconds']:g} s, medians; other load median "
        f"{meta['other_cpu']:.2f} CPU-s/s; run took {meta['elapsed_s']:.0f} s"
    )


def write_results(meta: dict[str, Any], ordered: list[Row]) -> None:
    """Regenerate RESULTS.md above NOTES_MARKER; keep what follows it."""
    notes = ""
    if RESULTS_MD.exists():
        old = RESULTS_MD.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER) + len(NOTES_MARKER) :]
    RESULTS_MD.write_text(render_markdown(meta, ordered) + "\n" + NOTES_MARKER + notes)


def render_only(path: Path) -> int:
    """Print and write RESULTS.md again from a raw file (after a change to the report only)."""
    raw = json.loads(path.read_text())
    rows = [Row(r["workload"], r["conns"], r["variant"], [Sample(**s) for s in r["samples"]]) for r in raw["rows"]]
    ordered = sorted(rows, key=_row_order)
    report(raw["meta"], ordered)
    write_results(raw["meta"], ordered)
    print(f"wrote {RESULTS_MD.relative_to(HERE.parent)} from {path}")
    return 0


def _entry() -> None:
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process started by the benchmark has been stopped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    _entry()
