"""Per-tenant degradation rules through real Envoy (issue 11, T2): the same outage, different
tenants, different answers; the tenant is the key's holder."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest

from tests.conftest import KEY_ENV, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tenants(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policy = fleet.policy(
        tmp_path_factory.mktemp("tenants"),
        tenants={
            "hospital": {"lowest_tier": 0, "message": "Clinical work is never served by a fallback"},
            "bank": {"regions": ["eu"]},
            "agency": {"lowest_tier": 2},
            "clinic": {"approval_beyond_tier": 0},
        },
    )
    policy["approvals"] = str(APPROVALS.setdefault("path", tmp_path_factory.mktemp("approvals") / "approvals.json"))
    policy["providers"]["primary"]["region"] = "us"
    policy["providers"]["secondary"]["region"] = "eu"
    with running(policy, env=KEY_ENV) as stack:
        KEYS.update({name: stack.issue_key(name) for name in ("agency", "hospital", "bank", "clinic")})
        time.sleep(1.5)  # the sidecar takes a changed key store within a second
        yield stack


KEYS: dict[str, str] = {}
APPROVALS: dict[str, Path] = {}


def clinic_served_by(stack: Stack) -> str | None:
    """Which rung served the clinic's request, or None when it was refused."""
    with stack.openai_as(KEYS["clinic"]) as clinic:
        try:
            raw = clinic.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            return None
    return raw.headers["x-rungway-served-by"]


