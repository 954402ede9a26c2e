"""`rungway demo` (what `make run` runs): mock providers, the demo policy, Envoy and the sidecar,
then a scripted fallback shown with the official openai SDK — and the stack stays up to play with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import openai
import yaml

from ..policy import parse_policy
from ..supervisor import Supervisor, UpOptions
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
            _say(f"  streamed: {text[:70]}…")
        return
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    completion = raw.parse()
    _say(f"  {_flags(raw.headers)}")
    _say(f"  model={completion.model}  answer: {(completion.choices[0].message.content or '')[:60]}…")


async def _show(client: openai.AsyncOpenAI, fleet: dict[str, MockProvider]) -> None:
    primary = fleet["openai-primary"]
    steps = [
        ("healthy primary", "ok", False),
        ("primary answers 503", "status:503", False),
        ("primary answers 200 with broken JSON (a partial outage)", "invalid_json", False),
        ("primary rate-limited for 30 s (429, Retry-After: 30)", "status:429:30", False),
        ("streaming; primary sends an error event before its first token", "sse_error", True),
    ]
    messages: Any = [{"role": "user", "content": "Where is my order #1234?"}]
    for title, mode, stream in steps:
        primary.set_mode(mode)
        _say(f"\n▶ {title}")
        await _ask(client, messages, stream)
    primary.set_mode("ok")


async def run_demo(listen: tuple[str, int], admin: tuple[str, int], *, interactive: bool) -> int:
    fleet = {name: MockProvider(name, dialect) for name, dialect in PROVIDERS}
    mocks = MockFleet(list(fleet.values()))
    control_port = await mocks.start()
    workdir = Path(tempfile.mkdtemp(prefix="rungway-demo-"))
    template = yaml.safe_load(resources.files("extproc.demo").joinpath("policy.yaml").read_text())
    for name, mock in fleet.items():
        template["providers"][name]["base_url"] = mock.url
    policy_path = workdir / "policy.yaml"
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
        _say("ladder 'chat': openai-primary/gpt-4o → anthropic-backup/claude-sonnet-4-5 → small-local/llama-3.1-8b")
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-the-apps-own-key", max_retries=0) as client:
            await _show(client, fleet)
        admin_url = f"http://{options.admin[0]}:{supervisor.admin_port}"
        _say("\nThe client never changed: same SDK, same schema; the x-rungway-* headers say what served it.")
        if not interactive:
            return 0
        _say(
            f"""
Try it yourself (Ctrl-C stops everything):
  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "hi"}}]}}' -D - -o /dev/null | grep x-rungway
  curl -s -XPOST http://127.0.0.1:{control_port}/providers/openai-primary/mode -d '{{"mode": "status:503"}}'
  curl -s -XPOST http://127.0.0.1:{control_port}/providers/openai-primary/mode -d '{{"mode": "ok"}}'
  metrics:  curl -s {admin_url}/metrics | grep rungway_
  modes:    ok, status:CODE[:RETRY_AFTER], delay:S, reset, invalid_json, empty, tokens:N, sse_error, cut:N, stall:N:S …
  access log: {options.access_log}"""
        )
        await stop.wait()
        return 0
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop()
        await mocks.stop()
