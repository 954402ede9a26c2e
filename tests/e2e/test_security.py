"""Who may spend the providers' keys, through real Envoy: authenticated tenants, the app's
credentials never upstream, pass-through by the key's dialect, and a closed sidecar channel.
Each test is an attack (or a mistake) and what it gets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import grpc
import httpx2 as httpx
import openai
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

from bench.procs import envoy_admin
from extproc.core.names import FILTER_ROLE_KEY, META_DECISION
from extproc.runtime.keyfile import read_store, write_store
from tests.builders import host_metadata_text, request_headers
from tests.conftest import KEY_ENV, PRIMARY_KEY, SECONDARY_KEY, Fleet
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


def no_provider_called(fleet: Fleet) -> bool:
    return not (fleet.primary.requests or fleet.secondary.requests or fleet.small.requests)


def test_without_a_key_openai_and_anthropic_sdks_get_401_and_no_provider_is_called(clean: Stack, fleet: Fleet) -> None:
    for key in ("x", "sk-proj-an-openai-key", "rwk_000000000000_guess"):
        with clean.openai_as(key) as client, pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=HI)
        assert caught.value.status_code == 401
        assert caught.value.body["rungway_reason"] == "unauthenticated"  # type: ignore[index]
        with clean.anthropic_as(key) as client_a, pytest.raises(anthropic.AuthenticationError) as caught_a:
            client_a.messages.create(model="claude-x", max_tokens=5, messages=HI)
        assert caught_a.value.status_code == 401
    response = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, key="")
    assert response.status_code == 401 and "no API key" in response.json()["error"]["message"]
    assert no_provider_called(fleet)
    assert 'rungway_unauthenticated_total{reason="missing"}' in clean.metrics()


def served_once_taken(client: openai.OpenAI, timeout: float = 5.0) -> None:
    """A new key works once the sidecar took the changed key store (about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.chat.completions.create(model="gpt-4o", messages=HI)
            return
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "a new key was not taken without a restart"
            time.sleep(0.2)


def test_the_tenant_is_the_keys_holder_whatever_a_header_claims(clean: Stack, fleet: Fleet) -> None:
    key = clean.issue_key("blue")
    spoof = {"x-rungway-tenant": "app", "cookie": "session=s3cret", "openai-organization": "org-app"}
    with openai.OpenAI(base_url=clean.base_url + "/v1", api_key=key, max_retries=0, default_headers=spoof) as client:
        served_once_taken(client)
    assert (
        'rungway_served_total{degraded="false",ladder="main",rung="0",task="default",tenant="blue",tier="0"}'
        in clean.metrics()
    )
    sent = fleet.primary.requests[-1]
    # The provider sees its own key and nothing of the app's: no key, cookie, org or tenant claim.
    assert sent.headers["authorization"] == f"Bearer {PRIMARY_KEY}"
    assert key not in str(sent.headers) and clean.app_key not in str(sent.headers)
    for name in spoof:
        assert name not in sent.headers


def test_a_revoked_or_expired_key_stops_working_without_a_restart(clean: Stack, fleet: Fleet) -> None:
    assert clean.key_store is not None
    with clean.openai_as(clean.issue_key("short", expires=time.time() + 2.5)) as client:
        served_once_taken(client)
        time.sleep(2.6)
        with pytest.raises(openai.AuthenticationError, match="expired"):
            client.chat.completions.create(model="gpt-4o", messages=HI)
    with clean.openai_as(clean.issue_key("revoked")) as client:
        served_once_taken(client)
        store = read_store(clean.key_store)
        (entry,) = [k for k in store.keys if k.tenant == "revoked"]
        write_store(clean.key_store, store.without(entry.id))
        time.sleep(1.5)
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            client.chat.completions.create(model="gpt-4o", messages=HI)


def test_pass_through_goes_to_the_provider_of_the_keys_dialect_with_its_own_key(clean: Stack, fleet: Fleet) -> None:
    # An OpenAI SDK's model list: the OpenAI primary, with the primary's key.
    models = clean.openai().models.list()
    assert [m.id for m in models.data] == ["primary-model"]
    sent = fleet.primary.requests[-1]
    assert (sent.method, sent.path, sent.headers["authorization"]) == ("GET", "/v1/models", f"Bearer {PRIMARY_KEY}")
    # An Anthropic SDK's: the Anthropic provider, never the OpenAI primary (and its key there).
    fleet.reset()
    page = clean.anthropic().models.list()
    assert [m.id for m in page.data] == ["secondary-model"]
    assert not fleet.primary.requests
    sent = fleet.secondary.requests[-1]
    assert sent.headers["x-api-key"] == SECONDARY_KEY and clean.app_key not in str(sent.headers)
    # Without a key, a pass-through path is refused like any other.
    fleet.reset()
    with clean.openai_as("nope") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert no_provider_called(fleet)


def test_the_sidecar_listens_only_on_private_unix_sockets(clean: Stack) -> None:
    state = clean.refresh_state()
    assert "worker_ports" not in state
    for path in map(Path, state["worker_sockets"]):
        assert_private_socket(path)
    pids = state["worker_pids"]
    for pid in pids:
        assert not _tcp_listeners(pid), f"worker {pid} listens on TCP"


def test_envoys_admin_is_only_a_private_unix_socket(clean: Stack) -> None:
    """Envoy's admin has no authentication: through it a neighbour could turn on debug logging
    (which writes keys), read the channel token in /config_dump, or stop Envoy. Under `rungway
    up` it binds no TCP port, only a socket 0600 in a 0700 directory."""
    state = clean.refresh_state()
    assert "envoy_admin_port" not in state
    admin = Path(state["envoy_admin_socket"])
    assert_private_socket(admin)
    # Envoy's every TCP listener is the one apps call.
    ports = {int(address.rpartition(":")[2], 16) for address in _tcp_listeners(state["envoy_pid"])}
    assert ports == {clean.port}
    # A neighbour's "POST /logging?level=debug" there is an unauthenticated app request, not admin.
    with httpx.Client(timeout=10) as client:
        for port in ports:
            answer = client.post(f"http://127.0.0.1:{port}/logging?level=debug")
            assert answer.status_code == 401, answer.text
    listing = envoy_admin(str(admin), "/logging", method="POST").text  # no level: lists them
    levels = {line.rpartition(": ")[2] for line in listing.splitlines() if ": " in line}
    assert levels == {"warning"}, levels


def assert_private_socket(path: Path) -> None:
    """A Unix socket only its owner (the user running Rungway) may connect to: the kernel refuses
    every other user a 0600 socket in a 0700 directory they do not own."""
    for node, mode in ((path, 0o600), (path.parent, 0o700)):
        info = node.stat()
        assert stat.S_IMODE(info.st_mode) == mode, (node, oct(info.st_mode))
        assert info.st_uid == os.geteuid(), node
    assert stat.S_ISSOCK(path.stat().st_mode)


def _tcp_listeners(pid: int) -> list[str]:
    """Inodes of this process's listening TCP sockets (state 0A in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append(fields[1])
    return found


def test_a_forged_attempt_stream_on_the_socket_gets_no_key(clean: Stack, fleet: Fleet) -> None:
    """A neighbour that can reach the socket (same user) but lacks Envoy's channel token."""
    socket_path = clean.refresh_state()["worker_sockets"][0]
    decision = {"v": 1, "routed": True, "policy": "test-2026.12.1", "ladder": "main", "rungs": "0,1,2"}
    forged = request_headers(
        {":path": "/v1/chat/completions", ":method": "POST"},
        metadata={META_DECISION: decision},
        attributes={"xds.upstream_host_metadata": host_metadata_text("main", 0), "upstream.request_attempt_count": 1},
    )
    for token in (None, "0" * 64):
        metadata = [(FILTER_ROLE_KEY, "attempt")] + ([("x-rungway-channel", token)] if token else [])
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = epg.ExternalProcessorStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                answers = list(stub.Process(iter([forged]), metadata=metadata, timeout=5))
                assert not answers
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert PRIMARY_KEY not in str(caught.value)
    assert "rungway_channel_refused_total 2.0" in clean.metrics()


def test_behind_a_mesh_only_trusted_peers_may_name_the_tenant(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    trusted = {"auth": "trusted_header", "trusted_peers": ["127.0.0.1/32"], "tenant_header": "x-team"}
    with running(fleet.policy(tmp_path, clients=trusted), env=KEY_ENV) as stack:
        response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, {"x-team": "red"}, key="")
        assert response.status_code == 200
        assert 'tenant="red"' in stack.metrics()
        assert "x-team" not in fleet.primary.requests[-1].headers
        response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, key="")
        assert response.status_code == 401
    elsewhere = {**trusted, "trusted_peers": ["10.9.0.0/16"]}
    fleet.reset()
    with running(fleet.policy(tmp_path, clients=elsewhere), env=KEY_ENV) as stack:
        response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, {"x-team": "red"}, key="")
        assert response.status_code == 401 and "may not name a tenant" in response.json()["error"]["message"]
        assert no_provider_called(fleet)


