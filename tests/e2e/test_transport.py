"""Transport: a 3 MB answer through the buffering attempt filter, HTTPS providers, health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import KEY_ENV, Fleet
from tests.stack import MockThread, Stack, running
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
    assert 'rungway_served_total{degraded="true",ladder="main",task="default",tenant="app",tier="1"}' in text


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
