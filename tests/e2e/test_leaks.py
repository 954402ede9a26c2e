"""What must not leak: a rung's key through a provider's error, paths and keys through the admin
endpoint, and the admin endpoint itself when it has a token."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.conftest import PRIMARY_KEY, SECONDARY_KEY, SMALL_KEY, Fleet
from tests.stack import REPO, Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
EVERY_RUNG_SAYS_BAD_KEY = {f"x-mock-mode-{name}": "bad_key" for name in ("primary", "secondary", "small")}


def leaked(text: str, secret: str) -> list[str]:
    """The secret, or any piece of its start or end of 8 characters or more, found in `text`
    (shorter pieces of a random key turn up in any page of numbers by chance)."""
    pieces = {secret[:n] for n in range(8, len(secret) + 1)} | {secret[-n:] for n in range(8, len(secret) + 1)}
    return sorted(piece for piece in pieces if piece in text)


def no_echo(text: str, *keys: str) -> None:
    """Nothing of what the mock echoed (the key's first 8 and last 4 around a run of `*`)."""
    assert "***" not in text
    for key in keys:
        assert key not in text and key[:8] not in text and f"{key[-4:]}." not in text


# ---- a provider's 401 echoes the key -----------------------------------------------------------------


def test_a_providers_401_echoing_the_key_reaches_an_openai_client_without_it(clean: Stack, fleet: Fleet) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        clean.openai().chat.completions.create(model="gpt-4o", messages=HI, extra_headers=EVERY_RUNG_SAYS_BAD_KEY)
    # The last rung (an OpenAI provider, the client's own dialect) answered last: its body is
    # passed on, redacted.
    assert caught.value.status_code == 401
    assert caught.value.response.json()["error"]["message"] == "Incorrect API key provided: [redacted]."
    # The mock did echo each key (masked) to Rungway.
    assert fleet.small.requests[-1].headers["authorization"] == f"Bearer {SMALL_KEY}"
    no_echo(caught.value.response.text, PRIMARY_KEY, SECONDARY_KEY, SMALL_KEY)


def test_a_providers_401_echoing_the_key_reaches_an_anthropic_client_without_it(clean: Stack) -> None:
    # Ladder claude: an Anthropic provider, then an OpenAI one whose error is translated.
    with pytest.raises(anthropic.APIStatusError) as caught:
        clean.anthropic().messages.create(
            model="claude-x", max_tokens=16, messages=HI, extra_headers=EVERY_RUNG_SAYS_BAD_KEY
        )
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["rungway_reason"] == "access_denied"
    assert body["error"]["message"] == "Incorrect API key provided: [redacted]."
    no_echo(caught.value.response.text, PRIMARY_KEY, SECONDARY_KEY)


def test_a_stream_request_gets_the_providers_401_without_the_key(clean: Stack) -> None:
    response = clean.post(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": HI, "stream": True},
        headers=EVERY_RUNG_SAYS_BAD_KEY,
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Incorrect API key provided: [redacted]."
    no_echo(response.text, SMALL_KEY)


# ---- the admin endpoint ----------------------------------------------------------------------------


class Secrets:
    """Fresh random keys, an admin token and the stack's files, so that any leak is unambiguous."""

    def __init__(self, root: Path) -> None:
        self.keys = {name: f"sk-{name}-{secrets.token_hex(20)}" for name in ("primary", "secondary", "small")}
        self.token = secrets.token_urlsafe(24)
        self.root = root


@pytest.fixture(scope="module")
def guarded(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Secrets, Stack]]:
    found = Secrets(tmp_path_factory.mktemp("admin-keys"))
    policy = fleet.policy(found.root, health={"enabled": True, "probe_interval_s": 0})
    (found.root / "small.key").write_text(found.keys["small"] + "\n")
    env = {
        "RW_TEST_PRIMARY_KEY": found.keys["primary"],
        "RW_TEST_SECONDARY_KEY": found.keys["secondary"],
        "RUNGWAY_ADMIN_TOKEN": found.token,
    }
    with running(policy, env=env) as stack:
        yield found, stack


def admin_get(stack: Stack, path: str, token: str | None = None, scheme: str = "Bearer") -> httpx.Response:
    headers = {"authorization": f"{scheme} {token}"} if token is not None else {}
    with httpx.Client(timeout=10) as client:
        return client.get(stack.admin_url + path, headers=headers)


@pytest.mark.parametrize("path", ["/status", "/metrics", "/audit"])
def test_admin_endpoints_refuse_a_request_without_the_right_bearer_token(
    guarded: tuple[Secrets, Stack], path: str
) -> None:
    found, stack = guarded
    for token, scheme in ((None, "Bearer"), ("wrong", "Bearer"), (found.token[:-1], "Bearer"), (found.token, "Basic")):
        refused = admin_get(stack, path, token, scheme)
        assert refused.status_code == 401, (token, scheme)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert found.token not in refused.text
    assert admin_get(stack, path, found.token).status_code == 200
    assert admin_get(stack, path, found.token, scheme="bearer").status_code == 200


def test_probe_endpoints_stay_open_for_the_kubelet(guarded: tuple[Secrets, Stack]) -> None:
    _, stack = guarded
    assert admin_get(stack, "/healthz").status_code == 200
    assert admin_get(stack, "/readyz").status_code == 200


def test_rungway_status_sends_the_token(guarded: tuple[Secrets, Stack], tmp_path: Path) -> None:
    found, stack = guarded
    where = f"127.0.0.1:{stack.state['admin_port']}"
    env = {k: v for k, v in os.environ.items() if k != "RUNGWAY_ADMIN_TOKEN"}

    def status(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "extproc.cli", "status", "--admin", where, "--json", *args]
        return subprocess.run(cmd, cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True, timeout=60)

    without = status()
    assert without.returncode == 1 and "401" in without.stderr
    from_env = status(RUNGWAY_ADMIN_TOKEN=found.token)
    assert from_env.returncode == 0 and '"policy_version": "test-2026.12.1+' in from_env.stdout
    token_file = tmp_path / "admin.token"
    token_file.write_text(found.token + "\n")
    from_file = status("--admin-token-file", str(token_file))
    assert from_file.returncode == 0
    assert found.token not in from_file.stdout + from_file.stderr + without.stderr


def test_status_and_metrics_leak_no_path_key_or_key_name(guarded: tuple[Secrets, Stack], fleet: Fleet) -> None:
    found, stack = guarded
    client = stack.openai()
    client.chat.completions.create(model="gpt-4o", messages=HI)
    fleet.primary.set_mode("status:503", times=2)
    client.chat.completions.create(model="gpt-4o", messages=HI)  # a trip and a fallback, on record
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="gpt-4o", messages=HI, extra_headers=EVERY_RUNG_SAYS_BAD_KEY)
    fleet.reset()
    pages = {path: admin_get(stack, path, found.token) for path in ("/status", "/metrics", "/readyz", "/healthz")}
    assert all(page.status_code == 200 for page in pages.values())
    assert "gpt-4o" in pages["/status"].text and "rungway_trips_total" in pages["/metrics"].text
    for path, page in pages.items():
        text = page.text
        for key in found.keys.values():
            assert leaked(text, key) == [], path
        assert found.token not in text, path
        # No filesystem path: not the stack's files, the key file, the supervisor's temp dir.
        assert str(stack.dir) not in text and str(found.root) not in text, path
        assert not re.search(r"/(tmp|var|etc|home|run|opt)/", text), path
        for name in ("RW_TEST_PRIMARY_KEY", "RW_TEST_SECONDARY_KEY", "RUNGWAY_ADMIN_TOKEN", "small.key"):
            assert name not in text, path
    # Nor in what the stack logged while serving all this.
    log = stack.output()
    for key in found.keys.values():
        assert leaked(log, key) == []
    assert found.token not in log
