"""`rungway drill`: the thin shell around `extproc.drills`. It starts mock providers for the
policy's providers and, for each scenario, a fresh `rungway up` (Envoy + sidecar: every scenario
starts from a clean health board), sends every golden task as the official SDKs would, and hands
the traces to the pure scoring core. With `attach`, it drives a running stack instead (whose
providers must be mock providers named as in the policy: faults travel as request headers)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..core import Dialect
from ..demo.mock_provider import MockFleet, MockProvider
from ..drills import (
    SCENARIOS,
    Answer,
    Case,
    Cell,
    Fixture,
    GoldenTask,
    Trace,
    baseline_cells,
    error_message,
    fixture_from_cell,
    parse_fixture,
    parse_task,
    plan_case,
    read_answer,
    regressions,
    render_markdown,
    render_svg,
    replay_case,
    results_json,
    rungway_flags,
    score,
)
from ..policy import Policy, parse_policy
from .keyfile import add_key
from .supervisor import Supervisor, UpOptions

ANTHROPIC_VERSION = "2023-06-01"
FIXTURES = "fixtures"


class DrillError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DrillOptions:
    policy_path: Path
    tasks_dir: Path
    report: Path  # the Markdown; the chart and the results JSON go next to it
    baseline: Path | None = None
    scenarios: tuple[str, ...] = ()  # only these (default: all, and every saved fixture)
    save: tuple[str, ...] = ()  # cells to keep as fixtures: "all", a scenario, or scenario/task/tenant
    attach: str | None = None  # a running stack's listener URL
    admin: str | None = None  # its admin URL: ready before and after the drill
    keys: tuple[tuple[str, str], ...] = ()  # (tenant, key) for an attached stack


@dataclass(frozen=True, slots=True)
class DrillOutcome:
    cells: tuple[Cell, ...]
    results: dict[str, Any]
    saved: tuple[Path, ...]

    @property
    def exit_code(self) -> int:
        return 1 if self.results["regressions"] else 0


def load_goldens(tasks_dir: Path) -> tuple[list[GoldenTask], list[Fixture]]:
    tasks = [parse_task(p.read_text(), str(p)) for p in sorted(tasks_dir.glob("*.json"))]
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise ValueError(f"{tasks_dir}: two golden tasks have the id {task.id!r}")
        seen.add(task.id)
    fixtures = [parse_fixture(p.read_text(), str(p)) for p in sorted((tasks_dir / FIXTURES).glob("*.json"))]
    return tasks, fixtures


def plan(
    policy: Policy, tasks: Sequence[GoldenTask], fixtures: Sequence[Fixture], only: Sequence[str]
) -> list[list[Case]]:
    """Cases grouped by the stack they run on: one group per scenario, one per fixture.
    `only` names scenarios, or FIXTURES for the saved fixtures (default: all of both)."""
    names = [s.name for s in SCENARIOS]
    unknown = set(only) - {*names, FIXTURES}
    if unknown:
        raise ValueError(f"scenario must be one of {[*names, FIXTURES]}, but was {sorted(unknown)}")
    groups = [[plan_case(policy, t, s) for t in tasks] for s in SCENARIOS if not only or s.name in only]
    if not only or FIXTURES in only:
        groups += [[replay_case(policy, f)] for f in fixtures]
    return [g for g in groups if g]


async def _send(
    session: aiohttp.ClientSession, base: str, case: Case, tenant: str, key: str, task_header: str
) -> Trace:
    task = case.task
    anthropic = task.dialect == "anthropic"
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    auth = (
        {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION} if anthropic else {"authorization": f"Bearer {key}"}
    )
    headers = {"content-type": "application/json", **auth, **case.headers(task_header)}
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Past its limit the cell fails anyway: a hung request costs a few seconds, not minutes.
    timeout = aiohttp.ClientTimeout(total=task.limits.latency_s + 5)
    try:
        async with session.post(base + path, data=json.dumps(task.request), headers=headers, timeout=timeout) as reply:
            body = await reply.read()
            status, flags = reply.status, rungway_flags(reply.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Trace(0, {}, Answer(problem=f"no answer: {exc!r}"), loop.time() - started, tenant, repr(exc))
    latency = loop.time() - started
    if status >= 300:
        return Trace(status, flags, Answer(), latency, tenant, error_message(body))
    return Trace(status, flags, read_answer(task.dialect, task.stream, body), latency, tenant)


async def _run_group(base: str, cases: Sequence[Case], keys: dict[str, str], policy: Policy) -> list[Cell]:
    async with aiohttp.ClientSession() as session:
        jobs = [(case, tenant) for case in cases for tenant in case.tenants]
        traces = await asyncio.gather(
            *(_send(session, base, case, tenant, keys[tenant], policy.task_header) for case, tenant in jobs)
        )
    return [score(case, trace, policy) for (case, _), trace in zip(jobs, traces, strict=True)]


class _OwnStack:
    """Mock providers for the policy's providers, and a fresh `rungway up` per group."""

    def __init__(self, raw: dict[str, Any], policy: Policy, tenants: set[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rungway-drill-"))
        self.fleet = MockFleet(
            [
                MockProvider(name, "anthropic" if p.dialect.wire is Dialect.ANTHROPIC else "openai")
                for name, p in policy.providers.items()
            ]
        )
        self._raw, self._tenants = raw, tenants
        self.keys: dict[str, str] = {}
        self.policy_path = self.dir / "policy.yaml"
        self.policy = policy

    async def start(self) -> None:
        await self.fleet.start()
        raw = json.loads(json.dumps(self._raw))
        for name, mock in self.fleet.providers.items():
            raw["providers"][name]["base_url"] = mock.url
            credential = raw["providers"][name].get("credential") or {}
            if "env" in credential:
                os.environ.setdefault(credential["env"], f"sk-drill-{name}")
        store = self.dir / "keys.json"
        raw["clients"] = {**raw.get("clients", {}), "key_store": str(store)}
        self.keys = {tenant: add_key(store, tenant, label="drill")[0] for tenant in sorted(self._tenants)}
        self.policy_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.policy = parse_policy(raw, str(self.policy_path))

    @contextlib.asynccontextmanager
    async def up(self) -> AsyncIterator[str]:
        options = UpOptions(
            policy_path=self.policy_path,
            policy=self.policy,
            listen=("127.0.0.1", 0),
            admin=("127.0.0.1", 0),
            access_log=str(self.dir / "access.log"),
            log_level="warning",
            envoy_log_level="error",
            restart=False,
        )
        supervisor = Supervisor(options)
        try:
            await supervisor.start()
            pid = supervisor.state()["envoy_pid"]
            yield f"http://127.0.0.1:{supervisor.listen_port}"
            # A drill that crashed Envoy has not passed, whatever its answers looked like.
            state = supervisor.state()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{supervisor.admin_port}/readyz") as ready,
            ):
                up = ready.status == 200
            if not up or state["envoy_pid"] != pid or state["envoy_restarts"]:
                raise DrillError(
                    f"Envoy exited or restarted during the drill (ready: {up}, pid {pid} -> {state['envoy_pid']})"
                )
        finally:
            with contextlib.suppress(Exception):
                await supervisor.stop()

    async def stop(self) -> None:
        await self.fleet.stop()
        shutil.rmtree(self.dir, ignore_errors=True)  # it holds the drill's client keys


def _wanted(cell: Cell, save: Sequence[str]) -> bool:
    return any(s in ("all", cell.scenario, cell.key) for s in save)


def _write(options: DrillOptions, cells: list[Cell], policy: Policy, groups: list[list[Case]]) -> DrillOutcome:
    baseline = json.loads(options.baseline.read_text()) if options.baseline is not None else None
    if baseline is not None:
        baseline_cells(baseline)  # a wrong file fails loudly, before anything is written
    found = regressions(cells, baseline)
    results = results_json(cells, policy.version, found)
    report = options.report
    report.parent.mkdir(parents=True, exist_ok=True)
    chart, data = report.with_suffix(".svg"), report.with_suffix(".json")
    chart.write_text(render_svg(cells))
    data.write_text(json.dumps(results, indent=1) + "\n")
    report.write_text(render_markdown(cells, found, policy_version=policy.version, chart=chart.name, results=data.name))
    saved: list[Path] = []
    if options.save:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        cases = {(case.scenario, case.task.id): case for group in groups for case in group}
        folder = options.tasks_dir / FIXTURES
        folder.mkdir(parents=True, exist_ok=True)
        for cell in cells:
            if _wanted(cell, options.save) and not cell.scenario.startswith("fixture:"):
                fixture = fixture_from_cell(cases[(cell.scenario, cell.task)], cell, now)
                path = folder / f"{fixture.id}.json"
                path.write_text(fixture.to_text())
                saved.append(path)
    return DrillOutcome(tuple(cells), results, tuple(saved))


async def _ready(admin: str | None, when: str) -> None:
    if admin is None:
        return
    async with aiohttp.ClientSession() as session, session.get(admin.rstrip("/") + "/readyz") as reply:
        if reply.status != 200:
            raise DrillError(f"the attached stack was not ready {when} the drill (/readyz: HTTP {reply.status})")


async def run_drill(options: DrillOptions) -> DrillOutcome:
    raw = yaml.safe_load(options.policy_path.read_text())
    policy = parse_policy(raw, str(options.policy_path))
    tasks, fixtures = load_goldens(options.tasks_dir)
    groups = plan(policy, tasks, fixtures, options.scenarios)
    cells: list[Cell] = []
    if options.attach is not None:
        keys = dict(options.keys)
        missing = {t for g in groups for c in g for t in c.tenants} - set(keys)
        if missing:
            raise ValueError(f"attached drill needs a key for tenants {sorted(missing)} (--key TENANT=KEY)")
        await _ready(options.admin, "before")
        for group in groups:
            cells += await _run_group(options.attach.rstrip("/"), group, keys, policy)
        await _ready(options.admin, "after")
        return _write(options, cells, policy, groups)
    stack = _OwnStack(raw, policy, {t for g in groups for c in g for t in c.tenants})
    await stack.start()
    try:
        for group in groups:
            async with stack.up() as base:
                cells += await _run_group(base, group, stack.keys, stack.policy)
    finally:
        await stack.stop()
    return _write(options, cells, stack.policy, groups)
