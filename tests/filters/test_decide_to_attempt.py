"""decide's real output, through the real rendered config's endpoint metadata, into attempt: the
three contracts (decision, rung address, trip record) agree end to end without Envoy."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2, text_format

from extproc.core import Decision, Dialect, RungAddress, TripRecord
from extproc.core.names import META_DECISION, META_TRIP, RUNG_HEADER, rung_cluster
from extproc.filters.attempt import AttemptProcessor, Phase
from extproc.filters.decide import DecideProcessor
from extproc.policy import KEEP_PREVIOUS, History, parse_policy
from extproc.xds.bootstrap import EnvoySettings, render
from tests.builders import (
    CLIENT_KEY,
    PRIMARY_KEY,
    SECONDARY_KEY,
    decide_fields,
    dynamic_metadata,
    make_sidecar,
    policy_data,
    request_headers,
    set_headers,
)

SETTINGS = EnvoySettings(listen_port=10000, admin_port=9901, extproc_sockets=("/run/w0.sock",), channel_token="t" * 32)


def endpoint_metadata_text(ladder: str, rung: int, slot: int = 0) -> str:
    """What Envoy sends as xds.upstream_host_metadata for the rendered rung cluster's endpoint."""
    config = render(make_sidecar().policy, SETTINGS)
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == rung_cluster(ladder, rung)]
    endpoint = cluster["load_assignment"]["endpoints"][slot]["lb_endpoints"][0]
    metadata = base_pb2.Metadata()
    for namespace, values in endpoint["metadata"]["filter_metadata"].items():
        s = struct_pb2.Struct()
        s.update(values)
        metadata.filter_metadata[namespace].CopyFrom(s)
    return text_format.MessageToString(metadata)


def decided(path: str, model: str, sidecar: Any = None, **fields: Any) -> tuple[Any, dict[str, Any]]:
    sidecar = sidecar or make_sidecar()
    processor = DecideProcessor(sidecar)
    headers = {
        ":method": "POST",
        ":path": path,
        "content-length": "300",
        "anthropic-version": "2023-06-01",
        "x-api-key": CLIENT_KEY,
    }
    (response,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model=model, **fields)))
    return sidecar, json_format.MessageToDict(response.dynamic_metadata)[META_DECISION]


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/v1/chat/completions", "gpt-4o", False),
        ("/v1/chat/completions", "gpt-4o", True),
        ("/v1/messages", "claude-x", False),
        ("/v1/messages", "claude-x", True),
    ],
)
def test_every_rung_decide_chose_is_served_with_its_own_key(path: str, model: str, stream: bool) -> None:
    sidecar, decision = decided(path, model, stream=stream)
    ladder = str(decision["ladder"])
    rungs = sidecar.policy.ladders[ladder]
    # Envoy walks every slot: each try here ends unanswered (a reset), which the next try infers;
    # a reset allows the same rung once, so no slot is skipped.
    slots = [(r, s) for r in Decision.decode(decision).rungs for s in range(rungs[r].attempts)]
    previous: dict[str, Any] | None = None
    tries = sidecar.policy.max_attempts
    for attempt, (rung, slot) in enumerate(slots[: tries + 1], start=1):
        attempt_processor = AttemptProcessor(sidecar)
        metadata: dict[str, Any] = {META_DECISION: decision}
        if previous is not None:
            metadata[META_TRIP] = previous
        attributes = {
            "xds.upstream_host_metadata": endpoint_metadata_text(ladder, rung, slot),
            "upstream.request_attempt_count": attempt,
        }
        (answer,) = attempt_processor.dispatch(
            request_headers(
                {":path": path, "authorization": "Bearer app-key"}, metadata=metadata, attributes=attributes
            )
        )
        if attempt > tries:
            # max_attempts tries reached a provider: the next one answers the client instead.
            assert attempt_processor.phase is Phase.REFUSED
            assert PRIMARY_KEY not in str(answer) and SECONDARY_KEY not in str(answer)
            break
        assert attempt_processor.phase is Phase.STARTED, answer
        headers = set_headers(answer)
        provider = sidecar.policy.ladders[ladder][rung].provider
        expected = {"primary": PRIMARY_KEY, "secondary": SECONDARY_KEY}.get(provider)
        sent = headers.get("authorization", "") + headers.get("x-api-key", "")
        assert (expected or "") in sent and "app-key" not in sent
        for other in {PRIMARY_KEY, SECONDARY_KEY} - {expected}:
            assert other not in str(answer)  # one rung's key never reaches another
        record = TripRecord.decode(dynamic_metadata(answer, META_TRIP))
        assert record is not None and (record.attempt, record.rung) == (attempt, rung)
        previous = dynamic_metadata(answer, META_TRIP)
    assert Decision.decode(decision).dialect is (Dialect.ANTHROPIC if path == "/v1/messages" else Dialect.OPENAI)


