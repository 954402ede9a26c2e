"""Load shedding at decide: a worker with max_in_flight requests in flight answers the next one
at once with 503, Retry-After and an error in the client's dialect."""

from __future__ import annotations

import json

import pytest

from extproc.core import Failure
from extproc.core.names import META_DECISION, REASON, SERVED_BY
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import Arrived, RequestCounted, Shed
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    decide_fields,
    dynamic_metadata,
    immediate_headers,
    make_policy,
    make_sidecar,
    request_headers,
    sample,
)
from tests.filters.test_decide import ANTHROPIC_PATH, OPENAI_PATH, decide, headers


def full_sidecar(limit: int = 2) -> Sidecar:
    sidecar = make_sidecar(make_policy(max_in_flight=limit, shed_retry_after_s=3))
    for _ in range(limit):
        sidecar.try_started()
    return sidecar


def test_a_worker_below_its_limit_routes_and_counts_the_request_in_flight() -> None:
    sidecar = make_sidecar(make_policy(max_in_flight=2))
    _processor, response = decide(sidecar, model="gpt-4o")
    assert response.WhichOneof("response") == "request_headers"
    assert sidecar.admission.in_flight(sidecar.clock.now()) == 1


def test_a_worker_at_its_limit_sheds_with_503_and_retry_after() -> None:
    sidecar = full_sidecar()
    _processor, response = decide(sidecar, model="gpt-4o")
    assert response.immediate_response.status.code == 503
    got = immediate_headers(response)
    assert got["retry-after"] == "3"
    assert got[REASON] == "server_error" and got[SERVED_BY] == "rungway"
    error = json.loads(response.immediate_response.body)["error"]
    assert error["type"] == "server_error" and "capacity" in error["message"]
    assert dynamic_metadata(response, META_DECISION)["rendered"] is True  # Envoy's local-reply mappers leave it alone
    assert sample(sidecar, "rungway_requests_shed_total") == 1
    assert sidecar.admission.in_flight(sidecar.clock.now()) == 2  # a shed request holds nothing


def test_a_shed_anthropic_client_gets_an_anthropic_error() -> None:
    _processor, response = decide(full_sidecar(), ANTHROPIC_PATH, model="claude-sonnet")
    body = json.loads(response.immediate_response.body)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"


@pytest.mark.parametrize("path", [OPENAI_PATH, ANTHROPIC_PATH])
def test_shedding_needs_nothing_but_the_headers(path: str) -> None:
    # Even a request decide would refuse as invalid is shed first: no work before the check.
    processor, response = decide(full_sidecar(), path, model="")
    assert response.immediate_response.status.code == 503
    assert processor.drain_effects() == []  # applied already by the helper


def test_routed_requests_fill_the_worker_before_their_tries_start() -> None:
    sidecar = make_sidecar(make_policy(max_in_flight=3))
    for _ in range(3):
        _, response = decide(sidecar, model="gpt-4o")
        assert response.WhichOneof("response") == "request_headers"
    _, response = decide(sidecar, model="gpt-4o")
    assert response.immediate_response.status.code == 503
    assert Failure.SERVER_ERROR.value == immediate_headers(response)[REASON]


def test_tries_ending_make_room_again() -> None:
    sidecar = full_sidecar(limit=1)
    assert decide(sidecar, model="gpt-4o")[1].immediate_response.status.code == 503
    sidecar.try_ended()
    assert decide(sidecar, model="gpt-4o")[1].WhichOneof("response") == "request_headers"


def test_the_effects_say_what_happened() -> None:
    sidecar = full_sidecar()
    processor = DecideProcessor(sidecar)
    processor.dispatch(request_headers(headers(), metadata=decide_fields(model="gpt-4o")))
    assert processor.drain_effects() == [Shed()]
    routed = DecideProcessor(make_sidecar())
    routed.dispatch(request_headers(headers(), metadata=decide_fields(model="gpt-4o")))
    effects = routed.drain_effects()
    assert RequestCounted() in effects and Arrived() in effects
