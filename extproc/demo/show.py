"""`rungway demo` (what `make run` runs): mock providers, the demo policy, Envoy and the sidecar,
then a scripted fallback shown with the official openai SDK — and the stack stays up to play with."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import openai
import yaml

from ..audit import Intact, line, selected
from ..policy import parse_policy
from ..runtime.auditlog import read_records, verify_dir
from ..runtime.keyfile import add_key
from ..runtime.supervisor import Supervisor, UpOptions
from .mock_provider import MockFleet, MockProvider

PROVIDERS: list[tuple[str, Literal["openai", "anthropic"]]] = [
    ("openai-primary", "openai"),
    ("anthropic-backup", "anthropic"),
    ("small-local", "openai"),
]
DEMO_KEYS = {"RUNGWAY_DEMO_OPENAI_KEY": "sk-demo-openai", "RUNGWAY_DEMO_ANTHROPIC_KEY": "sk-demo-anthropic"}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    return (host, port) if port == 0 or _port_free(host, port) else (host, 0)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _flags(headers: Any) -> str:
    keys = ("served-by", "tier", "degraded", "reason", "attempts")
    return "  ".join(f"{k}={headers.get('x-rungway-' + k)}" for k in keys)


async def _ask(client: openai.AsyncOpenAI, messages: Any, stream: bool) -> None:
    if stream:
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=messages, stream=True
        ) as response:
            text = ""
            chunks: openai.AsyncStream[Any] = await response.parse()
            async for chunk in chunks:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
            _say(f"  {_flags(response.headers)}")
            _say(f"  streamed: {text if len(text) <= 90 else text[:70] + '…'}")
        return
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    completion = raw.parse()
    _say(f"  {_flags(raw.headers)}")
    _say(f"  model={completion.model}  answer: {(completion.choices[0].message.content or '')[:60]}…")


HEALTHY_AFTER_A_FAULT = 6  # good answers after each staged failure


async def _show(client: openai.AsyncOpenAI, fleet: dict[str, MockProvider]) -> None:
    primary = fleet["openai-primary"]
    # One failure at a time, each followed by a healthy answer: single failures hop, but do not
    # add up to an open circuit (the brownout below shows that).
    # A single 503 gets the same rung once (the second try usually succeeds): the demo's primary
    # fails twice in a row, so the ladder moves on.
    steps = [
        ("healthy primary", "ok", False, 1),
        ("primary answers 503, twice: the same rung once, then the fallback", "status:503", False, 2),
        ("primary answers 200 with broken JSON (a partial outage): the fallback at once", "invalid_json", False, 1),
        ("streaming; primary sends an error event before its first token, twice", "sse_error", True, 2),
        ("streaming; primary cuts the stream after 6 of its 12 words: the next rung completes it", "cut:6", True, 1),
        ("primary rate-limited (429, Retry-After: 3): skipped until its limit resets", "status:429:3", False, 1),
    ]
    messages: Any = [{"role": "user", "content": "Where is my order #1234?"}]
    for title, mode, stream, times in steps:
        primary.set_mode(mode, times=times)
        _say(f"\n▶ {title}")
        await _ask(client, messages, stream)
        if mode == "cut:6":
            _say("  (w1-w6 from openai-primary, w7-w12 continued by anthropic-backup: one stream, one finish)")
        if mode != "ok" and mode != "status:429:3":
            # Healthy again: enough good answers that one staged failure (a 503 now costs two
            # tries, the same rung once) does not add up to a score the board would leave.
            for _ in range(HEALTHY_AFTER_A_FAULT):
                await client.chat.completions.create(model="gpt-4o", messages=messages)
    await _ask(client, messages, False)
    await asyncio.sleep(3)  # the rate limit resets


async def _audit_story(directory: Path, shown: int = 10) -> None:
    """What the audit trail recorded of the fallbacks above (`rungway audit show`), and verify."""
    await asyncio.sleep(0.5)  # the writer is off the request path: a moment behind
    records = selected(read_records(directory), tenant="demo-app", since=None)
    _say(f"\n▶ the audit trail: {len(records)} records of decisions that left tier 0; the last {shown}")
    _say(f"  (rungway audit show --dir {directory} --tenant demo-app)")
    for _, record in records[-shown:]:
        _say("  " + line(record))
    verdicts = verify_dir(directory)
    intact = all(isinstance(v, Intact) for v in verdicts.values())
    _say(f"  rungway audit verify {directory}: {'intact' if intact else 'BROKEN'} ({len(verdicts)} chain(s))")


async def _tenants(base: str, keys: dict[str, str], fleet: dict[str, MockProvider]) -> None:
    """The same outage, two tenants' policies: the agency is served by a fallback, the hospital
    (never below tier 0) gets an honest refusal instead of a silent downgrade."""
    primary = fleet["openai-primary"]
    messages: Any = [{"role": "user", "content": "Summarise this patient's discharge notes."}]
    _say("\n▶ the primary is down; two tenants with different policies (demo policy: tenants:)")
    primary.set_mode("status:503")
    async with (
        openai.AsyncOpenAI(base_url=base + "/v1", api_key=keys["agency"], max_retries=0) as agency,
        openai.AsyncOpenAI(base_url=base + "/v1", api_key=keys["hospital"], max_retries=0) as hospital,
    ):
        for _ in range(4):  # the agency's traffic finds the outage; the primary's circuit opens
            raw = await agency.chat.completions.with_raw_response.create(model="gpt-4.1", messages=messages)
        _say(f"  agency   (lowest_tier 2): {_flags(raw.headers)}")
        try:
            await hospital.chat.completions.create(model="gpt-4.1", messages=messages)
            _say("  hospital (lowest_tier 0): served (the primary was still believed healthy)")
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            _say(
                f"  hospital (lowest_tier 0): HTTP {exc.status_code} {body.get('code')}: {str(body.get('message'))[:90]}…"
            )
    primary.set_mode("ok")


IMPACTS = {"revenue_critical": "revenue", "customer_facing": "customer", "deferrable": "deferrable"}
BROWNOUT_S = 20.0  # the brownout lasts this long, then the primary recovers
TICK_S = 2.0  # one status line per tick
RATE = 6.0  # requests per second, the impact classes taking turns


async def _brownout(
    client: openai.AsyncOpenAI, fleet: dict[str, MockProvider], supervisor: Supervisor, admin_url: str
) -> None:
    """A provider brownout, live: latency climbing and 31 % 503s, then recovery. The requests
    ask for gpt-4o-mini, so the primary's board row starts clean (the failures staged above
    were gpt-4o's), and carry three impact classes, which leave the primary in turn."""
    primary = fleet["openai-primary"]
    key = "openai-primary/gpt-4o-mini"
    messages: Any = [{"role": "user", "content": "Summarise my last order."}]
    served: list[tuple[float, str, str, float]] = []  # (at, impact, served-by, latency)
    loop = asyncio.get_running_loop()

    async def one(impact: str) -> None:
        started = loop.time()
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, extra_headers={"x-rungway-impact": impact}
            )
            by = raw.headers.get("x-rungway-served-by", "?")
        except openai.APIError:
            by = "FAILED"
        served.append((loop.time(), impact, by, loop.time() - started))

    def line(phase: str, since: float) -> None:
        recent = [s for s in served if s[0] >= since]
        shares = []
        for impact, label in IMPACTS.items():
            mine = [s for s in recent if s[1] == impact]
            on_primary = sum(1 for s in mine if s[2] == key)
            shares.append(f"{label} {on_primary}/{len(mine)}")
        failed = sum(1 for s in recent if s[2] == "FAILED")
        lat = sorted(s[3] for s in recent)
        p95 = lat[int(0.95 * (len(lat) - 1))] if lat else 0.0
        row = next((r for r in supervisor.board.snapshot(time.time())["rungs"] if r["endpoint"] == key), None)
        state = row["circuit"]["state"] if row else "closed"
        score = row["score"] if row else 1.0
        _say(
            f"  {phase:9} {loop.time() - start:5.1f}s  circuit {state:9} score {score:4.2f}  "
            f"on the primary: {' · '.join(shares)}  failed {failed}  p95 {p95:4.2f}s"
        )

    _say(
        "\n▶ brownout: the primary's latency climbs 0.1 s → 2 s and 31 % of its answers are 503s;\n"
        f"  {RATE:.0f} requests/s, impact classes revenue_critical · customer_facing · deferrable in turn.\n"
        f"  Live board: rungway status --admin {admin_url}   (or curl {admin_url}/status)"
    )
    primary.set_mode("delay:0.1")  # healthy: the rung's baseline
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []
    phase, broke_at, healed_at = "healthy", 4.0, None
    impacts = itertools.cycle(IMPACTS)
    while True:
        now = loop.time() - start
        if phase == "healthy" and now >= broke_at:
            primary.set_mode(f"brownout:0.31:0.1:2:{BROWNOUT_S}")
            phase = "brownout"
        elif phase == "brownout" and now >= broke_at + BROWNOUT_S:
            primary.set_mode("delay:0.1")
            healed_at = now
            phase = "recovered"
            _say("▶ the primary recovers: Rungway probes it and brings traffic back")
        back = healed_at is not None and _primary_back(served, key, start + healed_at + 2)
        if back or (healed_at is not None and now - healed_at > 30):
            break
        tick_end = loop.time() + TICK_S
        while loop.time() < tick_end:
            tasks.append(asyncio.create_task(one(next(impacts))))
            await asyncio.sleep(1 / RATE)
        line(phase, loop.time() - TICK_S)
    await asyncio.gather(*tasks)
    failed = sum(1 for s in served if s[2] == "FAILED")
    outcome = "the primary is back" if back else "the primary is NOT back after 30 s"
    _say(f"  {len(served)} requests, {failed} failed; {outcome}.")


