"""Recovery and rollback (E3) through real Envoy, with the official OpenAI SDK: an answer served
below tier 0 to a tenant with `rerun_on_recovery` is kept; once the primary recovers it is re-run
on tier 0 (through Envoy, as Rungway, never reaching a client), the diff is kept and shown by
`rungway review list/show` through the authenticated admin API; the promotion back to tier 0 is
in /metrics and the audit trail; a tenant without the knob keeps nothing; a kept answer survives
a restart and is re-run by the next run."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import REPO, Stack, running

pytestmark = pytest.mark.e2e
TOKEN = "review-admin-token-0123456789abcdef"
PROMPT = "Summarise the incident for the on-call engineer."


def review_policy(fleet: Fleet, tmp: Path) -> dict[str, Any]:
    """Tenant `app` re-runs degraded answers on recovery; tenant `plain` does not."""
    return fleet.policy(
        tmp,
        health={
            "enabled": True,
            "min_samples": 3,
            "probe_interval_s": 0,
            "recovery_probe_s": 0.5,
            "circuit": {"minimum_calls": 2, "consecutive_failures": 2, "open_s": 1, "half_open_successes": 1},
        },
        tenants={"app": {"rerun_on_recovery": True}, "plain": {}},
        review={"store": str(tmp / "reviews.db"), "rerun_every_s": 0.2},
    )


def admin(stack: Stack, path: str, **params: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(stack.admin_url + path, params=params, headers={"authorization": f"Bearer {TOKEN}"})


def cli(stack: Stack, token_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    address = stack.admin_url.removeprefix("http://")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "extproc.cli",
            "review",
            *args,
            "--admin",
            address,
            "--admin-token-file",
            str(token_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def reviews(stack: Stack, **params: str) -> list[dict[str, Any]]:
    answer = admin(stack, "/reviews", **params)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["reviews"]
    return found


def until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout}s")


def degraded_answer(stack: Stack, key: str, fleet: Fleet) -> str:
    """The primary fails: the SDK's answer comes from tier 1, flagged degraded. Its request id."""
    fleet.primary.set_mode("status:503")
    client = stack.openai_as(key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=50
    )
    assert raw.status_code == 200
    assert raw.headers["x-rungway-tier"] == "1" and raw.headers["x-rungway-degraded"] == "true"
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.parse().choices[0].message.content.startswith("Hello from secondary")  # type: ignore[union-attr]
    return fleet.secondary.requests[-1].headers["x-request-id"]


