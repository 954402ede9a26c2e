"""DecideProcessor: one downstream ext_proc stream, driven with the messages Envoy sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.core import Decision, Failure
from extproc.core.names import (
    ATTEMPTS,
    CLUSTER_HEADER,
    DEGRADED,
    INVALID,
    META_DECISION,
    MISSING,
    POLICY_VERSION,
    REASON,
    SERVED_BY,
    TIER,
)
from extproc.filters.decide import DecideProcessor
from extproc.filters.wire import Mode
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    decide_fields,
    dynamic_metadata,
    immediate_headers,
    make_policy,
    make_sidecar,
    policy_data,
    request_body,
    request_headers,
    response_headers,
    routed,
    sample,
    set_headers,
)

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


def headers(path: str = OPENAI_PATH, **extra: str) -> dict[str, str]:
    return {
        ":method": "POST",
        ":path": path,
        ":authority": "rungway.local",
        "content-type": "application/json",
        "content-length": "400",
        "authorization": "Bearer sk-app",
        **extra,
    }


def decide(sidecar: Sidecar, path: str = OPENAI_PATH, extra: dict[str, str] | None = None, **fields: Any) -> Any:
    processor = DecideProcessor(sidecar)
    (response,) = processor.dispatch(request_headers(headers(path, **(extra or {})), metadata=decide_fields(**fields)))
    sidecar.apply(processor.drain_effects())
    return processor, response


def decision_of(response: Any) -> Decision:
    return Decision.decode(dynamic_metadata(response, META_DECISION))


def error_body(response: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response.immediate_response.body)
    return parsed


# ---- routing ------------------------------------------------------------------------------------------


def test_healthy_request_is_routed_to_the_whole_ladder_on_the_headers_message() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, model="gpt-4o", max_tokens=100.0)
    assert response.WhichOneof("response") == "request_headers"
    # Envoy gets every slot of the ordering (two a rung); each rung's own budget is the relay's.
    assert set_headers(response) == {CLUSTER_HEADER: "rw.main.7", "x-envoy-max-retries": "5"}
    assert not response.HasField("mode_override")
    assert decision_of(response) == routed(tenant="default", tries=6)
    assert dynamic_metadata(response, META_DECISION)["routed"] is True  # the ladder route matches on it
    assert (
        sample(sidecar, "rungway_decisions_total", tenant="default", task="default", ladder="main", outcome="routed")
        == 1
    )


def test_stream_with_usage_is_routed_to_the_sse_cluster() -> None:
    _, response = decide(make_sidecar(), model="gpt-4o", stream=True, include_usage=True)
    assert set_headers(response)[CLUSTER_HEADER] == "rw.main.7.sse"
    d = decision_of(response)
    assert (d.stream, d.include_usage) == (True, True)


def test_json_mode_skips_the_rung_without_it_and_records_why() -> None:
    _, response = decide(make_sidecar(), model="gpt-4o", response_format="json_schema")
    assert set_headers(response)[CLUSTER_HEADER] == "rw.main.3"
    assert decision_of(response).rungs == (0, 1)


def test_large_request_skips_small_windows_and_says_context_overflow() -> None:
    _, response = decide(make_sidecar(), extra={"content-length": str(4 * 10_000)}, model="gpt-4o")
    d = decision_of(response)
    assert (d.rungs, d.skip, d.tries) == ((1,), Failure.CONTEXT_OVERFLOW, 2)
    assert set_headers(response)["x-envoy-max-retries"] == "1"


def test_max_completion_tokens_counts_like_max_tokens() -> None:
    _, response = decide(make_sidecar(), model="gpt-4o", max_completion_tokens=3990.0)
    assert decision_of(response).rungs == (0, 1)


def test_tenant_task_and_impact_come_from_the_policy_headers() -> None:
    extra = {"x-rungway-tenant": "acme", "x-rungway-task": "summarizer", "x-rungway-impact": "revenue_critical"}
    sidecar = make_sidecar()
    _, response = decide(sidecar, extra=extra, model="gpt-4o")
    d = decision_of(response)
    assert (d.tenant, d.task, d.impact.value, d.ladder) == (
        "acme",
        "summarizer",
        "revenue_critical",
        "summary",
    )
    assert (
        sample(sidecar, "rungway_decisions_total", tenant="acme", task="summarizer", ladder="summary", outcome="routed")
        == 1
    )


def test_unknown_task_and_impact_fall_back_to_the_defaults() -> None:
    _, response = decide(make_sidecar(), extra={"x-rungway-task": "nope", "x-rungway-impact": "urgent"}, model="gpt-4o")
    d = decision_of(response)
    assert (d.task, d.impact.value, d.ladder) == ("default", "customer_facing", "main")


def test_anthropic_client_is_recognised_by_path_and_keeps_its_api_version() -> None:
    extra = {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024"}
    _, response = decide(make_sidecar(), ANTHROPIC_PATH + "?beta=true", extra=extra, model="claude-x")
    d = decision_of(response)
    assert (d.dialect.value, d.ladder, d.anthropic_version, d.anthropic_beta) == (
        "anthropic",
        "claude",
        "2023-06-01",
        "tools-2024",
    )


def test_openai_client_does_not_carry_anthropic_headers() -> None:
    _, response = decide(make_sidecar(), extra={"anthropic-version": "2023-06-01"}, model="gpt-4o")
    assert decision_of(response).anthropic_version is None


def test_policy_headers_can_be_renamed() -> None:
    sidecar = make_sidecar(make_policy(tenant_header="x-team"))
    _, response = decide(sidecar, extra={"x-team": "blue", "x-rungway-tenant": "ignored"}, model="gpt-4o")
    assert decision_of(response).tenant == "blue"


# ---- refusals -------------------------------------------------------------------------------------------


def test_unknown_model_is_refused_with_400_in_the_openai_dialect() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, model="llama-3")
    assert response.WhichOneof("response") == "immediate_response"
    assert response.immediate_response.status.code == 400
    assert immediate_headers(response) == {
        "content-type": "application/json",
        SERVED_BY: "rungway",
        TIER: "none",
        DEGRADED: "false",
        REASON: "client_error",
        POLICY_VERSION: "unit-2026.1",
        ATTEMPTS: "0",
    }
    error = error_body(response)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "client_error")
    assert "'llama-3'" in error["message"]
    assert dynamic_metadata(response, META_DECISION) == {
        "v": 1.0,
        "rendered": True,
        "tenant": "default",
        "task": "default",
    }
    assert (
        sample(sidecar, "rungway_decisions_total", tenant="default", task="default", ladder="", outcome="refused") == 1
    )


def test_refusal_is_rendered_in_the_anthropic_dialect_for_an_anthropic_client() -> None:
    _, response = decide(make_sidecar(), ANTHROPIC_PATH, model="llama-3")
    body = error_body(response)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["rungway_reason"] == "client_error"


def test_request_larger_than_every_window_is_refused_as_context_overflow() -> None:
    _, response = decide(make_sidecar(), extra={"content-length": str(4 * 300_000)}, model="gpt-4o")
    assert response.immediate_response.status.code == 400
    assert immediate_headers(response)[REASON] == "context_overflow"
    assert error_body(response)["error"]["code"] == "context_overflow"


NO_JSON_MODE: dict[str, Any] = {"ladders": {"l": [{"provider": "small"}]}, "models": [{"match": "*", "ladder": "l"}]}
BARE_PROVIDERS = policy_data()["providers"]
BARE_PROVIDERS["small"]["capabilities"] = []
NO_STREAMING = {**NO_JSON_MODE, "providers": BARE_PROVIDERS}


@pytest.mark.parametrize(
    ("overrides", "extra", "fields", "reason"),
    [
        pytest.param({}, {}, {"model": "llama-3"}, "client_error", id="unknown-model"),
        pytest.param({}, {"content-length": "2000000"}, {"model": "gpt-4o"}, "context_overflow", id="too-large"),
        pytest.param(
            NO_JSON_MODE, {}, {"model": "m", "response_format": "json_object"}, "schema_error", id="no-json-mode"
        ),
        pytest.param(NO_STREAMING, {}, {"model": "m", "stream": True}, "tool_mismatch", id="no-streaming"),
    ],
)
def test_refusal_status_and_error_type_agree(
    overrides: dict[str, Any], extra: dict[str, str], fields: dict[str, Any], reason: str
) -> None:
    # errors.py: every failure answered with 5xx gets a server-side type and every 4xx a client-side
    # one, or SDKs that branch on `type` misread who is at fault.
    _, response = decide(make_sidecar(make_policy(**overrides)), extra=extra, **fields)
    assert immediate_headers(response)[REASON] == reason
    status = response.immediate_response.status.code
    error_type = error_body(response)["error"]["type"]
    if status < 500:
        assert error_type == "invalid_request_error", (status, error_type)
    else:
        assert error_type != "invalid_request_error", (status, error_type)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": INVALID}, "the request body is not a valid JSON object"),
        ({"model": MISSING}, "the request needs a JSON body with a 'model' field"),
        ({"model": ""}, "the request needs a JSON body with a 'model' field"),
        ({}, "the request needs a JSON body with a 'model' field"),
        ({"model": 4.0}, "the request needs a JSON body with a 'model' field"),
    ],
)
def test_bad_body_is_refused_before_any_choice(fields: dict[str, Any], message: str) -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, **fields)
    assert response.immediate_response.status.code == 400
    assert error_body(response)["error"]["message"] == message
    assert (
        sample(sidecar, "rungway_decisions_total", tenant="default", task="default", ladder="", outcome="invalid") == 1
    )


# ---- asking for the body --------------------------------------------------------------------------------


def test_body_is_asked_for_only_when_tools_decide_the_ladder() -> None:
    _, response = decide(make_sidecar(), model="tools-x")
    assert response.WhichOneof("response") == "request_headers"
    assert not response.request_headers.response.HasField("header_mutation")
    mode = response.mode_override
    assert mode.request_body_mode == Mode.BUFFERED
    assert (mode.response_header_mode, mode.response_body_mode) == (Mode.SKIP, Mode.NONE)
    assert not response.HasField("dynamic_metadata")


def test_body_without_tools_keeps_the_tool_less_rung() -> None:
    processor, _ = decide(make_sidecar(), model="tools-x")
    (response,) = processor.dispatch(request_body({"model": "tools-x", "messages": []}))
    processor._worker.apply(processor.drain_effects())
    assert response.WhichOneof("response") == "request_body"
    assert set_headers(response)[CLUSTER_HEADER] == "rw.tool_check.3"
    assert decision_of(response).rungs == (0, 1)


def test_body_with_tools_drops_the_tool_less_rung() -> None:
    processor, _ = decide(make_sidecar(), model="tools-x")
    body = {"model": "tools-x", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}
    (response,) = processor.dispatch(request_body(body))
    processor._worker.apply(processor.drain_effects())
    assert set_headers(response)[CLUSTER_HEADER] == "rw.tool_check.1"
    assert decision_of(response).tries == 2  # rung 0's two slots


def test_tools_with_no_tool_rung_are_refused_in_the_body_phase() -> None:
    policy = make_policy(ladders={"l": [{"provider": "small"}]}, models=[{"match": "*", "ladder": "l"}])
    processor, _ = decide(make_sidecar(policy), model="m")
    (response,) = processor.dispatch(request_body({"model": "m", "tools": [{"name": "f"}]}))
    processor._worker.apply(processor.drain_effects())
    assert response.WhichOneof("response") == "immediate_response"
    assert immediate_headers(response)[REASON] == "tool_mismatch"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    processor, _ = decide(make_sidecar(), model="tools-x")
    (response,) = processor.dispatch(request_body(body))
    processor._worker.apply(processor.drain_effects())
    assert response.immediate_response.status.code == 400
    assert error_body(response)["error"]["message"] == "the request body is not a valid JSON object"


def test_decide_processes_only_request_messages_and_has_no_timer() -> None:
    processor = DecideProcessor(make_sidecar())
    assert processor.deadline() is None
    assert processor.on_deadline() == []
    with pytest.raises(ValueError, match="decide does not process response_headers"):
        processor.dispatch(response_headers(200))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5.0, 0.0, 2.5, 1e300])
def test_a_max_tokens_that_is_not_a_positive_integer_is_a_client_error(value: float) -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, model="gpt-4o", max_tokens=value)
    assert response.immediate_response.status.code == 400
    assert error_body(response)["error"]["message"] == "max_tokens must be a positive integer"


def test_a_non_ascii_probe_token_is_an_invalid_probe_not_a_crash() -> None:
    _, response = decide(make_sidecar(), extra={"x-rungway-probe": "tökén main 0"}, model="gpt-4o")
    assert response.immediate_response.status.code == 400
    assert error_body(response)["error"]["message"] == "invalid probe"


# ---- synthetic probes ---------------------------------------------------------------------------------


def test_a_probe_is_routed_to_exactly_its_rung_and_counted_as_no_tenants_request() -> None:
    sidecar = make_sidecar()
    probe = {"x-rungway-probe": f"{sidecar.probe_token} main 1", "x-rungway-tenant": "acme"}
    processor = DecideProcessor(sidecar)
    (response,) = processor.dispatch(request_headers(headers(**probe), metadata=decide_fields(model="gpt-4o")))
    chosen = decision_of(response)
    assert (chosen.probe, chosen.rungs, chosen.tries) == (True, (1,), 1)
    # No Decided (tenant series), no RequestCounted (the retry budget's base): the prober counts it.
    assert processor.drain_effects() == []


def test_a_probe_without_the_token_is_a_refused_request_of_its_tenant() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, extra={"x-rungway-probe": "guess main 1", "x-rungway-tenant": "acme"}, model="gpt-4o")
    assert response.immediate_response.status.code == 400
    assert sample(sidecar, "rungway_decisions_total", tenant="acme", task="default", ladder="", outcome="refused") == 1
