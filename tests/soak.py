"""A soak of fault-mixed streams through real Envoy: `make soak` (3,000 streams) or
`python -m tests.soak --streams N --concurrency K`; tests/e2e/test_soak.py runs a few hundred in
`make test`.

Every stream asks the primary (an OpenAI-dialect mock) for a streamed answer with one fault,
chosen at random per stream (the `x-mock-mode-primary` header), from a raw HTTP client or the
official `openai` SDK, several at a time. Each stream must end in one of three honest ways: the
whole answer (every word, a finish, `[DONE]`), an in-band error event (the SDK raises on it), or
a broken connection (the SDK raises). Never a truncated success. And Envoy must not crash, hit a
bug check or restart: it runs strict (a detected use after free aborts it).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import openai

from tests.stack import MockThread, Stack, provider_entry, running

STALL_S = 0.6
TOTAL = 30  # words in a fault mode's answer
FALLBACK_WORDS = 12  # the mocks' default answer length
PRIMARY_WORDS = {"finish_then_hang": FALLBACK_WORDS}  # faults whose answer has the default length
BODY = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
ANSWER = re.compile(r"^Hello from (\w+) \(([^)]+)\): w1(?: w\d+)*$")

# fault kind -> the primary's mode
FAULTS: dict[str, str] = {
    "ok": f"tokens:{TOTAL}",
    "malformed_event": f"badevent:8:{TOTAL}",
    "cut": "cut:10",
    "stall_then_close": f"stall_close:10:{STALL_S + 0.3:g}:{TOTAL}",
    "stall_at_watchdog_then_close": f"stall_close:10:{STALL_S:g}:{TOTAL}",
    "stall_then_end": f"stall_end:10:{STALL_S + 0.3:g}:{TOTAL}",
    "stall_then_reset": f"stall_reset:10:{STALL_S + 0.3:g}:{TOTAL}",
    "pause_past_watchdog": f"pause:10:{STALL_S + 0.4:g}:{TOTAL}",
    "short_pause": f"pause:10:{STALL_S / 3:g}:{TOTAL}",
    "no_done": f"no_done_n:{TOTAL}",
    "finish_then_hang": "finish_hang:1",
    "reset_after_first_token": "reset_after:5",
    "error_before_first_token": "sse_error",
    "503_before_first_token": "status:503",
    "slow_first_token": "first_delay:3",
    "client_disconnect": f"tokens:{TOTAL}",
}


@dataclass
class Stream:
    fault: str
    client: str
    words: list[str] = field(default_factory=list)
    served_by: str = ""
    done: bool = False
    finish: bool = False
    error_event: str = ""
    exception: str = ""
    unparseable: bool = False
    fallback_words: int = FALLBACK_WORDS  # the length of the fallback's (or a rescue's) answer

    @property
    def truncated_success(self) -> bool:
        """Ended looking complete without being the whole answer, or forwarded a broken event."""
        if self.unparseable:
            return True
        if self.error_event or self.exception or self.fault == "client_disconnect":
            return False
        text = "".join(self.words)
        match = ANSWER.match(text)
        if match is None or not self.finish or (self.client == "raw" and not self.done):
            return True
        expected = PRIMARY_WORDS.get(self.fault, TOTAL) if match.group(1) == "primary" else self.fallback_words
        return not text.endswith(f" w{expected}")


def policy(fleet: dict[str, Any], *, rescue: bool = False) -> dict[str, Any]:
    secondary = provider_entry(fleet["secondary"], credential={"env": "RW_SOAK_KEY"})
    extra: dict[str, Any] = {}
    if rescue:
        # Streams cut or stalled after their first token are completed by the secondary, which
        # continues the delivered text (prefill) to the fault answers' length.
        secondary["capabilities"] = ["tools", "json_mode", "streaming", "prefill"]
        extra["tasks"] = {"default": {"rescue": True}}
    return {
        **extra,
        "version": "soak",
        "stream_stall_s": STALL_S,
        "stream_finish_grace_s": 0.3,
        "stream_abandon_s": 1.0,
        "envoy_ejection": None,
        "health": {"enabled": False, "probe_interval_s": 0},
        "providers": {
            "primary": provider_entry(fleet["primary"], credential={"env": "RW_SOAK_KEY"}),
            "secondary": secondary,
        },
        "ladders": {"main": [{"provider": "primary", "timeout_s": 2}, {"provider": "secondary", "timeout_s": 5}]},
        "models": [{"match": "*", "ladder": "main"}],
    }


def raw_stream(stack: Stack, fault: str) -> Stream:
    out = Stream(fault, "raw")
    headers = {"authorization": f"Bearer {stack.app_key}", "x-mock-mode-primary": FAULTS[fault]}
    buf = b""
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(30.0)) as client,
            client.stream("POST", stack.base_url + "/v1/chat/completions", json=BODY, headers=headers) as response,
        ):
            out.served_by = response.headers.get("x-rungway-served-by", "")
            for piece in response.iter_bytes():
                buf += piece
                if fault == "client_disconnect" and buf.count(b"\n\n") >= 5:
                    break  # leaving the block closes the connection mid-stream
    except Exception as exc:  # the outcome is the point: record it
        out.exception = f"{type(exc).__name__}: {exc}"[:160]
    for event in buf.decode(errors="replace").split("\n\n"):
        data = event.strip().removeprefix("data:").strip()
        if not data or data.startswith(":"):
            continue
        if data == "[DONE]":
            out.done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            out.unparseable = True
            continue
        if isinstance(obj, dict) and obj.get("error"):
            out.error_event = str(obj["error"].get("code") or obj["error"].get("type"))
        for choice in obj.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                out.words.append(content)
            if choice.get("finish_reason"):
                out.finish = True
    return out


def sdk_stream(stack: Stack, fault: str) -> Stream:
    out = Stream(fault, "sdk")
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=stack.app_key, max_retries=0, timeout=30)
    try:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-mock-mode-primary": FAULTS[fault]},
        )
        for n, chunk in enumerate(stream):
            for choice in chunk.choices:
                if choice.delta.content:
                    out.words.append(choice.delta.content)
                if choice.finish_reason:
                    out.finish = True
            if fault == "client_disconnect" and n >= 4:
                stream.close()
                break
    except Exception as exc:
        out.exception = f"{type(exc).__name__}: {exc}"[:160]
    finally:
        client.close()
    return out


@dataclass
class Report:
    streams: list[Stream]
    envoy_trouble: list[str]
    envoy_restarts: int
    sidecar_errors: float
    seconds: float

    @property
    def truncated(self) -> list[Stream]:
        return [s for s in self.streams if s.truncated_success]

    def summary(self) -> str:
        by_fault = collections.Counter(s.fault for s in self.streams)
        outcome: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for s in self.streams:
            kind = "error event" if s.error_event else "connection error" if s.exception else "complete"
            outcome[s.fault][kind] += 1
        lines = [f"{len(self.streams)} streams in {self.seconds:.0f} s"]
        for fault, n in sorted(by_fault.items()):
            detail = ", ".join(f"{k} {v}" for k, v in sorted(outcome[fault].items()))
            lines.append(f"  {fault:30s} {n:5d}  ({detail})")
        lines.append(f"truncated successes: {len(self.truncated)}")
        lines.append(f"Envoy restarts: {self.envoy_restarts}   Envoy crash/bug lines: {len(self.envoy_trouble)}")
        lines.append(f"sidecar errors: {self.sidecar_errors:g}")
        return "\n".join(lines)


def run_soak(streams: int, concurrency: int, seed: int, *, rescue: bool = False) -> Report:
    rng = random.Random(seed)
    plan = [(rng.choice(list(FAULTS)), rng.choice(["raw", "sdk"])) for _ in range(streams)]
    mocks = MockThread()
    try:
        fleet = {
            name: mocks.provider(name, dialect) for name, dialect in (("primary", "openai"), ("secondary", "anthropic"))
        }
        for mock in fleet.values():
            mock.token_interval = 0.005
        if rescue:
            fleet["secondary"].set_mode(f"tokens:{TOTAL}")
        soak_policy = policy(fleet, rescue=rescue)
        with running(soak_policy, env={"RW_SOAK_KEY": "sk-soak"}, envoy_trouble_expected=True) as stack:
            results: list[Stream] = []
            lock = threading.Lock()
            todo = iter(plan)

            def worker() -> None:
                while True:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    fault, client = item
                    result = raw_stream(stack, fault) if client == "raw" else sdk_stream(stack, fault)
                    if rescue:
                        result.fallback_words = TOTAL
                    with lock:
                        results.append(result)

            started = time.monotonic()
            threads = [threading.Thread(target=worker) for _ in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.monotonic() - started
            time.sleep(1.5)  # the last providers' late bytes and closes reach Envoy
            trouble = stack.envoy_trouble()
            restarts = int(stack.refresh_state().get("envoy_restarts", 0))
            errors = sum(
                float(line.rsplit(" ", 1)[1])
                for line in stack.metrics().splitlines()
                if line.startswith("rungway_sidecar_errors_total{")
            )
            return Report(results, trouble, restarts, errors, seconds)
    finally:
        mocks.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rescue", action="store_true", help="streams cut or stalled after the first token are rescued"
    )
    args = parser.parse_args(argv)
    report = run_soak(args.streams, args.concurrency, args.seed, rescue=args.rescue)
    print(report.summary())
    for s in report.truncated[:10]:
        print("TRUNCATED", s)
    for line in report.envoy_trouble[:10]:
        print("ENVOY", line)
    ok = not report.truncated and not report.envoy_trouble and report.envoy_restarts == 0 and not report.sidecar_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
