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
from extproc.identity import ID_BYTES, SECRET_BYTES, issue
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    CLIENT_KEY,
    CLIENT_STORE,
    OTHER_KEY,
    PRIMARY_KEY,
    SECONDARY_KEY,
    body_of,
    decide_fields,
    dynamic_metadata,
    immediate_headers,
    make_policy,
    make_sidecar,
    policy_data,
    removed_headers,
    request_body,
    request_headers,
    response_body,
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
        "authorization": f"Bearer {CLIENT_KEY}",
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
    assert decision_of(response) == routed(tries=6)
    assert dynamic_metadata(response, META_DECISION)["routed"] is True  # the ladder route matches on it
    assert (
        sample(sidecar, "rungway_decisions_total", tenant="acme", task="default", ladder="main", outcome="routed") == 1
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


def test_tenant_is_the_keys_holder_and_task_and_impact_come_from_the_policy_headers() -> None:
    # A tenant header is no claim with a key: the key's holder is the tenant.
    extra = {"x-rungway-tenant": "evil", "x-rungway-task": "summarizer", "x-rungway-impact": "revenue_critical"}
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


def test_each_key_is_its_own_tenant_whichever_header_it_comes_in() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, extra={"authorization": f"Bearer {OTHER_KEY}"}, model="gpt-4o")
    assert decision_of(response).tenant == "blue"
    no_bearer = {"authorization": "", "x-api-key": OTHER_KEY}
    processor = DecideProcessor(sidecar)
    hdrs = {k: v for k, v in {**headers(ANTHROPIC_PATH), **no_bearer}.items() if v}
    (response,) = processor.dispatch(request_headers(hdrs, metadata=decide_fields(model="claude-x")))
    assert decision_of(response).tenant == "blue"


def unauthenticated(response: Any, dialect: str = "openai") -> str:
    assert response.immediate_response.status.code == 401
    body = error_body(response)
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["rungway_reason"] == "unauthenticated"
    return str(body["error"]["message"])


def without_key(path: str = OPENAI_PATH, **extra: str) -> dict[str, str]:
    return {**{k: v for k, v in headers(path).items() if k != "authorization"}, **extra}


@pytest.mark.parametrize(
    ("extra", "reason", "message"),
    [
        ({}, "missing", "no API key"),
        ({"authorization": "Bearer sk-proj-some-openai-key"}, "unknown", "not valid"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "unknown", "not valid"),
        ({"authorization": f"Bearer {CLIENT_KEY}x"}, "unknown", "not valid"),
        ({"authorization": "Bearer " + "rwk_" + "a" * 5000}, "unknown", "not valid"),
        ({"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": OTHER_KEY}, "ambiguous", "more than one"),
    ],
)
def test_a_request_without_a_known_key_is_401_before_any_choice(
    extra: dict[str, str], reason: str, message: str
) -> None:
    sidecar = make_sidecar()
    processor = DecideProcessor(sidecar)
    (response,) = processor.dispatch(request_headers(without_key(**extra), metadata=decide_fields(model="gpt-4o")))
    sidecar.apply(processor.drain_effects())
    assert message in unauthenticated(response)
    assert not response.immediate_response.HasField("headers") or CLUSTER_HEADER not in immediate_headers(response)
    assert sample(sidecar, "rungway_unauthenticated_total", reason=reason) == 1
    labels = {"tenant": "-", "task": "default", "ladder": "", "outcome": "unauthenticated"}
    assert sample(sidecar, "rungway_decisions_total", **labels) == 1


def test_an_anthropic_client_without_a_key_gets_its_dialects_401() -> None:
    processor = DecideProcessor(make_sidecar())
    (response,) = processor.dispatch(request_headers(without_key(ANTHROPIC_PATH), metadata=decide_fields(model="c")))
    assert "no API key" in unauthenticated(response, "anthropic")


def test_an_expired_key_is_refused() -> None:
    sidecar = make_sidecar()
    plaintext, key = issue("acme", 0.0, bytes(range(7, 7 + ID_BYTES + SECRET_BYTES)), expires=10.0)
    sidecar.key_store = CLIENT_STORE.with_key(key)
    sidecar.clock.advance(11.0)  # type: ignore[attr-defined]
    _, response = decide(sidecar, extra={"authorization": f"Bearer {plaintext}"}, model="gpt-4o")
    assert "expired" in unauthenticated(response)


