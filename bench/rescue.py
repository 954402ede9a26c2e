"""Stream rescue (issue 10) through real Envoy: its sidecar CPU per event, and its time to complete.

`python -m bench.rescue` (about 2 minutes) starts `rungway up` (real Envoy, one sidecar worker)
on the e2e fleet of mock providers (tests/conftest.py `Fleet`, in this process) with a task class
that rescues, and measures:

1. Sidecar CPU (utime+stime of the worker from /proc) per client-visible SSE event, for long
   streams written one event at a time: (a) plain, no fault; (a') the same answer served whole
   by the rescue rung (translated from Anthropic, as a rescue's second half is); (b) cut at half,
   the rest from the next rung continuing the delivered text (a prefill); (c) cut at half, the
   next rung refusing the prefill (400) and regenerating the same text, the Splice dropping what
   matches. Interleaved rounds (the variants' order rotated), medians over rounds, each as a
   ratio to (a) of the same run.
2. Time to complete, as the OpenAI SDK sees it, for a plain stream, a cut one and a stalled one
   (stall budget = the policy's stream_stall_s), interleaved; the text must be whole and have
   one finish.

Writes bench/RESCUE.md and bench/results/rescue.raw.json (not committed).

The mock's cut/stall/mimic answers are DEFAULT_TOKENS words long (12), and a prefill is continued
up to that length: this benchmark sets the mock module's DEFAULT_TOKENS to --tokens in its own
process (the mocks run here), so every answer is --tokens words and `cut:N` cuts at N of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from extproc.demo import mock_provider

from .procs import cpu_count, envoy_admin, envoy_version
from .run import _busy_jiffies, _safe_cpu, _spread, git_describe, md_table, text_table
from .shed import quantile

HERE = Path(__file__).absolute().parent
RESCUE_MD = HERE / "RESCUE.md"
RAW_PATH = HERE / "results" / "rescue.raw.json"
# RESCUE.md is regenerated above this line; whatever follows it is kept across runs.
NOTES_MARKER = "<!-- Everything below this line is kept when bench.rescue rewrites the file. -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "gpt-4o"
XLAT_MODEL = "xlat-gpt"  # a ladder of the rescue rung alone: variant (a')
PLAIN_TASK = "plain"  # a task class without rescue: no shield, the plain stream path
HI: Any = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    primary: str  # the mock modes
    secondary: str
    model: str
    speaker: str  # who the client's text says it is from: "primary (gpt-4o)"
    rescues: int  # rescue calls per stream (rungway_stream_rescues_total rises by one per stream)
    task: str = "default"  # the task class (x-rungway-task): "plain" does not rescue


def variants(half: int) -> list[Variant]:
    primary, secondary = f"primary ({MODEL})", "secondary (claude-fallback)"
    regenerate = f"mimic:primary:{MODEL}:noprefill"
    return [
        Variant(
            "plain",
            "(a) plain stream, rescue off (the plain stream path): OpenAI → OpenAI pass-through",
            *("ok", "ok", MODEL, primary, 0, PLAIN_TASK),
        ),
        Variant(
            "shielded",
            "(a'') plain stream, rescue on: the same through the reset shield, no fault",
            *("ok", "ok", MODEL, primary, 0),
        ),
        Variant(
            "plain-xlat",
            "(a') plain stream from the rescue rung alone (Anthropic → OpenAI, translated)",
            *("ok", "ok", XLAT_MODEL, secondary, 0),
        ),
        Variant(
            "continue",
            "(b) cut at half, rescued by continuation (prefill)",
            *(f"cut:{half}", "ok", MODEL, primary, 1),
        ),
        Variant(
            "regenerate",
            "(c) cut at half, rescued by regenerate-and-match (prefill refused with a 400)",
            *(f"cut:{half}", regenerate, MODEL, primary, 1),
        ),
        Variant(
            "reset",
            "(d) provider reset (RST) at half, rescued by continuation (prefill) through the shield",
            *(f"reset_after:{half}", "ok", MODEL, primary, 1),
        ),
    ]


def expected_text(speaker: str, tokens: int) -> str:
    return f"Hello from {speaker}: " + " ".join(f"w{i}" for i in range(1, tokens + 1))


# ---- part 1: sidecar CPU per event ----------------------------------------------------------------


@dataclass
class CpuSample:
    round: int
    variant: str
    streams: int
    events: int  # client-visible SSE events (data: lines), [DONE] included
    sidecar_cpu_s: float
    envoy_cpu_s: float
    wall_s: float
    other_cpu: float  # CPU-s/s used by processes outside this run (noise)
    failures: int  # streams whose text was not whole or had not exactly one finish
    extproc_msgs: int  # messages Envoy sent the sidecar (both filters)
    extproc_failures: int  # failed ext_proc streams, fail-open, message timeouts: must stay 0

    @property
    def us_per_event(self) -> float:
        return self.sidecar_cpu_s / max(self.events, 1) * 1e6

    @property
    def envoy_us_per_event(self) -> float:
        return self.envoy_cpu_s / max(self.events, 1) * 1e6


def raw_stream(client: httpx.Client, url: str, key: str, model: str, task: str) -> tuple[int, str, int]:
    """One streamed chat completion read raw: (data events, text, finishes)."""
    body = {"model": model, "messages": HI, "stream": True}
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", "x-rungway-task": task}
    events, finishes, text = 0, 0, []
    with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank lines and comments (": rungway rescued-by ...")
            events += 1
            data = line[5:].strip()
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
                finishes += bool(choice.get("finish_reason"))
    return events, "".join(text), finishes


def cpu_sample(stack: Any, fleet: Any, variant: Variant, rnd: int, streams: int, tokens: int) -> CpuSample:
    fleet.primary.set_mode(variant.primary)
    fleet.secondary.set_mode(variant.secondary)
    want = expected_text(variant.speaker, tokens)
    workers = [int(p) for p in stack.state["worker_pids"]]
    envoy = int(stack.state["envoy_pid"])
    ours = [*workers, envoy, stack.process.pid]
    with httpx.Client(timeout=60) as client:
        raw_stream(client, stack.base_url, stack.app_key, variant.model, variant.task)  # warm: connection, caches
        msgs0, bad0 = extproc_counters(stack)
        cpu0 = {p: _safe_cpu(p) for p in ours}
        self0, busy0, t0 = _self_cpu(), _busy_jiffies(), time.monotonic()
        events = failures = 0
        for _ in range(streams):
            n, text, finishes = raw_stream(client, stack.base_url, stack.app_key, variant.model, variant.task)
            events += n
            failures += text != want or finishes != 1
        wall = time.monotonic() - t0
        cpu1 = {p: _safe_cpu(p) for p in ours}
        self1, busy1 = _self_cpu(), _busy_jiffies()
        msgs1, bad1 = extproc_counters(stack)
    used = sum(cpu1[p] - cpu0[p] for p in ours) + (self1 - self0)
    other = max(0.0, (busy1 - busy0) / CLK_TCK - used) / max(wall, 1e-9)
    return CpuSample(
        round=rnd,
        variant=variant.name,
        streams=streams,
        events=events,
        sidecar_cpu_s=sum(cpu1[p] - cpu0[p] for p in workers),
        envoy_cpu_s=cpu1[envoy] - cpu0[envoy],
        wall_s=wall,
        other_cpu=other,
        failures=failures,
        extproc_msgs=msgs1 - msgs0,
        extproc_failures=bad1 - bad0,
    )


_STAT_FILTER = r"ext_proc\.(stream_msgs_sent|streams_failed|failure_mode_allowed|message_timeouts)$"


def extproc_counters(stack: Any) -> tuple[int, int]:
    data = envoy_admin(stack.envoy_admin_socket, f"/stats?format=json&filter={_STAT_FILTER}").json()
    stats = {s["name"]: s["value"] for s in data.get("stats", []) if isinstance(s.get("value"), int)}
    msgs = sum(v for k, v in stats.items() if k.endswith("stream_msgs_sent"))
    return msgs, sum(stats.values()) - msgs


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # the client and the mocks (threads of this process)
    return r.ru_utime + r.ru_stime


# ---- part 2: time to complete ----------------------------------------------------------------------


@dataclass
class Timed:
    kind: str
    seconds: float
    ok: bool
    detail: str = ""


def sdk_stream(stack: Any, model: str, task: str) -> tuple[str, list[str], int]:
    text, finishes, usages = "", [], 0
    with stack.openai().chat.completions.create(
        model=model,
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-rungway-task": task},
    ) as stream:
        for chunk in stream:
            usages += chunk.usage is not None
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
    return text, finishes, usages


def timed_stream(
    stack: Any, fleet: Any, kind: str, primary: str, secondary: str, tokens: int, task: str = "default"
) -> Timed:
    fleet.primary.set_mode(primary)
    fleet.secondary.set_mode(secondary)
    want = expected_text(f"primary ({MODEL})", tokens)
    started = time.perf_counter()
    try:
        text, finishes, usages = sdk_stream(stack, MODEL, task)
    except Exception as exc:  # an SDK error is a failed rescue: counted, not fatal
        return Timed(kind, time.perf_counter() - started, False, f"{type(exc).__name__}: {exc}"[:200])
    took = time.perf_counter() - started
    ok = text == want and finishes == ["stop"] and usages == 1
    detail = "" if ok else f"text {len(text)}/{len(want)} chars, finishes {finishes}, usage chunks {usages}"
    return Timed(kind, took, ok, detail)


# ---- the stack ----------------------------------------------------------------------------------


def rescue_policy(fleet: Any, key_dir: Path, stall_s: float) -> dict[str, Any]:
    """tests/e2e/test_rescue.py's policy, plus a ladder of the rescue rung alone for (a')."""
    policy: dict[str, Any] = fleet.policy(
        key_dir,
        tasks={"default": {"min_output_tokens": 1, "rescue": True}, PLAIN_TASK: {"min_output_tokens": 1}},
    )
    policy["providers"]["secondary"]["capabilities"] = ["tools", "json_mode", "streaming", "prefill"]
    policy["stream_stall_s"] = stall_s
    # The primary's first-event budget (2 s in the fleet's policy) never bounds a long stream here.
    policy["ladders"]["main"][0]["timeout_s"] = 30
    policy["ladders"]["xlat_only"] = [{"provider": "secondary", "model": "claude-fallback"}]
    policy["models"] = [{"match": "xlat-*", "ladder": "xlat_only"}, *policy["models"]]
    return policy


def rescue_counts(stack: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in stack.metrics().splitlines():
        if line.startswith("rungway_stream_rescues_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


# ---- reporting ----------------------------------------------------------------------------------


@dataclass
class Run:
    meta: dict[str, Any]
    cpu: list[CpuSample] = field(default_factory=list)
    timed: list[Timed] = field(default_factory=list)


def _by_round(run: Run, name: str) -> dict[int, CpuSample]:
    return {s.round: s for s in run.cpu if s.variant == name}


CPU_HEAD = [
    "variant", "events/stream", "sidecar µs/event", "spread", "x(a)", "x(a) per round (min..max)",
    "Envoy µs/event", "x(a)", "sidecar ms/stream", "ext_proc msgs/stream", "failed streams",
]  # fmt: skip


def cpu_rows(run: Run, vs: list[Variant]) -> list[list[str]]:
    base = _by_round(run, "plain")
    base_med = statistics.median(s.us_per_event for s in base.values())
    base_env = statistics.median(s.envoy_us_per_event for s in base.values())
    rows = []
    for v in vs:
        samples = _by_round(run, v.name)
        per = [s.us_per_event for s in samples.values()]
        env = statistics.median(s.envoy_us_per_event for s in samples.values())
        med = statistics.median(per)
        ratios = [samples[r].us_per_event / base[r].us_per_event for r in samples if r in base]
        per_stream = statistics.median(s.sidecar_cpu_s / s.streams * 1000 for s in samples.values())
        events = statistics.median(s.events / s.streams for s in samples.values())
        rows.append(
            [
                v.what,
                f"{events:.0f}",
                f"{med:.0f}",
                _spread(per),
                f"{med / base_med:.2f}x",
                f"{min(ratios):.2f}..{max(ratios):.2f}x",
                f"{env:.0f}",
                f"{env / base_env:.2f}x",
                f"{per_stream:.1f}",
                f"{statistics.median(s.extproc_msgs / s.streams for s in samples.values()):.0f}",
                str(sum(s.failures + s.extproc_failures for s in samples.values())),
            ]
        )
    return rows


TIME_HEAD = ["stream", "n", "ok", "median s", "p95 s", "max s", "added vs plain (median)", "minus stall budget: median / p95"]  # fmt: skip


def time_rows(run: Run, stall_s: float) -> list[list[str]]:
    kinds = list(dict.fromkeys(t.kind for t in run.timed))
    plain = [t.seconds for t in run.timed if t.kind == "plain" and t.ok]
    plain_med = statistics.median(plain) if plain else float("nan")
    rows = []
    for kind in kinds:
        all_ = [t for t in run.timed if t.kind == kind]
        secs = [t.seconds for t in all_ if t.ok]
        if not secs:
            rows.append([kind, str(len(all_)), "0", "-", "-", "-", "-", "-"])
            continue
        med, p95 = statistics.median(secs), quantile(secs, 0.95)
        minus = f"{med - stall_s:.3f} / {p95 - stall_s:.3f}" if kind.startswith("stall") else "-"
        added = f"{med - plain_med:+.3f} s" if kind != "plain" else "-"
        rows.append(
            [kind, str(len(all_)), str(len(secs)), f"{med:.3f}", f"{p95:.3f}", f"{max(secs):.3f}", added, minus]
        )
    return rows


def render(run: Run, vs: list[Variant]) -> str:
    m = run.meta
    other = [s.other_cpu for s in run.cpu]
    failures = [t for t in run.timed if not t.ok]
    lines = [
        "# Stream rescue: sidecar CPU per event and time to complete",
        "",
        f"Run {m['date']} · commit {m['commit']} · Envoy {m['envoy']} · {m['machine']} · "
        f"`python -m bench.rescue{m['argv']}` · took {m['elapsed_s']:.0f} s",
        "",
        f"`rungway up` (real Envoy, concurrency 1, one sidecar worker) on the e2e mock fleet; streams of "
        f"{m['tokens']} tokens, one SSE event each, {m['interval_ms']:g} ms apart (the mocks write every event on "
        f"its own); the cut (or reset) is after token {m['tokens'] // 2}. Task class `rescue: true` (its tries pass "
        "the worker's reset shield), except (a)'s `plain` task class, which does not rescue: the plain stream "
        "path every ratio is to. The rescue rung (the Anthropic secondary) declares `prefill`; stream_stall_s "
        f"{m['stall_s']:g} s. Nothing is pinned.",
        "",
        "## 1. Sidecar CPU per client-visible event",
        "",
        f"{m['rounds']} interleaved rounds (the variants' order rotated each round), {m['streams']} streams per "
        "variant per round after one warm-up stream; medians over rounds. x(a): the median over the median of "
        "(a) in the same run; the per-round column divides each round's figure by (a)'s in that round.",
        "",
        md_table(CPU_HEAD, cpu_rows(run, vs)),
        "",
        "## 2. Time to complete (OpenAI SDK, streaming, include_usage)",
        "",
        f"{m['timed_streams']} streams of each kind, interleaved (plain, shielded, cut, cut+regenerate, stall, reset, "
        "plain, …). "
        "From the SDK call to the end of its iterator; ok = the whole text (the primary's words 1…N, in order), "
        "exactly one finish (`stop`) and one usage chunk. The stalled primary sends half the answer, then nothing "
        f"for {m['stall_hold_s']:g} s; the sidecar rescues it after stream_stall_s ({m['stall_s']:g} s) of silence. "
        "p95: the sorted times at index int(0.95 n) (bench.shed.quantile), with 20 streams the largest.",
        "",
        md_table(TIME_HEAD, time_rows(run, m["stall_s"])),
        "",
        "## How to read it",
        "",
        *[f"* **{v.name}**: {v.what}; primary mode `{v.primary}`, rescue rung mode `{v.secondary}`." for v in vs],
        "* Sidecar CPU is utime+stime of the worker process (all threads, the reset shield's included) from "
        "/proc/<pid>/stat over a round's "
        "streams, divided by the SSE `data:` events the client received (role chunk, tokens, finish, usage, "
        "[DONE]; not the `: rungway rescued-by` comment). It includes each stream's fixed cost (decide, the try's "
        "headers, the rescue call's set-up), spread over its events. Envoy CPU likewise (the rescue call goes "
        "through Envoy's rescue listener, so it is in Envoy's figure for (b) and (c)).",
        "* (a') isolates translation: a rescue's second half is the rescue rung's Anthropic stream translated to "
        "OpenAI, so (b) is fairly compared with a blend of (a) and (a').",
        "* In (c) the rescue rung answers the prefill with a 400, is asked again without it, and streams the whole "
        "answer; the Splice reads all of it and passes on only what follows the delivered text.",
        "* spread: half the range over rounds, as a share of the median.",
        f"* Noise: other processes used a median of {statistics.median(other):.2f} CPU-s/s during the CPU rounds "
        f"(max {max(other):.2f}) on {m['cpus']} vCPUs (other engineers' stacks share the machine); the client and "
        "the mocks run in the benchmark's own process, on the same cores as Envoy and the worker.",
        f"* rungway_stream_rescues_total after the run: {m['rescues']} (expected rescued = {m['expected_rescued']}).",
    ]
    if failures:
        lines.append(
            f"* Failed timed streams: {len(failures)}: " + "; ".join(f"{t.kind}: {t.detail}" for t in failures[:5])
        )
    lines += ["", "Raw data: `bench/results/rescue.raw.json` (not committed).", ""]
    return "\n".join(lines)


# ---- orchestration ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tokens", type=int, default=400, help="tokens per answer (the cut is at half)")
    p.add_argument("--interval", type=float, default=0.001, help="seconds between the mocks' events")
    p.add_argument("--rounds", type=int, default=5, help="CPU rounds")
    p.add_argument("--streams", type=int, default=3, help="streams per variant per CPU round")
    p.add_argument("--timed", type=int, default=20, help="timed streams of each kind")
    p.add_argument("--stall-budget", type=float, default=1.0, help="the policy's stream_stall_s")
    p.add_argument("--stall-hold", type=float, default=30.0, help="how long the stalled primary stays silent")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESCUE.md and the raw file alone")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tests.conftest import KEY_ENV, Fleet
    from tests.stack import MockThread, running

    args = parse_args(argv)
    if args.tokens < 4:
        raise SystemExit("--tokens must be at least 4")
    # The mocks (in this process) answer --tokens words in every mode, cut/stall/mimic included.
    vars(mock_provider)["DEFAULT_TOKENS"] = args.tokens
    half = args.tokens // 2
    vs = variants(half)
    commit = git_describe()
    started = time.monotonic()
    run = Run(meta={})
    mocks = MockThread()
    try:
        fleet = Fleet(mocks)
        for mock in (fleet.primary, fleet.secondary):
            mock.token_interval = args.interval
            mock.max_recorded = 8
        policy = rescue_policy(fleet, Path(tempfile.mkdtemp(prefix="rungway-rescue-")), args.stall_budget)
        with running(policy, env=KEY_ENV) as stack:
            print(f"stack up: Envoy pid {stack.state['envoy_pid']}, worker {stack.state['worker_pids']}", flush=True)
            for v in vs:  # warm-up, not recorded: the worker's first streams of each kind cost more
                cpu_sample(stack, fleet, v, 0, 1, args.tokens)
            for rnd in range(1, args.rounds + 1):
                order = vs[(rnd - 1) % len(vs) :] + vs[: (rnd - 1) % len(vs)]
                for v in order:
                    s = cpu_sample(stack, fleet, v, rnd, args.streams, args.tokens)
                    run.cpu.append(s)
                    print(f"round {rnd} {v.name:10s} {s.events / s.streams:5.0f} events/stream  sidecar "
                          f"{s.us_per_event:5.0f} µs/event  envoy {s.envoy_us_per_event:4.0f} µs/event  "
                          f"ext_proc {s.extproc_msgs / s.streams:4.0f} msgs/stream  "
                          f"other load {s.other_cpu:.2f}  failed {s.failures}", flush=True)  # fmt: skip
            kinds = [
                ("plain", "ok", "ok", PLAIN_TASK),
                ("plain, shielded", "ok", "ok", "default"),
                ("cut, continued", f"cut:{half}", "ok", "default"),
                ("cut, regenerated", f"cut:{half}", f"mimic:primary:{MODEL}:noprefill", "default"),
                ("stall, continued", f"stall:{half}:{args.stall_hold:g}", "ok", "default"),
                ("reset, continued", f"reset_after:{half}", "ok", "default"),
            ]
            for i in range(args.timed):
                for kind, primary, secondary, task in kinds:
                    t = timed_stream(stack, fleet, kind, primary, secondary, args.tokens, task)
                    run.timed.append(t)
                    print(f"timed {i + 1:2d} {kind:17s} {t.seconds:6.3f} s {'ok' if t.ok else 'FAILED ' + t.detail}",
                          flush=True)  # fmt: skip
            fleet.reset()
            rescues = rescue_counts(stack)
    finally:
        mocks.close()
    expected = sum(v.rescues for v in vs) * (args.rounds * (args.streams + 1) + 2) + 4 * args.timed
    run.meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "envoy": envoy_version(),
        "machine": f"{cpu_count()} vCPU, noisy ({platform.machine()}, {platform.system()} {platform.release()})",
        "cpus": cpu_count(),
        "argv": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "tokens": args.tokens,
        "interval_ms": args.interval * 1000,
        "rounds": args.rounds,
        "streams": args.streams,
        "timed_streams": args.timed,
        "stall_s": args.stall_budget,
        "stall_hold_s": args.stall_hold,
        "rescues": {k: int(v) for k, v in sorted(rescues.items())},
        "expected_rescued": expected,
        "elapsed_s": time.monotonic() - started,
    }
    print()
    print(text_table(CPU_HEAD, cpu_rows(run, vs)))
    print()
    print(text_table(TIME_HEAD, time_rows(run, args.stall_budget)))
    print(f"\nrescues: {run.meta['rescues']} (expected rescued {expected}); took {run.meta['elapsed_s']:.0f} s")
    if not args.no_write:
        RAW_PATH.parent.mkdir(exist_ok=True)
        raw = {"meta": run.meta, "cpu": [asdict(s) for s in run.cpu], "timed": [asdict(t) for t in run.timed]}
        RAW_PATH.write_text(json.dumps(raw))
        notes = ""
        if RESCUE_MD.exists() and NOTES_MARKER in (old := RESCUE_MD.read_text()):
            notes = old[old.index(NOTES_MARKER) + len(NOTES_MARKER) :]
        RESCUE_MD.write_text(render(run, vs) + "\n" + NOTES_MARKER + notes)
        print(f"wrote {RESCUE_MD.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
