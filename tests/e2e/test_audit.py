"""The audit trail through real Envoy (A1): a fallback leaves its trip, hop and tier change,
each naming the request (Envoy's x-request-id), the tenant, the policy version and the prompt's
hash, never the prompt; `rungway audit verify` passes, and fails naming the line and the kind
of tampering once a line is edited, deleted, moved or torn."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import REPO, RedisServer, Stack, running

pytestmark = pytest.mark.e2e
SECRET = "the patient in bed 7 is allergic to penicillin"


@pytest.fixture(scope="module")
def audited(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(fleet.policy(tmp_path_factory.mktemp("audit")), env=KEY_ENV, workers=2) as stack:
        yield stack


def rungway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def trail(stack: Stack, request_id: str, kinds: int) -> list[dict[str, Any]]:
    """The request's records from GET /audit, once the writer has them (it is off the hot path)."""
    deadline = time.monotonic() + 10
    while True:
        with httpx.Client(timeout=10) as client:
            answer = client.get(stack.admin_url + "/audit", params={"tenant": "app", "since": "1h"})
        assert answer.status_code == 200
        mine = [r for r in answer.json()["records"] if r["request_id"] == request_id]
        if len(mine) >= kinds or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_a_fallback_is_audited_with_the_request_and_the_prompts_hash_only(audited: Stack, fleet: Fleet) -> None:
    fleet.reset()
    fleet.primary.set_mode("status:503")
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": SECRET}]}).encode()
    answer = audited.post("/v1/chat/completions", body)
    assert answer.status_code == 200 and answer.headers["x-rungway-tier"] == "1"
    request_id = fleet.secondary.requests[-1].headers["x-request-id"]  # Envoy's, as the provider saw it
    records = trail(audited, request_id, 4)
    assert [(r["kind"], r["trigger"]) for r in records] == [
        ("trip", "server_error"),  # primary, first slot
        ("trip", "server_error"),  # primary, its second slot (a 503 gets the same rung once)
        ("hop", "server_error"),
        ("tier_change", "server_error"),
    ]
    for r in records:
        assert (r["tenant"], r["task"]) == ("app", "default")
        assert r["policy"].startswith("test-2026.12.1+")  # the revision: version + content hash
        assert r["prompt_hash"] == hashlib.sha256(body).hexdigest()
    hop = records[2]
    assert (hop["source"]["provider"], hop["source"]["tier"]) == ("primary", 0)
    assert (hop["target"]["provider"], hop["target"]["model"], hop["target"]["tier"]) == (
        "secondary",
        "claude-fallback",
        1,
    )
    assert records[3]["tokens"] is not None and records[3]["tokens"] > 0
    audit_dir = audited.dir / "audit"
    on_disk = b"".join(p.read_bytes() for p in audit_dir.glob("*.jsonl"))
    assert SECRET.encode() not in on_disk and request_id.encode() in on_disk
    shown = rungway("audit", "show", "--dir", str(audit_dir), "--tenant", "app", "--since", "1h")
    assert shown.returncode == 0
    assert "hopped from primary/gpt-4o (tier 0) to secondary/claude-fallback (tier 1) (server_error)" in shown.stdout
    with httpx.Client(timeout=10) as client:
        status = client.get(audited.admin_url + "/status").json()
    assert status["audit"] == {"backlog_records": 0, "alarm": False}
    metrics = audited.metrics()  # the workers' counters, through the supervisor's /metrics
    assert re.search(r'^rungway_audit_records_total\{kind="hop"\} [1-9]', metrics, re.MULTILINE)
    assert re.search(r"^rungway_audit_backlog_records 0\.0$", metrics, re.MULTILINE)
    fleet.reset()


def test_a_tier_zero_answer_leaves_no_record(audited: Stack, fleet: Fleet) -> None:
    fleet.reset()
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}).encode()
    # A task class no test here served below tier 0: the first tier-0 answer after a fallback is
    # a recovery, and that is recorded (tier_change, trigger recovered: tests/e2e/test_review.py).
    answer = audited.post("/v1/chat/completions", body, headers={"x-rungway-task": "summarizer"})
    assert answer.status_code == 200
    request_id = fleet.primary.requests[-1].headers["x-request-id"]
    time.sleep(0.5)  # what the writer would have had by now
    assert trail(audited, request_id, 0) == []


