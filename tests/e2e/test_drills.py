"""`rungway drill` end to end: real Envoy and sidecar (a fresh `rungway up` per scenario), mock
providers staging the faults, the report and its chart, the exit code on an injected regression,
and a saved fixture that replays."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.drills import parse_fixture
from tests.conftest import Fleet
from tests.stack import Stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EVALS = REPO / "evals" / "failover"
TASKS = ("chat", "json-schema", "clinic-summary")
SCENARIOS = ("quality_drop", "schema_drift")


def drill(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "extproc.cli", "drill", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def results(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report.with_suffix(".json").read_text())
    return data


def cell(data: dict[str, Any], key: str) -> dict[str, Any]:
    return next(c for c in data["cells"] if f"{c['scenario']}/{c['task']}/{c['tenant']}" == key)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    for name in TASKS:
        shutil.copy(EVALS / f"{name}.json", folder)
    return folder


@pytest.fixture(scope="module")
def weak_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drill policy with the health contract that catches a short answer switched off."""
    raw = yaml.safe_load((EVALS / "policy.yaml").read_text())
    raw["tasks"]["default"]["min_output_tokens"] = 1
    path = tmp_path_factory.mktemp("weak") / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def scenarios(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--scenario", name)]


def test_a_drill_through_envoy_scores_the_trace_and_reports_it(tasks: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.md"
    run = drill("--tasks", tasks, "--report", report, *scenarios(*SCENARIOS))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 of 6 cells pass" in run.stdout
    text = report.read_text()
    assert "6/6 cells pass · **no regression**" in text and "![drill matrix](report.svg)" in text
    chart = ET.fromstring(report.with_suffix(".svg").read_text())
    labels = {t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")}
    assert {"quality_drop", "schema_drift", "chat", "json-schema", "clinic-summary"} <= labels
    data = results(report)
    # A short answer from the primary (no error at all) is caught by the health contract.
    short = cell(data, "quality_drop/chat/app")["trace"]
    assert (short["served_by"], short["tier"], short["degraded"]) == ("anthropic-backup/claude-sonnet-4-5", 1, True)
    assert short["reason"] == "quality_regression" and short["text"].endswith("w12")
    # The fallback's JSON drifts too: the third rung serves JSON valid against the task's schema.
    drift = cell(data, "schema_drift/json-schema/app")
    assert drift["trace"]["served_by"] == "small-local/llama-3.1-8b" and drift["trace"]["attempts"] >= 3
    assert drift["checks"]["schema"] == {"passed": True, "detail": "valid"}
    assert drift["cost_usd"] > 0
    # The clinic never gets a fallback: an honest refusal in its SDK's dialect.
    clinic = cell(data, "schema_drift/clinic-summary/clinic")
    assert clinic["expected"] == "refusal" and clinic["trace"]["status"] >= 500 and clinic["passed"]


def test_a_policy_that_lets_a_quality_drop_through_fails_the_drill(
    tasks: Path, weak_policy: Path, tmp_path: Path
) -> None:
    report = tmp_path / "weak.md"
    run = drill("--policy", weak_policy, "--tasks", tasks, "--report", report, *scenarios("quality_drop"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "REGRESSION quality_drop/chat/app: rung: tier 0 openai-primary/gpt-4o" in run.stdout
    assert "## Regressions" in report.read_text()
    failed = cell(results(report), "quality_drop/chat/app")
    assert failed["checks"]["properties"]["passed"] is False
    # With that run as the baseline the same failures are known, not new: the drill passes.
    again = drill(
        "--policy", weak_policy, "--tasks", tasks, "--report", tmp_path / "again.md",
        "--baseline", report.with_suffix(".json"), *scenarios("quality_drop"),
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_saved_drill_cell_replays_as_a_fixture(tasks: Path, weak_policy: Path, tmp_path: Path) -> None:
    run = drill(
        "--tasks", tasks, "--report", tmp_path / "save.md", "--save", "quality_drop/chat/app", *scenarios("quality_drop")
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    path = tasks / "fixtures" / "quality_drop.chat.app.json"
    assert f"saved fixture {path}" in run.stdout
    fixture = parse_fixture(path.read_text(), str(path))
    assert fixture.source.kind == "drill" and fixture.expect_rung == 1
    assert [(f.rung, f.mode) for f in fixture.faults] == [(0, "tokens:2")]
    replay = drill("--tasks", tasks, "--report", tmp_path / "replay.md", "--scenario", "fixtures")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert cell(results(tmp_path / "replay.md"), "fixture:quality_drop.chat.app/chat/app")["passed"]
    broken = drill("--policy", weak_policy, "--tasks", tasks, "--report", tmp_path / "b.md", "--scenario", "fixtures")
    assert broken.returncode == 1 and "REGRESSION fixture:quality_drop.chat.app/chat/app" in broken.stdout


def test_a_bad_golden_task_stops_the_drill_before_any_stack(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"id": "bad"}')
    run = drill("--tasks", tmp_path, "--report", tmp_path / "r.md")
    assert run.returncode == 2 and "bad.json: " in run.stderr and not (tmp_path / "r.md").exists()


def test_a_drill_attaches_to_a_running_stack(clean: Stack, tmp_path: Path) -> None:
    # The suite's stack (tests/conftest.py): its policy, its mock providers, its app key.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(EVALS / "chat.json", tasks)
    admin = clean.admin_url.removeprefix("http://")
    run = drill(
        "--policy", clean.policy_path, "--tasks", tasks, "--report", tmp_path / "r.md",
        "--listen", f"127.0.0.1:{clean.port}", "--admin", admin, "--key", f"app={clean.app_key}",
        *scenarios("primary_timeout"),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    timed_out = cell(results(tmp_path / "r.md"), "primary_timeout/chat/app")["trace"]
    assert (timed_out["served_by"], timed_out["reason"]) == ("secondary/claude-fallback", "timeout")
    missing = drill("--policy", clean.policy_path, "--tasks", tasks, "--report", tmp_path / "m.md",
                    "--listen", f"127.0.0.1:{clean.port}")  # fmt: skip
    assert missing.returncode == 2 and "needs a key for tenants ['app', 'storm-b', 'storm-c']" in missing.stderr


def test_an_incident_from_the_audit_trail_becomes_a_fixture_that_replays(
    clean: Stack, fleet: Fleet, tmp_path: Path
) -> None:
    # An incident on the suite's stack: the primary answers 503, the secondary serves.
    fleet.primary.set_mode("status:503")
    clean.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    request_id = fleet.secondary.requests[-1].headers["x-request-id"]
    fleet.reset()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(EVALS / "chat.json", tasks)
    audit_dir = clean.dir / "audit"
    deadline = time.monotonic() + 10
    while True:  # the trail is written off the request's path
        made = subprocess.run(
            [sys.executable, "-m", "extproc.cli", "incident", "--audit-dir", str(audit_dir), "--request-id",
             request_id, "--task", "chat", "--policy", str(clean.policy_path), "--tasks", str(tasks)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if made.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert made.returncode == 0, made.stderr
    (saved,) = (tasks / "fixtures").glob("incident.*.json")
    fixture = json.loads(saved.read_text())
    assert fixture["source"] == {"kind": "incident", "ref": request_id, "recorded_at": fixture["source"]["recorded_at"]}
    assert [f["rung"] for f in fixture["faults"]] == [0] and fixture["expect_rung"] == 1
    admin = clean.admin_url.removeprefix("http://")
    replay = drill(
        "--policy", clean.policy_path, "--tasks", tasks, "--report", tmp_path / "r.md", "--scenario", "fixtures",
        "--listen", f"127.0.0.1:{clean.port}", "--admin", admin, "--key", f"app={clean.app_key}",
    )  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    replayed = results(tmp_path / "r.md")["cells"]
    assert [c["trace"]["served_by"] for c in replayed] == ["secondary/claude-fallback"]