def test_a_degraded_answer_is_re_run_on_tier_0_after_recovery_and_its_diff_kept(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    with running(review_policy(fleet, tmp_path), env={**KEY_ENV, "RUNGWAY_ADMIN_TOKEN": TOKEN}) as stack:
        plain = stack.issue_key("plain")
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        request_id = degraded_answer(stack, stack.app_key, fleet)
        degraded_answer(stack, plain, fleet)  # a tenant without the knob: nothing kept
        kept = until("the app's answer kept", lambda: reviews(stack))
        assert [(r["tenant"], r["state"], r["served_by"], r["tier"]) for r in kept] == [
            ("app", "pending", "secondary/claude-fallback", 1)
        ]
        assert kept[0]["request_id"] == request_id
        # The admin API is authenticated like every admin endpoint.
        with httpx.Client(timeout=10) as client:
            assert client.get(stack.admin_url + "/reviews").status_code == 401
        # A client cannot pass itself off as a re-run (the header carries the pod's secret).
        forged = stack.post(
            "/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            {"x-rungway-rerun": f"guess app {kept[0]['id']}"},
        )
        assert forged.status_code == 401

        fleet.primary.set_mode("ok")  # the primary recovers: probes close its circuit
        done = until("the re-run", lambda: [r for r in reviews(stack) if r["state"] == "done"], timeout=45)
        review = done[0]
        assert review["rerun_by"] == "primary/gpt-4o" and review["same_text"] is False
        # The re-run went to the primary with its own key and the app's prompt, never the app's key.
        rerun = [r for r in fleet.primary.requests if PROMPT.encode() in r.body][-1]
        assert stack.app_key not in json.dumps(dict(rerun.headers))
        assert json.loads(rerun.body)["messages"] == [{"role": "user", "content": PROMPT}]

        listed = cli(stack, token_file, "list", "--tenant", "app", "--since", "1h")
        assert listed.returncode == 0, listed.stderr
        assert review["id"] in listed.stdout and "done" in listed.stdout and "differs" in listed.stdout
        assert "secondary/claude-fallback (1)" in listed.stdout and "primary/gpt-4o" in listed.stdout
        assert cli(stack, token_file, "list", "--tenant", "plain").stdout.count("\n") == 1  # the header only
        shown = cli(stack, token_file, "show", review["id"])
        assert shown.returncode == 0, shown.stderr
        assert PROMPT in shown.stdout
        assert "Hello from secondary (claude-fallback)" in shown.stdout  # the degraded answer
        assert "Hello from primary (gpt-4o)" in shown.stdout  # the tier-0 answer
        assert "-Hello from secondary (claude-fallback)" in shown.stdout  # the unified diff
        assert "+Hello from primary (gpt-4o)" in shown.stdout
        detail = json.loads(cli(stack, token_file, "show", review["id"], "--json").stdout)
        assert detail["diff"]["unified"].startswith("--- degraded secondary/claude-fallback\n+++ tier 0 primary/gpt-4o")
        assert detail["rerun_answer"]["model"] == "gpt-4o"

        # The promotion back to tier 0 shows: a client answer from tier 0, a tier change in the
        # metrics and the audit trail, and the re-run's own record with both rungs and hashes.
        answer = stack.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.headers["x-rungway-tier"] == "0"
        metrics = admin(stack, "/metrics").text
        assert metric(metrics, "rungway_tier_changes_total", tenant="app", task="default", direction="degraded") == 1
        assert metric(metrics, "rungway_tier_changes_total", tenant="app", task="default", direction="recovered") == 1
        assert metric(metrics, "rungway_reruns_total", tenant="app", outcome="differs") == 1
        assert metric(metrics, "rungway_reviews_kept_total", tenant="app", outcome="kept") == 1
        assert metric(metrics, "rungway_reviews_kept_total", tenant="plain", outcome="kept") == 0
        assert metric(metrics, "rungway_reviews", state="done") == 1

        def audited() -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = admin(stack, "/audit", tenant="app", since="1h").json()["records"]
            kinds = {(r["kind"], r["trigger"]) for r in records}
            return records if {("rerun", "recovered"), ("tier_change", "recovered")} <= kinds else []

        records = until("the audit records", audited)
        recovered = next(r for r in records if (r["kind"], r["trigger"]) == ("tier_change", "recovered"))
        assert (recovered["source"]["tier"], recovered["target"]["tier"]) == (1, 0)
        assert recovered["detail"]["from_tier"] == 1
        rerun_record = next(r for r in records if r["kind"] == "rerun")
        assert (rerun_record["source"]["provider"], rerun_record["source"]["tier"]) == ("secondary", 1)
        assert (rerun_record["target"]["provider"], rerun_record["target"]["tier"]) == ("primary", 0)
        assert rerun_record["request_id"] == request_id and rerun_record["detail"]["review"] == review["id"]
        assert rerun_record["prompt_hash"] == review["prompt_hash"]
        with sqlite3.connect(tmp_path / "reviews.db") as db:
            answer_bytes, rerun_bytes = db.execute(
                "SELECT answer, rerun_answer FROM reviews WHERE id = ?", (review["id"],)
            ).fetchone()
        assert rerun_record["detail"]["degraded_sha256"] == hashlib.sha256(answer_bytes).hexdigest()
        assert rerun_record["detail"]["rerun_sha256"] == hashlib.sha256(rerun_bytes).hexdigest()
        trail = b"".join(p.read_bytes() for p in (stack.dir / "audit").glob("*.jsonl"))
        assert PROMPT.encode() not in trail  # the trail names prompts and answers by hash only
        verified = subprocess.run(
            [sys.executable, "-m", "extproc.cli", "audit", "verify", str(stack.dir / "audit")],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # The admin API and the CLI without the token, and an unknown review.
        assert admin(stack, "/reviews/rev_unknown").status_code == 404
        missing = cli(stack, token_file, "show", "rev_unknown")
        assert missing.returncode != 0 and "HTTP 404 no such review" in missing.stderr
        (tmp_path / "wrong.token").write_text("not-the-token\n")
        refused = cli(stack, tmp_path / "wrong.token", "list")
        assert refused.returncode != 0 and "HTTP 401" in refused.stderr


def test_a_kept_answer_survives_a_restart_and_is_re_run_by_the_next_run(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    policy = review_policy(fleet, tmp_path)
    env = {**KEY_ENV, "RUNGWAY_ADMIN_TOKEN": TOKEN}
    with running(policy, env=env) as stack:
        degraded_answer(stack, stack.app_key, fleet)
        kept = until("the answer kept", lambda: reviews(stack))
    assert [r["state"] for r in kept] == ["pending"]
    fleet.primary.set_mode("ok")
    with running(policy, env=env) as stack:
        done = until("the re-run", lambda: [r for r in reviews(stack) if r["state"] == "done"], timeout=45)
        assert [r["id"] for r in done] == [kept[0]["id"]]
        assert done[0]["rerun_by"] == "primary/gpt-4o"
