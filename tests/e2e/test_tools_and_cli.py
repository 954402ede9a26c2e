"""Capability matrix for tools, the CLI a platform engineer uses, and the `make run` demo."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from extproc.runtime.supervisor import envoy_binary
from tests.conftest import Fleet
from tests.stack import REPO, Stack, body_of

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "issue_refund", "parameters": {"type": "object", "properties": {}}}}]


def test_a_rung_without_tool_support_is_skipped_for_requests_with_tools(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    with pytest.raises(openai.InternalServerError) as info:
        clean.openai().chat.completions.create(model="notools-x", messages=HI, tools=TOOLS)  # type: ignore[arg-type]
    assert info.value.response.headers["x-rungway-attempts"] == "2"  # the primary, once more: no other rung
    assert not fleet.small.requests
    # Without tools the same ladder may use it.
    completion = clean.openai().chat.completions.create(model="notools-x", messages=HI)
    assert completion.model == "small-model"


def test_a_strip_tools_rung_serves_without_the_tools_and_says_so(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode("status:529")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, tools=TOOLS)  # type: ignore[arg-type]
    assert raw.headers["x-rungway-served-by"] == "small/small-model"
    assert raw.headers["x-rungway-degraded"] == "true"
    sent = body_of(fleet.small.requests[-1])
    assert "tools" not in sent and sent["model"] == "small-model"
    # The rungs before it did get the tools.
    assert body_of(fleet.primary.requests[-1])["tools"][0]["function"]["name"] == "issue_refund"
    assert body_of(fleet.secondary.requests[-1])["tools"][0]["name"] == "issue_refund"


def rungway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_policy_check_reports_field_level_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "version": "v1",
                "providers": {"a": {"base_url": "ftp://x", "dialect": "openai", "colour": "red"}},
                "ladders": {"main": [{"provider": "b"}]},
                "models": [{"match": "*", "ladder": "main"}],
            }
        )
    )
    result = rungway("policy", "check", str(bad))
    assert result.returncode == 1
    assert "providers.a.base_url: base_url must be an http(s) URL with a host, but was 'ftp://x'" in result.stderr
    assert "providers.a.colour: unknown field" in result.stderr
    ok = rungway("policy", "check", str(REPO / "policies" / "example.yaml"))
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_policy_check_validates_a_directory_naming_the_file_and_the_field(tmp_path: Path) -> None:
    defaults = yaml.safe_load((REPO / "policies" / "example.yaml").read_text())
    tenants = defaults.pop("tenants")
    (tmp_path / "tenants").mkdir()
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    for name, tenant in tenants.items():
        (tmp_path / "tenants" / f"{name}.yaml").write_text(yaml.safe_dump(tenant))
    ok = rungway("policy", "check", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    single = rungway("policy", "check", str(REPO / "policies" / "example.yaml"))
    revision = single.stdout.split("revision ")[1].split(";")[0]
    assert f"revision {revision};" in ok.stdout and f"{len(tenants)} tenants" in ok.stdout  # the same policy
    (tmp_path / "tenants" / "clinic.yaml").write_text("lowest_tier: 7\nregion: [eu]\n")
    bad = rungway("policy", "check", str(tmp_path))
    assert bad.returncode == 1
    assert f"invalid policy {tmp_path}:" in bad.stderr
    assert "tenants/clinic.yaml: lowest_tier: Input should be less than or equal to 3" in bad.stderr
    assert "tenants/clinic.yaml: region: unknown field" in bad.stderr


def test_policy_check_refuses_a_credential_over_plain_http_naming_the_provider(tmp_path: Path) -> None:
    policy: dict[str, Any] = {
        "version": "v1",
        "clients": {"key_store": str(tmp_path / "keys.json")},
        "providers": {
            "remote": {"base_url": "http://llm.corp.test:8000", "dialect": "openai", "credential": {"env": "K"}}
        },
        "ladders": {"main": [{"provider": "remote"}]},
        "models": [{"match": "*", "ladder": "main"}],
    }
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(policy))
    refused = rungway("policy", "check", str(path))
    assert refused.returncode == 1
    assert "providers.remote: base_url 'http://llm.corp.test:8000' would send the credential in clear text" in (
        refused.stderr
    )
    policy["providers"]["remote"]["allow_plaintext_credential"] = True
    path.write_text(yaml.safe_dump(policy))
    opted = rungway("policy", "check", str(path))
    assert opted.returncode == 0 and "OK" in opted.stdout


def test_policy_check_names_yaml_syntax_errors_by_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("version: v1\nproviders: [\n")
    result = rungway("policy", "check", str(bad))
    assert result.returncode == 1 and "line" in result.stderr


def test_envoy_config_renders_a_bootstrap_envoy_accepts(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    token = tmp_path / "channel.token"
    token.write_text(secrets.token_hex(32))
    result = rungway(
        "envoy-config",
        "--policy", str(REPO / "policies" / "example.yaml"),
        "--extproc-socket", "/run/rungway/worker-0.sock",
        "--channel-token-file", str(token),
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert token.read_text() in out.read_text()
    check = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(out)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_up_refuses_to_start_without_provider_keys(tmp_path: Path) -> None:
    result = rungway("up", "--policy", str(REPO / "policies" / "example.yaml"), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert "OPENAI_API_KEY" in result.stderr and "ANTHROPIC_API_KEY" in result.stderr


def test_make_run_demo_shows_a_fallback() -> None:
    result = rungway("demo", "--no-wait", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served-by=openai-primary/gpt-4o  tier=0  degraded=false" in result.stdout
    assert "served-by=anthropic-backup/claude-sonnet-4-5  tier=1  degraded=true  reason=server_error" in result.stdout
    assert "reason=schema_error" in result.stdout and "streamed:" in result.stdout
    # ... and what the audit trail recorded of it, verified.
    assert "hopped from openai-primary/gpt-4o (tier 0) to anthropic-backup/claude-sonnet-4-5 (tier 1)" in result.stdout
    assert re.search(r"rungway audit verify \S+: intact", result.stdout)


BOARD_LINE = re.compile(
    r"^  (?P<phase>healthy|brownout|recovered)\s+(?P<at>[\d.]+)s  circuit (?P<state>\w+)\s+score (?P<score>[\d.]+)  "
    r"on the primary: revenue (?P<revenue>\d+)/\d+ · customer (?P<customer>\d+)/\d+ · deferrable (?P<deferrable>\d+)/\d+"
    r"  failed (?P<failed>\d+)",
    re.MULTILINE,
)


def test_demo_stages_a_brownout_the_board_rides_out() -> None:
    """`rungway demo --brownout`: the score falls, deferrable traffic leaves first and
    revenue-critical last, the circuit opens, nothing fails, and probes bring traffic back."""
    result = rungway("demo", "--brownout", "--no-wait", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [m.groupdict() for m in BOARD_LINE.finditer(result.stdout)]
    brownout = [line for line in lines if line["phase"] == "brownout"]
    assert brownout and all(line["failed"] == "0" for line in lines), result.stdout
    assert any(0 < float(line["score"]) < 1 for line in brownout), result.stdout

    def first_gone(impact: str) -> int:
        """The line from which on the class stays off the primary for the rest of the brownout."""
        gone = (i for i in range(len(brownout)) if all(line[impact] == "0" for line in brownout[i:]))
        return next(gone, len(brownout))  # never: after every line

    assert first_gone("deferrable") <= first_gone("customer") <= first_gone("revenue"), result.stdout
    assert first_gone("deferrable") < first_gone("revenue") < len(brownout), result.stdout
    assert any(line["state"] == "open" for line in brownout), result.stdout
    last = lines[-1]
    assert last["phase"] == "recovered" and last["state"] == "closed", result.stdout
    assert re.search(r"\d+ requests, 0 failed; the primary is back", result.stdout), result.stdout


def test_keys_new_prints_the_key_once_and_list_and_revoke_name_it_by_id(tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    issued = rungway(
        "keys", "new", "--store", str(store), "--tenant", "checkout", "--expires-in", "90d", "--label", "ci"
    )
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip()
    assert key.startswith("rwk_") and "shown only now" in issued.stderr
    key_id, secret = key.removeprefix("rwk_")[:12], key.removeprefix("rwk_")[13:]
    assert key not in store.read_text() and secret not in store.read_text()
    listed = rungway("keys", "list", "--store", str(store))
    assert key_id in listed.stdout and "checkout" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout
    assert rungway("keys", "revoke", "--store", str(store), key_id).returncode == 0
    assert key_id not in rungway("keys", "list", "--store", str(store)).stdout
    missing = rungway("keys", "revoke", "--store", str(store), key_id)
    assert missing.returncode == 1 and "no key with id" in missing.stderr
    bad = rungway("keys", "new", "--store", str(store), "--tenant", "no spaces")
    assert bad.returncode == 1 and "tenant names" in bad.stderr