def test_an_operators_approval_lets_a_tenant_reach_a_fallback_until_it_is_revoked(tenants: Stack, fleet: Fleet) -> None:
    import subprocess
    import sys

    import httpx2 as httpx

    from tests.stack import REPO

    fleet.reset()
    fleet.primary.set_mode("status:503")
    assert clinic_served_by(tenants) is None  # tier 1 needs an approval: none yet
    assert not fleet.secondary.requests
    approve = [sys.executable, "-m", "extproc.cli", "approve", "--store", str(APPROVALS["path"])]
    done = subprocess.run(
        [*approve, "--tenant", "clinic", "--tier", "1", "--for", "1h", "--by", "oncall", "--reason", "INC-7"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while (served := clinic_served_by(tenants)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served == "secondary/claude-fallback"  # taken by every worker within about a second
    listed = httpx.get(tenants.admin_url + "/approvals", timeout=10).json()["approvals"]
    assert [(a["tenant"], a["tier"], a["by"], a["reason"]) for a in listed] == [("clinic", 1, "oncall", "INC-7")]
    assert httpx.delete(tenants.admin_url + "/approvals", params={"tenant": "clinic"}, timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    while (served := clinic_served_by(tenants)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served is None  # revoked: back to tier 0 only
    assert httpx.post(tenants.admin_url + "/approvals", json={"tenant": "clinic", "tier": 9, "for_s": 60, "by": "x"},
                      timeout=10).status_code == 400  # fmt: skip
    # The audit trail heard both, whoever edited the file (the CLI, then the admin API).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = httpx.get(tenants.admin_url + "/audit", params={"since": "10m", "tenant": "clinic"}, timeout=10)
        approvals = [(r["trigger"], r["detail"]) for r in records.json()["records"] if r["kind"] == "approval"]
        if len(approvals) >= 2:
            break
        time.sleep(0.2)
    assert len(approvals) >= 2, approvals
    (granted, g), (revoked, _) = approvals[-2:]
    assert (granted, revoked) == ("granted", "revoked")
    assert (g["tier"], g["by"], g["reason"]) == (1, "oncall", "INC-7")
    fleet.reset()


def test_the_same_outage_serves_one_tenant_from_a_fallback_and_never_the_other(tenants: Stack, fleet: Fleet) -> None:
    fleet.reset()
    fleet.primary.set_mode("status:503")
    with tenants.openai_as(KEYS["agency"]) as agency:
        served = agency.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert served.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert served.headers["x-rungway-tier"] == "1"
    fleet.reset()
    fleet.primary.set_mode("status:503")
    with tenants.openai_as(KEYS["hospital"]) as hospital, pytest.raises(openai.APIStatusError) as caught:
        hospital.chat.completions.create(model="gpt-4o", messages=HI)
    assert caught.value.status_code == 503
    assert not fleet.secondary.requests and not fleet.small.requests  # never a fallback
    fleet.reset()


def test_residency_keeps_a_tenant_on_providers_in_its_regions(tenants: Stack, fleet: Fleet) -> None:
    fleet.reset()
    with tenants.openai_as(KEYS["bank"]) as bank:
        raw = bank.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
    assert raw.headers["x-rungway-reason"] == "not_permitted"  # why not the primary
    assert not fleet.primary.requests


def test_policy_explain_says_which_rung_serves_and_why_not_the_others(fleet: Fleet, tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from tests.stack import REPO

    policy = fleet.policy(tmp_path, tenants={"hospital": {"lowest_tier": 0}}, clients={"key_store": "k.json"})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    cmd = [
        sys.executable,
        "-m",
        "extproc.cli",
        "policy",
        "explain",
        str(path),
        "--tenant",
        "hospital",
        "--model",
        "gpt-4o",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "serves" in lines[1] and "primary/gpt-4o" in lines[1]
    assert "below the lowest tier tenant 'hospital' permits" in lines[2]
    assert lines[-1] == "→ served by primary/gpt-4o (tier 0)"


def test_a_tenant_over_its_token_budget_is_refused_with_when_to_come_back(fleet: Fleet, tmp_path: Path) -> None:
    # Every worker counts every worker's spend (the pod's hub): whichever worker takes the next
    # request knows the budget is gone.
    policy = fleet.policy(tmp_path, tenants={"app": {"budget": {"max_tokens": 20, "window_s": 3600}}})
    fleet.reset()
    with running(policy, env=KEY_ENV, workers=2) as stack:
        stack.openai().chat.completions.create(model="gpt-4o", messages=HI)  # spends its 20+ tokens
        deadline = time.monotonic() + 5
        refused = None
        while refused is None and time.monotonic() < deadline:
            try:
                stack.openai().with_options(max_retries=0).chat.completions.create(model="gpt-4o", messages=HI)
            except openai.RateLimitError as exc:
                refused = exc
        assert refused is not None, "the tenant was never refused"
        assert 0 < int(refused.response.headers["retry-after"]) <= 3600
        assert refused.response.headers["x-rungway-reason"] == "budget_exceeded"
        assert "token budget" in str(refused.body)
        assert 'rungway_budget_reached_total{action="refuse",reason="tokens",tenant="app"}' in stack.metrics()
        assert not stack.envoy_trouble()


class Notices(BaseHTTPRequestHandler):
    """A tenant's notify_url: records every POST."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Notices.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_tier_change_is_posted_to_the_tenants_notify_url_signed(fleet: Fleet, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Notices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "notify-secret-0123456789"
    policy = fleet.policy(tmp_path, tenants={"app": {"notify_url": f"http://127.0.0.1:{server.server_address[1]}/n"}})
    policy["notify_secret"] = {"env": "RW_TEST_NOTIFY_SECRET"}
    fleet.reset()
    try:
        with running(policy, env={**KEY_ENV, "RW_TEST_NOTIFY_SECRET": secret}) as stack:
            stack.openai().chat.completions.create(model="gpt-4o", messages=HI)  # tier 0: nothing to tell
            fleet.primary.set_mode("status:503")
            stack.openai().chat.completions.create(model="gpt-4o", messages=HI)  # tier 1
            stack.openai().chat.completions.create(model="gpt-4o", messages=HI)  # still tier 1: told once
            fleet.primary.set_mode("ok")
            stack.openai().chat.completions.create(model="gpt-4o", messages=HI)  # back to tier 0
            deadline = time.monotonic() + 10
            while len(Notices.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)  # nothing more arrives
            notices = [json.loads(body) for _, body in Notices.received]
            assert [(n["from_tier"], n["tier"], n["direction"]) for n in notices] == [
                (0, 1, "degraded"),
                (1, 0, "recovered"),
            ]
            assert notices[0]["tenant"] == "app" and notices[0]["served_by"] == "secondary/claude-fallback"
            for headers, body in Notices.received:
                t, v1 = (part.split("=", 1)[1] for part in headers["x-rungway-signature"].split(","))
                expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(v1, expected)
            assert 'rungway_tier_notices_total{outcome="delivered",tenant="app"} 2.0' in stack.metrics()
    finally:
        server.shutdown()
        server.server_close()