def test_the_apps_credentials_and_provider_headers_never_go_upstream() -> None:
    extra = {
        "x-api-key": CLIENT_KEY,
        "cookie": "session=1",
        "proxy-authorization": "Basic x",
        "x-goog-api-key": "g",
        "ocp-apim-subscription-key": "azure",
        "openai-organization": "org-app",
        "anthropic-beta": "b",
        "x-amz-security-token": "aws",
        "x-rungway-tenant": "evil",
        "x-stainless-lang": "python",
    }
    _, response = decide(make_sidecar(), extra=extra, model="gpt-4o")
    removed = set(removed_headers(response))
    assert removed == set(extra) - {"x-stainless-lang"} | {"authorization"}
    assert CLUSTER_HEADER in set_headers(response)


MESH = {"auth": "trusted_header", "trusted_peers": ["10.1.0.0/16", "::1/128"], "tenant_header": "x-team"}


@pytest.mark.parametrize(
    ("peer", "team", "expected"),
    [
        ("10.1.2.3:5555", "blue", "blue"),
        ("[::1]:5555", "blue", "blue"),
        ("10.2.0.1:5555", "blue", None),  # not a trusted proxy: nobody, whatever it says
        ("", "blue", None),
        ("10.1.2.3:5555", "", None),  # a trusted proxy that names no tenant
        ("10.1.2.3:5555", "bad tenant!", None),
    ],
)
def test_behind_a_mesh_only_trusted_peers_name_the_tenant(peer: str, team: str, expected: str | None) -> None:
    sidecar = make_sidecar(make_policy(clients=MESH))
    hdrs = without_key(**({"x-team": team} if team else {}))
    request = request_headers(hdrs, metadata=decide_fields(model="gpt-4o"), attributes={"source.address": peer})
    (response,) = DecideProcessor(sidecar).dispatch(request)
    if expected is None:
        unauthenticated(response)
    else:
        assert decision_of(response).tenant == expected
        assert "x-team" in removed_headers(response)


def test_passthrough_goes_to_the_provider_of_the_keys_dialect_with_its_key_only() -> None:
    sidecar = make_sidecar()
    get = {":method": "GET", ":path": "/v1/models?limit=5", "authorization": f"Bearer {CLIENT_KEY}", "cookie": "c"}
    (response,) = DecideProcessor(sidecar).dispatch(request_headers(get, metadata=decide_fields(model=MISSING)))
    assert set_headers(response) == {
        CLUSTER_HEADER: "rw.direct.primary",
        ":path": "/v1/models?limit=5",
        "authorization": f"Bearer {PRIMARY_KEY}",
        "openai-project": "proj_rungway",
    }
    assert set(removed_headers(response)) == {"cookie"}
    assert dynamic_metadata(response, META_DECISION) == {
        "v": 1.0,
        "passthrough": True,
        "tenant": "acme",
        "provider": "primary",
    }
    # An Anthropic SDK's key on the same path: the Anthropic provider, never the OpenAI one.
    get = {":method": "GET", ":path": "/v1/models", "x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    (response,) = DecideProcessor(sidecar).dispatch(request_headers(get, metadata=decide_fields(model=MISSING)))
    assert set_headers(response) == {
        CLUSTER_HEADER: "rw.direct.secondary",
        ":path": "/v1/models",
        "x-api-key": SECONDARY_KEY,
        "anthropic-version": "2023-06-01",
    }


def test_passthrough_keeps_the_providers_path_prefix() -> None:
    providers = policy_data()["providers"]
    providers["secondary"]["base_url"] = "https://gw.test/anthropic"
    sidecar = make_sidecar(make_policy(providers=providers))
    post = {":method": "POST", ":path": "/v1/messages/count_tokens", "x-api-key": CLIENT_KEY}
    (response,) = DecideProcessor(sidecar).dispatch(request_headers(post, metadata=decide_fields(model="claude-x")))
    assert set_headers(response)[":path"] == "/anthropic/v1/messages/count_tokens"


def test_passthrough_without_a_provider_of_the_dialect_is_refused_not_sent_elsewhere() -> None:
    providers = {"primary": policy_data()["providers"]["primary"]}
    policy = make_policy(
        providers=providers, ladders={"a": [{"provider": "primary"}]}, models=[{"match": "*", "ladder": "a"}]
    )
    get = {":method": "GET", ":path": "/v1/models", "x-api-key": CLIENT_KEY}
    (response,) = DecideProcessor(make_sidecar(policy)).dispatch(
        request_headers(get, metadata=decide_fields(model=MISSING))
    )
    assert response.immediate_response.status.code == 400
    assert "no anthropic provider" in error_body(response)["error"]["message"]


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
        POLICY_VERSION: make_policy().stamp,
        ATTEMPTS: "0",
    }
    error = error_body(response)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "client_error")
    assert "'llama-3'" in error["message"]
    assert dynamic_metadata(response, META_DECISION) == {
        "v": 1.0,
        "rendered": True,
        "tenant": "acme",
        "task": "default",
    }
    assert sample(sidecar, "rungway_decisions_total", tenant="acme", task="default", ladder="", outcome="refused") == 1


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
    assert sample(sidecar, "rungway_decisions_total", tenant="acme", task="default", ladder="", outcome="invalid") == 1


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