def test_a_broken_key_store_stops_the_start_with_a_clear_error(fleet: Fleet, tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    store.write_text('{"version": 1, "keys": [{"id": "zz"}]}')
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(fleet.policy(tmp_path, clients={"key_store": str(store)})))
    cmd = [sys.executable, "-m", "extproc.cli", "up", "--policy", str(policy), "--listen", "127.0.0.1:0"]
    result = subprocess.run(cmd, env={**os.environ, **KEY_ENV}, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "keys.0.id" in result.stderr


# ---- found in review: each was a way around the rules above --------------------------------------


def test_x_forwarded_for_does_not_make_an_outsider_a_trusted_peer(fleet: Fleet, tmp_path: Path) -> None:
    fleet.reset()
    mesh = {"auth": "trusted_header", "trusted_peers": ["10.9.0.0/16"], "tenant_header": "x-team"}
    with running(fleet.policy(tmp_path, clients=mesh), env=KEY_ENV) as stack:
        spoof = {"x-team": "red", "x-forwarded-for": "10.9.1.1"}
        response = stack.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, spoof, key="")
        assert response.status_code == 401, response.text
        assert no_provider_called(fleet)


def test_underscore_spellings_of_credential_headers_are_refused(clean: Stack, fleet: Fleet) -> None:
    for sneaky in ({"x_api_key": "sk-client-own"}, {"openai_organization": "org-client"}):
        response = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}, sneaky)
        assert response.status_code == 400
    assert no_provider_called(fleet)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "//v1/chat//completions"),  # merged into the chat path: routed, not passed through
        ("GET", "/v1/files"),
        ("DELETE", "/v1/files/file-abc"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/models/../files"),
    ],
)
def test_only_listed_paths_pass_through(clean: Stack, fleet: Fleet, method: str, path: str) -> None:
    with httpx.Client(timeout=30) as client:
        body = {"model": "gpt-4o", "messages": HI}
        auth = {"authorization": f"Bearer {clean.app_key}"}
        response = client.request(method, clean.base_url + path, json=body, headers=auth)
    if path.startswith("//v1/chat"):
        assert response.status_code == 200 and fleet.primary.requests[-1].path == "/v1/chat/completions"
        return
    assert response.status_code in (400, 404), response.text
    assert no_provider_called(fleet)


def test_a_providers_headers_and_pass_through_errors_never_carry_its_key_to_the_client(
    clean: Stack, fleet: Fleet
) -> None:
    fleet.primary.set_mode("bad_key")
    fleet.secondary.set_mode("bad_key")
    fleet.small.set_mode("bad_key")
    chat = clean.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
    assert chat.status_code in (401, 502)
    with httpx.Client(timeout=30) as client:
        models = client.get(clean.base_url + "/v1/models", headers={"authorization": f"Bearer {clean.app_key}"})
    assert models.status_code == 401
    for response in (chat, models):
        seen = str(response.headers) + response.text
        assert PRIMARY_KEY not in seen and SECONDARY_KEY not in seen
        assert "set-cookie" not in response.headers
        assert "rung" not in response.headers.get("x-echo-auth", "")  # redacted, when passed at all