def tampered(source: Path, target: Path, change: str) -> tuple[str, int]:
    """A copy of the trail with one chain's segment changed; the (file, line) it changed."""
    shutil.copytree(source, target)
    segment = max(target.glob("*.jsonl"), key=lambda p: p.stat().st_size)
    lines = segment.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    if change == "edit":
        record = json.loads(lines[1])
        record["tenant"] = "someone-else"
        lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    elif change == "delete":
        del lines[1]
    elif change == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif change == "truncate":
        lines[-1] = lines[-1][:-10]
        segment.write_bytes(b"".join(lines))
        return segment.name, len(lines)
    elif change == "drop_last":  # a shorter chain is sound: only the anchor shows the loss
        del lines[-1]
        segment.write_bytes(b"".join(lines))
        return segment.name, len(lines)
    segment.write_bytes(b"".join(lines))
    return segment.name, 2


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ("edit", "edited"),
        ("delete", "deleted"),
        ("reorder", "reordered"),
        ("truncate", "torn_tail"),
        ("drop_last", "deleted"),
    ],
)
def test_verify_passes_and_names_each_kind_of_tampering(
    audited: Stack, fleet: Fleet, tmp_path: Path, change: str, kind: str
) -> None:
    fleet.reset()
    fleet.primary.set_mode("status:503")
    for _ in range(2):  # at least three records in one chain
        assert (
            audited.post(
                "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
            ).status_code
            == 200
        )
    fleet.reset()
    source = audited.dir / "audit"
    deadline = time.monotonic() + 10
    while (verified := rungway("audit", "verify", str(source))).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # a line being written right now is not yet whole
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
    name, line = tampered(source, tmp_path / "copy", change)
    chain = name.partition(".")[0]
    anchor = re.search(rf"^{chain}: intact, .*; anchor (\S+)$", verified.stdout, re.MULTILINE)
    assert anchor is not None, verified.stdout
    broken = rungway("audit", "verify", str(tmp_path / "copy"), "--anchor", anchor[1])
    assert broken.returncode == 1
    assert re.search(rf"BROKEN at {re.escape(name)}:{line}\b.*: {kind}: ", broken.stdout), broken.stdout


def test_fleet_mode_ships_the_trail_to_the_buss_redis_stream(fleet: Fleet, tmp_path: Path) -> None:
    import redis

    from extproc.audit import Intact, lines_of, verify

    server = RedisServer()
    server.start()
    try:
        policy = fleet.policy(
            tmp_path,
            health={"enabled": False, "probe_interval_s": 0, "bus": server.url},
            audit={"export": "bus"},
        )
        env = {**KEY_ENV, "RUNGWAY_BUS_SECRET": "e2e-fleet-secret-0123456789abcdef"}
        with running(policy, env=env) as stack:
            fleet.reset()
            fleet.primary.set_mode("status:503")
            assert (
                stack.post(
                    "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
                ).status_code
                == 200
            )
            request_id = fleet.secondary.requests[-1].headers["x-request-id"]
            fleet.reset()
            client = redis.Redis(host="127.0.0.1", port=server.port)
            deadline = time.monotonic() + 15
            while True:
                entries: Any = client.xrange("rungway:audit")
                shipped: list[dict[bytes, bytes]] = [fields for _, fields in entries]
                if any(json.loads(f[b"line"])["kind"] == "tier_change" for f in shipped) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            records = [json.loads(f[b"line"]) for f in shipped]
            assert [r["kind"] for r in records if r["request_id"] == request_id] == [
                "trip",
                "trip",
                "hop",
                "tier_change",
            ]
            # The stream's lines are the chain's own: they verify there as they do on disk.
            line_data = b"".join(f[b"line"] for f in shipped)
            assert isinstance(verify(lines_of([("stream", line_data)])), Intact)
            local = b"".join(p.read_bytes() for p in sorted((stack.dir / "audit").glob("w0.*.jsonl")))
            assert local.startswith(line_data)
    finally:
        server.stop()