def _primary_back(served: list[tuple[float, str, str, float]], key: str, since: float) -> bool:
    """Every impact class is on the primary again."""
    recent = [s for s in served if s[0] >= since][-2 * len(IMPACTS) :]
    return len(recent) == 2 * len(IMPACTS) and all(s[2] == key for s in recent)


async def run_demo(
    listen: tuple[str, int], admin: tuple[str, int], *, interactive: bool, brownout: bool = False
) -> int:
    fleet = {name: MockProvider(name, dialect) for name, dialect in PROVIDERS}
    mocks = MockFleet(list(fleet.values()))
    control_port = await mocks.start()
    workdir = Path(tempfile.mkdtemp(prefix="rungway-demo-"))
    template = yaml.safe_load(resources.files("extproc.demo").joinpath("policy.yaml").read_text())
    for name, mock in fleet.items():
        template["providers"][name]["base_url"] = mock.url
    policy_path = workdir / "policy.yaml"
    # Every caller needs a Rungway key: the demo issues one for its app, as `rungway keys new` does.
    key_store = workdir / template["clients"]["key_store"]
    template["clients"]["key_store"] = str(key_store)
    app_key, _ = add_key(key_store, "demo-app", label="demo")
    tenant_keys = {name: add_key(key_store, name, label="demo")[0] for name in ("hospital", "agency")}
    policy_path.write_text(yaml.safe_dump(template, sort_keys=False))
    policy = parse_policy(template, str(policy_path))
    os.environ.update({k: os.environ.get(k, v) for k, v in DEMO_KEYS.items()})
    options = UpOptions(
        policy_path=policy_path,
        policy=policy,
        listen=_pick(listen),
        admin=_pick(admin),
        access_log=str(workdir / "access.log"),
        log_level="warning",
        envoy_log_level="error",
        audit_dir=workdir / "audit",
    )
    supervisor = Supervisor(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        _say("Starting mock providers, Envoy 1.40 and the Rungway sidecar on the demo policy…")
        await supervisor.start()
        base = f"http://{options.listen[0]}:{supervisor.listen_port}"
        _say(f"Envoy listens on {base}  (apps point their SDK's base URL here)")
        admin_url = f"http://{options.admin[0]}:{supervisor.admin_port}"
        _say("ladder 'chat': openai-primary/gpt-4o → anthropic-backup/claude-sonnet-4-5 → small-local/llama-3.1-8b")
        _say(f"the app's Rungway key (tenant demo-app): {app_key[:12]}…  (from `rungway keys new`)")
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=app_key, max_retries=0) as client:
            await _show(client, fleet)
        await _audit_story(workdir / "audit")
        await _tenants(base, tenant_keys, fleet)
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=app_key, max_retries=0) as client:
            if brownout:
                await _brownout(client, fleet, supervisor, admin_url)
        _say("\nThe client never changed: same SDK, same schema; the x-rungway-* headers say what served it.")
        if not brownout:
            _say("(`rungway demo --brownout` also stages a provider brownout and its recovery.)")
        if not interactive:
            return 0
        _say(
            f"""
Try it yourself (Ctrl-C stops everything):
  export RUNGWAY_KEY={app_key}
  curl -s {base}/v1/chat/completions -H "authorization: Bearer $RUNGWAY_KEY" -H 'content-type: application/json' \\
       -d '{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "hi"}}]}}' -D - -o /dev/null | grep x-rungway
  curl -s -XPOST http://127.0.0.1:{control_port}/providers/openai-primary/mode -d '{{"mode": "status:503"}}'
  curl -s -XPOST http://127.0.0.1:{control_port}/providers/openai-primary/mode -d '{{"mode": "ok"}}'
  metrics:  curl -s {admin_url}/metrics | grep rungway_
  modes:    ok, status:CODE[:RETRY_AFTER], delay:S, reset, invalid_json, empty, tokens:N, sse_error, cut:N, stall:N:S …
  new keys: rungway keys new --store {key_store} --tenant NAME
  no key:   curl -s {base}/v1/chat/completions -d '{{}}'   → 401 in the OpenAI dialect
  access log: {options.access_log}"""
        )
        await stop.wait()
        return 0
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop()
        await mocks.stop()
