"""Transport: a 3 MB answer through the buffering attempt filter, HTTPS providers, health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import KEY_ENV, Fleet
from tests.stack import MockThread, Stack, envoy_errors, running
from tests.tlsca import make_test_ca

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


def test_a_3mb_answer_passes_the_buffering_filter(clean: Stack, fleet: Fleet) -> None:
    # Regression: Envoy 1.40.0 segfaults here unless the ext_proc cluster's buffer limit is
    # above the body size (see README, Envoy notes).
    fleet.primary.set_mode("big:3000000")
    raw = clean.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.status_code == 200
    assert len(raw.parse().choices[0].message.content or "") > 2_900_000
    # And it crossed providers too: translated on the way back.
    fleet.primary.set_mode("status:503")
    fleet.secondary.set_mode("big:3000000")
    completion = clean.openai().chat.completions.create(model="gpt-4o", messages=HI)
    assert completion.model == "claude-fallback" and len(completion.choices[0].message.content or "") > 2_900_000


def test_workers_answer_grpc_health_checks(clean: Stack) -> None:
    path = clean.refresh_state()["worker_sockets"][0]
    with grpc.insecure_channel(f"unix:{path}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_count_hops_by_reason(clean: Stack, fleet: Fleet) -> None:
    fleet.primary.set_mode("invalid_json")
    clean.openai().chat.completions.create(model="gpt-4o", messages=HI)
    text = clean.metrics()
    assert 'rungway_trips_total{ladder="main",model="gpt-4o",provider="primary",reason="schema_error",rung="0"}' in text
    assert 'rungway_served_total{degraded="true",ladder="main",rung="1",task="default",tenant="app",tier="1"}' in text


@pytest.fixture(scope="module")
def tls_fleet(mocks: MockThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    ca = make_test_ca(tmp_path_factory.mktemp("ca"), hostnames=["localhost"])
    provider = mocks.provider("secure", "anthropic", ssl_context=ca.server_context())
    yield ca.ca_cert, provider


def test_an_https_provider_is_reached_over_tls_with_sni(tls_fleet: tuple[Path, object], tmp_path: Path) -> None:
    ca_cert, provider = tls_fleet
    port = provider.port  # type: ignore[attr-defined]
    policy = {
        "version": "tls-1",
        "providers": {
            "secure": {
                "base_url": f"https://localhost:{port}",
                "dialect": "anthropic",
                "ca_file": str(ca_cert),
                "credential": {"env": "RW_TEST_SECONDARY_KEY"},
            }
        },
        "ladders": {"main": [{"provider": "secure", "model": "claude-tls"}]},
        "models": [{"match": "*", "ladder": "main"}],
    }
    with running(policy, env=KEY_ENV) as stack:
        completion = stack.openai().chat.completions.create(model="gpt-4o", messages=HI)
    assert completion.model == "claude-tls"
    sent = provider.requests[-1]  # type: ignore[attr-defined]
    assert sent.headers["host"] == f"localhost:{port}"


TLS_KEY = "sk-tls-rung-key-0123456789abcdef"


class TlsMocks:
    """Three HTTPS mocks on `localhost` that Envoy is told to trust with one CA: one with a
    certificate from that CA, one from another CA, one from that CA for another host name."""

    def __init__(self, mocks: MockThread, root: Path) -> None:
        trusted = make_test_ca(root / "trusted", hostnames=["localhost"])
        stranger = make_test_ca(root / "stranger", hostnames=["localhost"])
        elsewhere = make_test_ca(root / "elsewhere", hostnames=["api.elsewhere.test"])
        self.right = mocks.provider("tls_right", "openai", ssl_context=trusted.server_context())
        self.wrong_ca = mocks.provider("tls_wrong_ca", "openai", ssl_context=stranger.server_context())
        self.wrong_name = mocks.provider("tls_wrong_name", "openai", ssl_context=elsewhere.server_context())
        self.fallback = mocks.provider("tls_fallback", "openai")
        self.ca_of = {"right": trusted.ca_cert, "wrong_ca": trusted.ca_cert, "wrong_name": elsewhere.ca_cert}

    def policy(self) -> dict[str, Any]:
        key = {"env": "RW_TEST_TLS_KEY"}
        providers: dict[str, Any] = {
            name: {
                "base_url": f"https://localhost:{mock.port}",
                "dialect": "openai",
                "ca_file": str(self.ca_of[name]),
                "credential": key,
            }
            for name, mock in (("right", self.right), ("wrong_ca", self.wrong_ca), ("wrong_name", self.wrong_name))
        }
        providers["fallback"] = {"base_url": self.fallback.url, "dialect": "openai", "credential": key}
        ladders = {name: [{"provider": name, "model": f"{name}-model"}] for name in providers}
        for name in ("wrong_ca", "wrong_name"):
            ladders[f"{name}_then_fallback"] = [*ladders[name], *ladders["fallback"]]
        return {
            "version": "tls-2",
            "envoy_ejection": None,
            "health": {"enabled": False, "probe_interval_s": 0},
            "providers": providers,
            "ladders": ladders,
            "models": [{"match": name, "ladder": name} for name in ladders],
        }

    def sightings_of_the_key(self, *mocks: object) -> list[str]:
        return [
            request.path
            for mock in mocks
            for request in mock.requests  # type: ignore[attr-defined]
            if TLS_KEY in request.headers.get("authorization", "")
        ]


@pytest.fixture(scope="module")
def tls_stack(mocks: MockThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsMocks, Stack]]:
    tls = TlsMocks(mocks, tmp_path_factory.mktemp("tls"))
    with running(tls.policy(), env={"RW_TEST_TLS_KEY": TLS_KEY}) as stack:
        yield tls, stack


def test_a_provider_with_a_certificate_from_the_configured_ca_for_its_host_is_served(
    tls_stack: tuple[TlsMocks, Stack],
) -> None:
    tls, stack = tls_stack
    raw = stack.openai().chat.completions.with_raw_response.create(model="right", messages=HI)
    assert raw.status_code == 200 and raw.parse().model == "right-model"
    assert tls.right.requests[-1].headers["authorization"] == f"Bearer {TLS_KEY}"


@pytest.mark.parametrize("attack", ["wrong_ca", "wrong_name"])
def test_a_provider_whose_certificate_fails_verification_never_gets_the_key_and_the_next_rung_serves(
    tls_stack: tuple[TlsMocks, Stack], attack: str
) -> None:
    tls, stack = tls_stack
    impostor = getattr(tls, attack)
    raw = stack.openai().chat.completions.with_raw_response.create(model=f"{attack}_then_fallback", messages=HI)
    assert raw.status_code == 200 and raw.parse().model == "fallback-model"
    assert raw.headers["x-rungway-reason"] == "connect_error"
    assert raw.headers["x-rungway-served-by"] == "fallback/fallback-model"
    # The handshake failed before any HTTP: the impostor saw no request at all, let alone the key.
    assert impostor.requests == []
    assert tls.sightings_of_the_key(impostor) == []


@pytest.mark.parametrize("attack", ["wrong_ca", "wrong_name"])
def test_a_provider_whose_certificate_fails_verification_alone_is_a_clean_503_in_each_dialect(
    tls_stack: tuple[TlsMocks, Stack], attack: str
) -> None:
    tls, stack = tls_stack
    impostor = getattr(tls, attack)
    with pytest.raises(openai.InternalServerError) as from_openai:
        stack.openai().chat.completions.create(model=attack, messages=HI)
    assert from_openai.value.status_code == 503
    assert from_openai.value.response.json()["error"]["rungway_reason"] == "connect_error"
    with pytest.raises(anthropic.InternalServerError) as from_anthropic:
        stack.anthropic().messages.create(model=attack, max_tokens=16, messages=HI)
    assert from_anthropic.value.status_code == 503
    body = from_anthropic.value.response.json()
    assert body["type"] == "error" and body["error"]["rungway_reason"] == "connect_error"
    assert impostor.requests == []
    assert not envoy_errors(stack.new_access_entries())