def test_a_non_ascii_probe_token_is_an_unknown_caller_not_a_crash() -> None:
    _, response = decide(make_sidecar(), extra={"x-rungway-probe": "tökén main 0"}, model="gpt-4o")
    unauthenticated(response)


def test_a_genuine_probe_of_a_rung_that_does_not_exist_is_an_invalid_probe() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, extra={"x-rungway-probe": f"{sidecar.probe_token} main 9"}, model="gpt-4o")
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


def test_a_probe_without_the_token_is_unauthenticated_even_with_a_key() -> None:
    sidecar = make_sidecar()
    _, response = decide(sidecar, extra={"x-rungway-probe": "guess main 1"}, model="gpt-4o")
    unauthenticated(response)
    assert sample(sidecar, "rungway_unauthenticated_total", reason="unknown") == 1


def test_a_repeated_credential_header_is_ambiguous() -> None:
    hdrs = [*headers().items(), ("authorization", f"Bearer {CLIENT_KEY}")]
    request = request_headers({}, metadata=decide_fields(model="gpt-4o"))
    for key, value in hdrs:
        request.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    (response,) = DecideProcessor(make_sidecar()).dispatch(request)
    assert "more than one" in unauthenticated(response)


def test_a_path_not_listed_for_pass_through_is_refused() -> None:
    post = {":method": "POST", ":path": "/v1/files", "authorization": f"Bearer {CLIENT_KEY}"}
    (response,) = DecideProcessor(make_sidecar()).dispatch(request_headers(post, metadata=decide_fields(model=MISSING)))
    assert response.immediate_response.status.code == 400
    assert "not served through Rungway" in error_body(response)["error"]["message"]


def test_a_passed_through_error_answer_is_redacted_and_a_success_passes() -> None:
    get = {":method": "GET", ":path": "/v1/models", "authorization": f"Bearer {CLIENT_KEY}"}
    processor = DecideProcessor(make_sidecar())
    (answer,) = processor.dispatch(request_headers(get, metadata=decide_fields(model=MISSING)))
    assert answer.mode_override.response_body_mode == Mode.BUFFERED
    echo = {"set-cookie": "s=1", "x-echo": f"Bearer {PRIMARY_KEY}", "content-length": "99"}
    (headers_answer,) = processor.dispatch(response_headers(401, echo))
    assert set(removed_headers(headers_answer)) == {"set-cookie", "content-length"}
    assert set_headers(headers_answer) == {"x-echo": "Bearer [redacted]", POLICY_VERSION: make_policy().stamp}
    body = {"error": {"message": f"Incorrect API key provided: {PRIMARY_KEY}"}}
    (body_answer,) = processor.dispatch(response_body(body))
    assert PRIMARY_KEY not in (body_of(body_answer) or b"").decode()


def test_a_pass_through_keeps_to_the_tenants_residency() -> None:
    providers = policy_data()["providers"]
    providers["primary"]["region"] = "eu"
    providers["secondary"]["region"] = "us"
    sidecar = make_sidecar(make_policy(providers=providers, tenants={"acme": {"regions": ["eu"]}}))
    post = {":method": "POST", ":path": "/v1/messages/count_tokens", "x-api-key": CLIENT_KEY}
    (response,) = DecideProcessor(sidecar).dispatch(request_headers(post, metadata=decide_fields(model="claude-x")))
    assert response.immediate_response.status.code == 503
    assert "outside tenant 'acme''s residency" in error_body(response)["error"]["message"]
    assert immediate_headers(response)["x-should-retry"] == "false"
