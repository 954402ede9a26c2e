"""The supervisor's pure pieces: how a probe's answer is labelled in rungway_probes_total, the
admin token check, and which addresses the admin endpoints may bind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from extproc.cli import build_parser
from extproc.runtime.metrics import ProbeMetrics
from extproc.runtime.supervisor import bearer_matches, probe_outcome


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (200, "none", "ok"),
        (200, None, "ok"),
        (503, "server_error", "server_error"),
        (429, "rate_limited", "rate_limited"),
        (502, "schema_error", "schema_error"),
        (503, None, "error"),  # Envoy's own answer: no Rungway reason
        (400, "<script>", "error"),  # never an unbounded label
    ],
)
def test_a_probes_outcome_is_ok_a_failure_class_or_error(status: int, reason: str | None, outcome: str) -> None:
    assert probe_outcome(status, reason) == outcome


def test_probes_are_counted_by_endpoint_and_outcome_in_their_own_series() -> None:
    metrics = ProbeMetrics()
    metrics.probes.labels("primary/gpt-4o", "server_error").inc()
    metrics.probes.labels("primary/gpt-4o", "server_error").inc()
    metrics.probes.labels("primary/gpt-4o", "ok").inc()
    registry = CollectorRegistry()
    registry.register(metrics.probes)
    text = generate_latest(registry).decode()
    assert 'rungway_probes_total{endpoint="primary/gpt-4o",outcome="server_error"} 2.0' in text
    assert 'rungway_probes_total{endpoint="primary/gpt-4o",outcome="ok"} 1.0' in text
    assert "tenant" not in text


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),
        ("Bearer  s3cret-token ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer s3cret-toke", False),
        ("Bearer s3cret-token2", False),
        ("Basic s3cret-token", False),
        ("s3cret-token", False),
    ],
)
def test_the_admin_token_must_come_as_the_exact_bearer_token(header: str | None, ok: bool) -> None:
    headers = {} if header is None else {"authorization": header}
    assert bearer_matches(headers, "s3cret-token") is ok


def test_a_standalone_envoy_config_binds_envoys_admin_only_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    command = ["envoy-config", "--policy", "p.yaml"]
    assert parser.parse_args([*command, "--envoy-admin", "127.0.0.1:9902"]).envoy_admin == ("127.0.0.1", 9902)
    assert parser.parse_args([*command, "--envoy-admin", "[::1]:9902"]).envoy_admin == ("::1", 9902)
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--envoy-admin", "0.0.0.0:9902"])
    assert "Envoy's admin has no authentication" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["127.0.0.1:9902", "127.0.0.1:0", "0.0.0.0:9902"])
def test_up_refuses_an_envoy_admin_address_and_says_why(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Under `up`, Envoy's admin is only a 0600 Unix socket: an old script's TCP address is an
    error that explains, not a flag silently ignored."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--policy", "p.yaml", "--envoy-admin", value])
    err = capsys.readouterr().err
    assert "--envoy-admin" in err and "no TCP port" in err and "envoy_admin_socket" in err


def test_the_admin_endpoint_defaults_to_loopback() -> None:
    args = build_parser().parse_args(["up", "--policy", "p.yaml"])
    assert args.admin[0] == "127.0.0.1"


def test_the_image_serves_apps_on_every_interface_and_admin_on_loopback() -> None:
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    (entrypoint,) = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    args = json.loads(entrypoint.removeprefix("ENTRYPOINT"))
    assert args[args.index("--listen") + 1] == "0.0.0.0:10000"
    assert args[args.index("--admin") + 1] == "127.0.0.1:9901"
    assert "--envoy-admin" not in args