def test_the_rendered_endpoint_metadata_is_a_rung_address() -> None:
    text = endpoint_metadata_text("main", 1, 0)
    metadata = base_pb2.Metadata()
    text_format.Parse(text, metadata)
    values = json_format.MessageToDict(metadata.filter_metadata[META_DECISION])
    assert RungAddress.decode(values) == RungAddress("main", 1, 0)


def swapped(version: str) -> Any:
    """The unit policy with ladder main's rung 1 on the small model instead of the secondary."""
    data = policy_data(version=version)
    data["ladders"]["main"][1] = {"provider": "small", "model": "small-model", "strip_tools": True}
    return parse_policy(data)


def try_on(sidecar: Any, decision: dict[str, Any], rung: int) -> tuple[Any, dict[str, str]]:
    processor = AttemptProcessor(sidecar)
    attributes = {
        "xds.upstream_host_metadata": endpoint_metadata_text("main", rung),
        "upstream.request_attempt_count": 2,
    }
    (answer,) = processor.dispatch(
        request_headers(
            {":path": "/v1/chat/completions", "authorization": "Bearer app-key"},
            metadata={META_DECISION: decision},
            attributes=attributes,
        )
    )
    return processor, set_headers(answer) if processor.phase is Phase.STARTED else {}


@pytest.fixture
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the unit policy's credentials say a reload reads the keys."""
    monkeypatch.setenv("RW_UNIT_PRIMARY", PRIMARY_KEY)
    monkeypatch.setenv("RW_UNIT_SECONDARY", SECONDARY_KEY)


@pytest.mark.usefixtures("provider_keys")
def test_a_try_decided_before_a_reload_runs_under_the_revision_it_was_decided_under() -> None:
    sidecar, before = decided("/v1/chat/completions", "gpt-4o")
    old = sidecar.policy
    sidecar.reload(History(old).advance(swapped("unit-2026.2")))
    # Rung 1 is the secondary in the revision the request was decided under, whatever the
    # worker serves now: its relay route, its key, its path.
    processor, headers = try_on(sidecar, before, 1)
    assert processor.phase is Phase.STARTED
    assert headers[RUNG_HEADER] == old.relay_routes[("main", 1)]
    assert headers["x-api-key"] == SECONDARY_KEY and headers[":path"] == "/v1/messages"
    # A request decided now is decided under the new revision, and its rung 1 is the small model.
    _, after = decided("/v1/chat/completions", "gpt-4o", sidecar)
    assert after["policy"] == sidecar.policy.stamp != before["policy"]
    _, headers = try_on(sidecar, after, 1)
    assert headers[RUNG_HEADER] == sidecar.policy.relay_routes[("main", 1)] != old.relay_routes[("main", 1)]


@pytest.mark.usefixtures("provider_keys")
def test_a_try_decided_under_a_revision_the_worker_no_longer_keeps_is_refused() -> None:
    sidecar, before = decided("/v1/chat/completions", "gpt-4o")
    history = History(sidecar.policy)
    for n in range(KEEP_PREVIOUS + 1):
        history = history.advance(swapped(f"unit-2027.{n}"))
    sidecar.reload(history)
    processor, _ = try_on(sidecar, before, 1)
    assert processor.phase is Phase.REFUSED
