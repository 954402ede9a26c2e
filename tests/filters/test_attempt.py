"""AttemptProcessor: one upstream ext_proc stream per try, driven with the messages Envoy sends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.core import Dialect, Failure, FakeClock, TripRecord
from extproc.core.names import (
    ATTEMPTS,
    CLUSTER_HEADER,
    DEGRADED,
    META_DECISION,
    META_TRIP,
    POLICY_VERSION,
    REASON,
    RETRY_HEADER,
    RUNG_HEADER,
    SERVED_BY,
    SKIP_HEADER,
    SKIPPED_HEADER,
    TIER,
    TOOL_MODE,
    TOOLS_REMOVED,
    TRIMMED,
)
from extproc.filters.attempt import _LATE_BYTES, AttemptProcessor, Phase
from extproc.filters.effects import Reshaped
from extproc.filters.wire import Mode, response_headers_response
from extproc.runtime.sidecar import Sidecar
from extproc.translate import SseParser
from extproc.translate.sse import MAX_EVENT_BYTES
from tests.builders import (
    ANTHROPIC_ERROR_EVENT,
    OPENAI_ERROR_EVENT,
    PRIMARY_KEY,
    SECONDARY_KEY,
    anthropic_events,
    body_of,
    dynamic_metadata,
    host_metadata_text,
    immediate_headers,
    make_policy,
    make_sidecar,
    openai_events,
    policy_data,
    removed_headers,
    request_body,
    request_headers,
    response_body,
    response_headers,
    response_trailers,
    routed,
    sample,
    set_headers,
    sse,
)

CLIENT_HEADERS = {
    ":method": "POST",
    ":path": "/v1/chat/completions",
    ":authority": "rungway.local",
    "authorization": "Bearer sk-app-own-key",
    "content-type": "application/json",
    "content-length": "400",
    "x-rungway-tenant": "acme",
    CLUSTER_HEADER: "rw.main.7",
}
OPENAI_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
    "max_tokens": 50,
}
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}


def decision(**changes: Any) -> dict[str, Any]:
    """The 'rungway' namespace as decide writes it for a healthy OpenAI request on ladder main."""
    return dict(routed(**changes).encode())


class Try:
    """One try on one rung: the processor plus what it answered to request headers."""

    def __init__(
        self,
        sidecar: Sidecar,
        *,
        rung: int,
        slot: int = 0,
        attempt: int = 1,
        trip: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        host_ladder: str | None = None,
        **decided: Any,
    ) -> None:
        self.sidecar = sidecar
        decided.setdefault("policy", sidecar.policy.stamp)  # the revision the sidecar serves
        self.decision = decision(**decided)
        self.processor = AttemptProcessor(sidecar)
        self.effects: list[Any] = []
        metadata: dict[str, dict[str, Any]] = {META_DECISION: self.decision}
        if trip is not None:
            metadata[META_TRIP] = trip
        attributes = {
            "xds.upstream_host_metadata": host_metadata_text(host_ladder or str(self.decision["ladder"]), rung, slot),
            "upstream.request_attempt_count": attempt,
        }
        (self.headers_answer,) = self.send(
            request_headers(headers or CLIENT_HEADERS, metadata=metadata, attributes=attributes)
        )

    def send(self, request: Any) -> list[Any]:
        """One message, as the gRPC loop handles it: the answers, the effects applied."""
        answers: list[Any] = self.processor.dispatch(request)
        self.apply()
        return answers

    def apply(self) -> None:
        effects = self.processor.drain_effects()
        self.effects += effects
        self.sidecar.apply(effects)

    def on_deadline(self) -> list[Any]:
        answers: list[Any] = self.processor.on_deadline()
        self.apply()
        return answers

    def on_close(self) -> None:
        self.processor.on_close()
        self.apply()

    def answer_json(self, status: int, body: bytes | dict[str, Any], extra: dict[str, str] | None = None) -> Any:
        """A buffered JSON answer: headers pass untouched, the body message is judged."""
        assert self.send(response_headers(status, {**JSON, **(extra or {})})) == [response_headers_response()]
        (judged,) = self.send(response_body(body))
        assert judged.WhichOneof("response") == "response_body"
        return judged


def openai_answer(content: str | None = "Paris.", finish: str = "stop", tokens: int = 2) -> dict[str, Any]:
    return {
        "id": "chatcmpl-p",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens},
    }


def anthropic_answer(text: str = "Paris.") -> dict[str, Any]:
    return {
        "id": "msg_p",
        "type": "message",
        "role": "assistant",
        "model": "claude-3",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 2},
    }


def record(
    attempt: int,
    started_ms: float,
    rung: int,
    failure: str = "",
    first_failure: str = "",
    next_rung: int | None = None,
    real_tries: int | None = None,
) -> dict[str, Any]:
    """The trip metadata a previous try left; a judged failure sends the next try to the next
    rung unless `next_rung` says otherwise."""
    return dict(
        TripRecord(
            attempt=attempt,
            rung=rung,
            started_ms=started_ms,
            real_tries=real_tries if real_tries is not None else attempt,
            failure=Failure(failure) if failure else None,
            first_failure=Failure(first_failure) if first_failure else None,
            next_rung=next_rung if next_rung is not None else (rung + 1 if failure else None),
        ).encode()
    )


def trip_of(response: Any) -> TripRecord:
    found = TripRecord.decode(dynamic_metadata(response, META_TRIP))
    assert found is not None
    return found


def flag_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-rungway-")}


def flags_of(
    served_by: str, tier: int, degraded: bool, reason: str = "none", attempts: int = 1, tool_mode: str = "full"
) -> dict[str, str]:
    return {
        **({} if tool_mode == "full" else {TOOL_MODE: tool_mode}),
        SERVED_BY: served_by,
        TIER: str(tier),
        DEGRADED: "true" if degraded else "false",
        REASON: reason,
        POLICY_VERSION: make_policy().stamp,
        ATTEMPTS: str(attempts),
    }


def sse_events(data: bytes) -> list[tuple[str | None, str]]:
    parser = SseParser()
    events = parser.feed(data)
    assert parser.pending == b""
    return [(e.event, e.data) for e in events]


PROVIDER_SCRUB = {
    "authorization",
    "x-api-key",
    "api-key",
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
    "accept-encoding",
    CLUSTER_HEADER,
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-rungway-tenant",
    "x-rungway-task",
    "x-rungway-impact",
}


# ---- request headers: credentials and scrubbing ------------------------------------------------------


def test_openai_rung_gets_its_own_bearer_key_and_every_provider_header_is_scrubbed() -> None:
    t = Try(make_sidecar(), rung=0)
    answer = t.headers_answer
    assert set_headers(answer) == {
        RUNG_HEADER: make_policy().relay_routes[("main", 0)],  # the relay route: the rung's provider and budget
        ":path": "/v1/chat/completions",
        "authorization": "Bearer " + PRIMARY_KEY,
        "openai-project": "proj_rungway",
        # The body is not rewritten: the client's own length, over any earlier try's rewrite.
        "content-length": "400",
    }
    assert set(removed_headers(answer)) >= PROVIDER_SCRUB
    assert "content-length" not in removed_headers(answer)


def test_unchanged_request_body_is_not_even_sent_to_the_sidecar() -> None:
    answer = Try(make_sidecar(), rung=0).headers_answer
    mode = answer.mode_override
    assert (mode.request_body_mode, mode.response_header_mode, mode.response_body_mode) == (
        Mode.NONE,
        Mode.SEND,
        Mode.BUFFERED,
    )


def test_anthropic_rung_gets_x_api_key_and_version_and_never_the_app_key() -> None:
    t = Try(make_sidecar(), rung=1)
    assert set_headers(t.headers_answer) == {
        RUNG_HEADER: make_policy().relay_routes[("main", 1)],
        ":path": "/v1/messages",
        "anthropic-version": "2023-06-01",
        "x-api-key": SECONDARY_KEY,
    }
    removed = removed_headers(t.headers_answer)
    assert set(removed) >= PROVIDER_SCRUB
    assert "content-length" in removed  # set again with the translated body
    assert not t.headers_answer.HasField("mode_override")


def test_anthropic_client_version_and_beta_carry_over_to_an_anthropic_rung() -> None:
    t = Try(
        make_sidecar(),
        rung=0,
        ladder="claude",
        rungs=(0, 1),
        dialect=Dialect.ANTHROPIC,
        anthropic_version="2024-01-01",
        anthropic_beta="tools-beta",
    )
    headers = set_headers(t.headers_answer)
    assert (headers["anthropic-version"], headers["anthropic-beta"]) == ("2024-01-01", "tools-beta")


def test_rung_without_a_key_gets_no_credential_and_loses_the_app_key() -> None:
    t = Try(make_sidecar(), rung=2)
    headers = set_headers(t.headers_answer)
    assert headers == {RUNG_HEADER: make_policy().relay_routes[("main", 2)], ":path": "/v1/chat/completions"}
    assert "authorization" in removed_headers(t.headers_answer)


def test_one_providers_extra_headers_are_scrubbed_on_every_other_rung() -> None:
    providers = policy_data()["providers"]
    providers["secondary"]["headers"] = {"X-Region": "eu"}
    sidecar = make_sidecar(make_policy(providers=providers))
    assert "x-region" in removed_headers(Try(sidecar, rung=0).headers_answer)
    assert set_headers(Try(sidecar, rung=1).headers_answer)["x-region"] == "eu"


def test_renamed_policy_headers_are_scrubbed_too() -> None:
    mesh = {"auth": "trusted_header", "trusted_peers": ["10.0.0.0/8"], "tenant_header": "x-team"}
    sidecar = make_sidecar(make_policy(clients=mesh))
    assert "x-team" in removed_headers(Try(sidecar, rung=0).headers_answer)


def test_each_try_records_itself_in_the_trip_metadata() -> None:
    clock = FakeClock(start=50.0)
    t = Try(make_sidecar(clock=clock), rung=0, slot=0, attempt=1)
    assert trip_of(t.headers_answer) == TripRecord(attempt=1, rung=0, started_ms=50_000.0)


def refused(t: Try) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A try the attempt filter would not serve: its status, headers and error body."""
    answer = t.headers_answer
    assert answer.WhichOneof("response") == "immediate_response"
    assert t.processor.phase is Phase.REFUSED
    return answer.immediate_response.status.code, immediate_headers(answer), json.loads(answer.immediate_response.body)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"rung": 7}, "foreign_rung"),  # no such rung
        ({"rung": 0, "ladder": "gone"}, "foreign_rung"),  # no such ladder
        ({"rung": 0, "host_ladder": "claude"}, "foreign_rung"),  # routed off the decided ladder
        ({"rung": 2, "rungs": (0, 1)}, "foreign_rung"),  # a rung decide did not choose
        ({"rung": 0, "policy": "unit-2025.9"}, "policy_mismatch"),  # decided under another policy
    ],
)
def test_a_try_it_cannot_serve_safely_is_refused_cleanly_without_a_key(changes: dict[str, Any], reason: str) -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, **changes)
    status, headers, body = refused(t)
    assert status == 503
    assert headers[REASON] == "server_error"
    assert body["error"]["type"] == "server_error"
    assert PRIMARY_KEY not in str(t.headers_answer) and SECONDARY_KEY not in str(t.headers_answer)
    assert sample(sidecar, "rungway_tries_refused_total", reason=reason) == 1
    assert not [e for e in t.effects if type(e).__name__ == "Observation"]  # no rung is blamed


def test_a_refusal_speaks_the_clients_dialect() -> None:
    t = Try(make_sidecar(), rung=0, ladder="claude", rungs=(0, 1), dialect=Dialect.ANTHROPIC, policy="old")
    _, _, body = refused(t)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: {k: v for k, v in d.items() if k != "model"},  # a missing field
        lambda d: {**d, "tries": "three"},  # a mistyped one
        lambda d: {**d, "v": 99},  # another version
        lambda d: {},  # nothing at all
    ],
)
def test_a_decision_that_does_not_decode_is_refused_not_defaulted(mangle: Any) -> None:
    sidecar = make_sidecar()
    processor = AttemptProcessor(sidecar)
    attributes = {"xds.upstream_host_metadata": host_metadata_text("main", 0), "upstream.request_attempt_count": 1}
    (answer,) = processor.dispatch(
        request_headers(CLIENT_HEADERS, metadata={META_DECISION: mangle(decision())}, attributes=attributes)
    )
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 503
    assert [type(e).__name__ for e in processor.drain_effects()] == ["TryRefused"]


# ---- request body -----------------------------------------------------------------------------------


def test_request_body_is_translated_when_the_dialects_differ() -> None:
    t = Try(make_sidecar(), rung=1)
    (answer,) = t.send(request_body(OPENAI_REQUEST))
    assert answer.WhichOneof("response") == "request_body"
    body = body_of(answer)
    assert body is not None
    sent = json.loads(body)
    assert sent["model"] == "claude-fallback"
    assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert sent["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert sent["max_tokens"] == 50
    assert set_headers(answer) == {"content-length": str(len(body))}


def test_same_dialect_rung_with_its_own_model_rewrites_only_the_model() -> None:
    t = Try(make_sidecar(), rung=2)
    (answer,) = t.send(request_body(OPENAI_REQUEST))
    body = body_of(answer)
    assert body is not None
    assert json.loads(body) == {**OPENAI_REQUEST, "model": "small-model"}
    assert set_headers(answer) == {"content-length": str(len(body))}


def test_non_ascii_body_length_counts_bytes() -> None:
    t = Try(make_sidecar(), rung=2)
    (answer,) = t.send(request_body({**OPENAI_REQUEST, "messages": [{"role": "user", "content": "Übermäßig? 東京"}]}))
    body = body_of(answer)
    assert body is not None
    assert set_headers(answer)["content-length"] == str(len(body))
    assert "東京" in body.decode()


def test_strip_tools_drops_the_tools_and_flags_the_answer_as_degraded() -> None:
    # Decide chose only the small rung (rungs 0 and 1 are skipped for another reason, none given).
    t = Try(make_sidecar(), rung=2, rungs=(2,), tries=1)
    request = {**OPENAI_REQUEST, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}
    (answer,) = t.send(request_body(request))
    body = body_of(answer)
    assert body is not None
    sent = json.loads(body)
    assert "tools" not in sent and "tool_choice" not in sent
    judged = t.answer_json(200, openai_answer())
    assert flag_headers(set_headers(judged)) == {
        **flags_of("small/small-model", 2, True, "tool_mismatch", tool_mode="no_tools"),
        TOOLS_REMOVED: "f",
    }


def test_a_lower_rung_gets_no_write_tool_and_a_history_trimmed_to_its_window() -> None:
    data = policy_data(tools={"write": ["issue_refund"]}, context={"trim": True})
    data["ladders"]["main"][1]["context_window"] = 300
    sidecar = make_sidecar(make_policy(**data))
    t = Try(sidecar, rung=1, rungs=(1, 2), skip=Failure.SERVER_ERROR)
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 200} for i in range(20)]
    request = {
        **OPENAI_REQUEST,
        "messages": [OPENAI_REQUEST["messages"][0], *history, {"role": "user", "content": "last"}],
        "tools": [
            {"type": "function", "function": {"name": "issue_refund"}},
            {"type": "function", "function": {"name": "lookup_order"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "issue_refund"}},
    }
    (answer,) = t.send(request_body(request))
    body = body_of(answer)
    assert body is not None
    sent = json.loads(body)  # Anthropic, translated after the rung's tool mode and trimming
    assert [tool["name"] for tool in sent["tools"]] == ["lookup_order"]
    assert sent["tool_choice"] == {"type": "auto"}
    assert sent["system"] == "Be brief."
    assert sent["messages"][0]["content"][0]["text"].startswith("[rungway] ")
    assert sent["messages"][-1] == {"role": "user", "content": "last"}
    (reshaped,) = [e for e in t.effects if isinstance(e, Reshaped)]
    assert reshaped.tool_mode == "read_only" and reshaped.tools_removed == 1 and reshaped.trimmed > 0
    judged = t.answer_json(200, anthropic_answer())
    flags = flag_headers(set_headers(judged))
    assert flags[TOOL_MODE] == "read_only" and flags[TOOLS_REMOVED] == "issue_refund"
    assert flags[TRIMMED] == str(reshaped.trimmed) and flags[DEGRADED] == "true"
    assert sample(sidecar, "rungway_context_trimmed_total", ladder="main", rung="1") == 1
    assert sample(sidecar, "rungway_tools_removed_total", ladder="main", rung="1", tool_mode="read_only") == 1


def test_untranslatable_request_is_a_client_error_in_the_client_dialect() -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=1)
    (answer,) = t.send(request_body({**OPENAI_REQUEST, "n": 3}))
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 400
    headers = immediate_headers(answer)
    assert headers[REASON] == "client_error"
    error = json.loads(answer.immediate_response.body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "client_error")
    assert (
        sample(
            sidecar,
            "rungway_attempts_total",
            ladder="main",
            rung="1",
            provider="secondary",
            model="claude-fallback",
            outcome="rejected",
        )
        == 1
    )


@pytest.mark.parametrize("body", [b"{", b"[]"])
def test_request_body_that_is_not_a_json_object_is_rejected(body: bytes) -> None:
    (answer,) = Try(make_sidecar(), rung=1).send(request_body(body))
    assert answer.immediate_response.status.code == 400


def test_stream_request_body_passes_untouched_when_nothing_changes() -> None:
    t = Try(make_sidecar(), rung=0, stream=True)
    assert not t.headers_answer.HasField("mode_override")  # no mode override on a streamed cluster
    (answer,) = t.send(request_body(OPENAI_REQUEST))
    assert answer.WhichOneof("response") == "request_body"
    assert not answer.request_body.HasField("response")


# ---- JSON answers -------------------------------------------------------------------------------------


def test_valid_answer_on_the_first_rung_is_served_as_is_with_flags() -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=0)
    judged = t.answer_json(200, openai_answer())
    assert set_headers(judged) == flags_of("primary/gpt-4o", 0, False)
    assert body_of(judged) is None
    assert not judged.HasField("dynamic_metadata")
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_attempts_total", **labels, outcome="served") == 1
    assert (
        sample(
            sidecar,
            "rungway_served_total",
            tenant="acme",
            task="default",
            ladder="main",
            tier="0",
            degraded="false",
            rung="0",
        )
        == 1
    )


def test_answer_from_an_anthropic_rung_is_translated_for_an_openai_client() -> None:
    trip = record(attempt=1, started_ms=1_000_000.0, rung=0, failure="server_error", first_failure="server_error")
    t = Try(make_sidecar(), rung=1, attempt=2, trip=trip)
    judged = t.answer_json(200, anthropic_answer("Paris."))
    body = body_of(judged)
    assert body is not None
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "claude-fallback"
    assert completion["choices"][0]["message"]["content"] == "Paris."
    assert completion["choices"][0]["finish_reason"] == "stop"
    headers = set_headers(judged)
    assert headers["content-length"] == str(len(body))
    assert flag_headers(headers) == flags_of("secondary/claude-fallback", 1, True, "server_error", attempts=2)


def test_invalid_200_is_flipped_to_503_with_the_failure_in_the_trip_metadata() -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=0)
    judged = t.answer_json(200, openai_answer(content=""))
    headers = set_headers(judged)
    body = body_of(judged)
    assert body is not None
    assert headers == {
        ":status": "503",
        RETRY_HEADER: "1",  # what Envoy's router retries on
        "content-type": "application/json",
        "content-length": str(len(body)),
    }
    assert json.loads(body)["error"]["code"] == "quality_regression"
    assert (trip_of(judged).failure, trip_of(judged).first_failure) == (
        Failure("quality_regression"),
        Failure("quality_regression"),
    )
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_attempts_total", **labels, outcome="hop") == 1
    assert sample(sidecar, "rungway_trips_total", **labels, reason="quality_regression") == 1


def test_too_few_tokens_for_the_task_is_flipped_like_any_failure() -> None:
    t = Try(make_sidecar(), rung=0, task="summarizer")
    judged = t.answer_json(200, openai_answer(tokens=3))
    assert set_headers(judged)[":status"] == "503"


def test_invalid_200_on_the_last_rung_is_the_clients_answer() -> None:
    trip = record(attempt=2, started_ms=1_000_000.0, rung=1, failure="server_error", first_failure="timeout")
    t = Try(make_sidecar(), rung=2, attempt=3, trip=trip)
    judged = t.answer_json(200, openai_answer(content=None))
    headers = set_headers(judged)
    assert headers[":status"] == "502"
    assert flag_headers(headers) == flags_of(
        "small/small-model", 2, True, "quality_regression", attempts=3, tool_mode="no_tools"
    )
    body = body_of(judged)
    assert body is not None and json.loads(body)["error"]["code"] == "quality_regression"
    # The first failure of the request stays the reason it left tier 0.
    assert (trip_of(judged).failure, trip_of(judged).first_failure) == (
        Failure("quality_regression"),
        Failure("timeout"),
    )


def test_headers_only_200_is_a_schema_error() -> None:
    t = Try(make_sidecar(), rung=0)
    (judged,) = t.send(response_headers(200, JSON, end_of_stream=True))
    assert judged.WhichOneof("response") == "response_headers"
    assert set_headers(judged)[":status"] == "503"
    assert trip_of(judged).failure is Failure("schema_error")


def test_short_retry_after_429_is_kept_when_the_next_slot_is_the_same_rung() -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=0, slot=0, ladder="retry_same", rungs=(0, 1), tries=3)
    error = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    judged = t.answer_json(429, error, {"retry-after": "1"})
    headers = set_headers(judged)
    assert ":status" not in headers  # Envoy sees the 429 and waits out Retry-After
    assert body_of(judged) is None
    assert flag_headers(headers) == {**flags_of("primary/gpt-4o", 0, False, "rate_limited"), RETRY_HEADER: "1"}
    assert (trip_of(judged).failure, trip_of(judged).first_failure) == (
        Failure("rate_limited"),
        Failure("rate_limited"),
    )
    labels = {"ladder": "retry_same", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_attempts_total", **labels, outcome="wait") == 1


def test_long_retry_after_429_hops_at_once() -> None:
    t = Try(make_sidecar(), rung=0, slot=0, ladder="retry_same", rungs=(0, 1), tries=3)
    judged = t.answer_json(429, {"error": {"message": "slow down", "type": "requests"}}, {"retry-after": "30"})
    assert set_headers(judged)[":status"] == "503"


def test_short_retry_after_429_hops_when_the_next_slot_is_another_rung() -> None:
    t = Try(make_sidecar(), rung=0, slot=1, attempt=2, ladder="retry_same", rungs=(0, 1), tries=3)
    judged = t.answer_json(429, {"error": {"message": "slow down", "type": "requests"}}, {"retry-after": "1"})
    assert set_headers(judged)[":status"] == "503"


def test_final_failure_is_rendered_in_the_clients_dialect() -> None:
    # An Anthropic client on its last rung, an OpenAI-compatible server failing with its own body.
    t = Try(
        make_sidecar(),
        rung=2,
        attempt=3,
        dialect=Dialect.ANTHROPIC,
        trip=record(attempt=2, started_ms=0.0, rung=1, failure="timeout", first_failure="timeout"),
    )
    provider_error = {"error": {"message": "model crashed", "type": "server_error", "code": None}}
    judged = t.answer_json(500, provider_error)
    headers = set_headers(judged)
    assert headers[":status"] == "500"
    assert headers[REASON] == "server_error"
    body = body_of(judged)
    assert body is not None
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "model crashed", "rungway_reason": "server_error"},
    }
    assert headers["content-length"] == str(len(body))


def test_same_dialect_final_failure_keeps_the_providers_own_body() -> None:
    t = Try(make_sidecar(), rung=2, attempt=3)
    judged = t.answer_json(500, {"error": {"message": "model crashed", "type": "server_error"}})
    headers = set_headers(judged)
    assert headers[":status"] == "500"
    assert headers[REASON] == "server_error"
    assert body_of(judged) is None


def test_same_dialect_final_failure_passes_the_providers_body_on_without_the_echoed_key() -> None:
    t = Try(make_sidecar(), rung=2, attempt=3)
    echoed = f"Incorrect API key provided: sk-****{PRIMARY_KEY[-4:]}. Bearer {PRIMARY_KEY} refused"
    judged = t.answer_json(
        401, {"error": {"message": echoed, "type": "invalid_request_error", "code": "invalid_api_key"}}
    )
    headers = set_headers(judged)
    assert headers[":status"] == "401"
    body = body_of(judged)
    assert body is not None and headers["content-length"] == str(len(body))
    assert json.loads(body) == {
        "error": {
            "message": "Incorrect API key provided: [redacted]. Bearer [redacted] refused",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }


def test_provider_safety_refusal_is_the_clients_answer_not_a_hop() -> None:
    t = Try(make_sidecar(), rung=0)
    judged = t.answer_json(200, openai_answer(content=None, finish="content_filter"))
    headers = set_headers(judged)
    assert ":status" not in headers
    assert headers[REASON] == "safety_block"


def test_client_error_from_a_provider_is_never_retried() -> None:
    t = Try(make_sidecar(), rung=0)
    judged = t.answer_json(400, {"error": {"message": "messages: bad role", "type": "invalid_request_error"}})
    headers = set_headers(judged)
    assert headers[":status"] == "400"
    assert headers[REASON] == "client_error"


# ---- what a try infers from the one before -----------------------------------------------------------


def test_silent_previous_try_that_used_its_budget_timed_out() -> None:
    clock = FakeClock(start=100.0)
    sidecar = make_sidecar(clock=clock)
    started_ms = clock.now() * 1000
    clock.advance(2.1)  # per_try_ms is 2000
    trip = record(attempt=1, started_ms=started_ms, rung=0, failure="", first_failure="")
    t = Try(sidecar, rung=1, attempt=2, trip=trip)
    assert trip_of(t.headers_answer).first_failure is Failure("timeout")
    judged = t.answer_json(200, anthropic_answer())
    assert set_headers(judged)[REASON] == "timeout"


def test_a_try_whose_stream_closes_unanswered_after_its_budget_is_a_timeout() -> None:
    clock = FakeClock(start=100.0)
    sidecar = make_sidecar(clock=clock)
    t = Try(sidecar, rung=0)
    clock.advance(2.1)  # per_try_ms is 2000: Envoy's per-try timer closed the stream
    t.on_close()
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="timeout") == 1
    endpoint = sidecar.board.endpoints["primary/gpt-4o"]
    assert endpoint.last_trip is not None and endpoint.last_trip[1] is Failure.TIMEOUT


def test_a_try_closed_early_without_an_answer_was_reset() -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=0)
    t.on_close()
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="connect_error") == 1


def test_previous_try_without_a_record_never_connected() -> None:
    t = Try(make_sidecar(), rung=1, attempt=2)
    assert trip_of(t.headers_answer).first_failure is Failure("connect_error")


def test_first_try_on_a_later_rung_means_envoy_ejected_the_earlier_ones() -> None:
    t = Try(make_sidecar(), rung=1, attempt=1)
    assert trip_of(t.headers_answer).first_failure is Failure("server_error")


def test_rungs_decide_skipped_give_the_reason() -> None:
    t = Try(make_sidecar(), rung=1, attempt=1, rungs=(1,), skip=Failure.CONTEXT_OVERFLOW)
    assert trip_of(t.headers_answer).first_failure is Failure("context_overflow")


# ---- streams ------------------------------------------------------------------------------------------


def stream_try(sidecar: Sidecar | None = None, **kw: Any) -> Try:
    kw.setdefault("rung", 0)
    return Try(sidecar or make_sidecar(), stream=True, cluster="rw.main.7.sse", **kw)


def test_stream_headers_are_held_until_the_first_token() -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    events = openai_events(["Par", "is."])
    assert t.send(response_headers(200, SSE)) == []
    assert t.send(response_body(sse(events[:1]), end_of_stream=False)) == []  # role only: no token yet
    released = t.send(response_body(sse(events[1:2]), end_of_stream=False))
    headers, first = released
    assert headers.WhichOneof("response") == "response_headers"
    assert set_headers(headers) == flags_of("primary/gpt-4o", 0, False)
    assert removed_headers(headers) == ["content-length", "x-rungway-relay-flags"]
    assert body_of(first) == sse(events[:2])  # the held role chunk goes out with the first token
    assert not first.response_body.response.body_mutation.streamed_response.end_of_stream
    (rest,) = t.send(response_body(sse(events[2:]), end_of_stream=True))
    assert body_of(rest) == sse(events[2:])
    assert rest.response_body.response.body_mutation.streamed_response.end_of_stream
    assert sample(sidecar, "rungway_streams_total", outcome="complete") == 1
    assert t.send(response_trailers())[-1].WhichOneof("response") == "response_trailers"


def test_stream_from_an_anthropic_rung_reaches_an_openai_client_as_chunks() -> None:
    t = stream_try(rung=1)
    assert t.send(response_headers(200, SSE)) == []
    answers = t.send(response_body(sse(anthropic_events(["Paris."])), end_of_stream=True))
    headers, body = answers
    assert set_headers(headers)[SERVED_BY] == "secondary/claude-fallback"
    data = body_of(body)
    assert data is not None
    events = sse_events(data)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Paris."


@pytest.mark.parametrize(
    ("rung", "events"),
    [(0, [*openai_events([])[:1], OPENAI_ERROR_EVENT]), (1, [*anthropic_events([])[:3], ANTHROPIC_ERROR_EVENT])],
    ids=["openai", "anthropic"],
)
def test_error_event_before_the_first_token_hops_like_a_5xx(rung: int, events: list[Any]) -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar, rung=rung)
    assert t.send(response_headers(200, SSE)) == []
    headers, body = t.send(response_body(sse(events), end_of_stream=False))
    assert set_headers(headers)[":status"] == "503"
    assert trip_of(headers).failure is Failure("server_error")
    data = body_of(body)
    assert data is not None and json.loads(data)["error"]["code"] == "server_error"
    # The provider's side is still open: the response may not end before it does (Envoy 1.40).
    assert not body.response_body.response.body_mutation.streamed_response.end_of_stream
    (end,) = t.send(response_body(sse(openai_events(["late"])), end_of_stream=True))
    assert end.response_body.response.body_mutation.streamed_response == ep.StreamedBodyResponse(end_of_stream=True)


def test_error_event_before_the_first_token_on_the_last_rung_is_final() -> None:
    t = stream_try(
        rung=2, attempt=3, trip=record(attempt=2, started_ms=0.0, rung=1, failure="timeout", first_failure="timeout")
    )
    t.send(response_headers(200, SSE))
    headers, _ = t.send(response_body(sse([*openai_events([])[:1], OPENAI_ERROR_EVENT])))
    got = set_headers(headers)
    assert got[":status"] == "503"
    assert got[REASON] == "server_error"
    assert got[ATTEMPTS] == "3"


def test_stream_that_ends_before_any_token_hops() -> None:
    t = stream_try()
    t.send(response_headers(200, SSE))
    headers, _ = t.send(response_body(sse(openai_events([])), end_of_stream=True))
    assert set_headers(headers)[":status"] == "503"
    assert trip_of(headers).failure is Failure("quality_regression")


def test_stream_cut_before_any_token_hops_as_a_server_error() -> None:
    t = stream_try()
    t.send(response_headers(200, SSE))
    assert t.send(response_body(sse(openai_events([])[:1]), end_of_stream=False)) == []
    answers = t.send(response_trailers())
    headers = answers[0]
    assert set_headers(headers)[":status"] == "503"
    assert trip_of(headers).failure is Failure("server_error")
    assert answers[-1].WhichOneof("response") == "response_trailers"


def test_json_error_answer_to_a_stream_request_is_judged_like_json() -> None:
    t = stream_try()
    assert t.send(response_headers(503, JSON)) == []
    error = json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()
    headers, body = t.send(response_body(error, end_of_stream=True))
    assert set_headers(headers)[":status"] == "503"
    data = body_of(body)
    assert data is not None and json.loads(data)["error"]["code"] == "server_error"


def test_json_200_to_a_stream_request_is_a_schema_error() -> None:
    t = stream_try()
    t.send(response_headers(200, JSON))
    headers, _ = t.send(response_body(json.dumps(openai_answer()).encode(), end_of_stream=True))
    assert trip_of(headers).failure is Failure("schema_error")


def test_watchdog_ends_a_stalled_stream_with_an_error_event() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar)
    assert t.processor.deadline() is None  # before the provider answers the relay's per-try timer rules
    t.send(response_headers(200, SSE))
    assert t.processor.deadline() == clock.now() + 2.0  # then the rung's budget to the first token
    clock.advance(1.0)
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    last_chunk = clock.now()
    assert t.processor.deadline() == last_chunk + 15.0
    clock.advance(15.0)
    (tail,) = t.on_deadline()
    # The error event goes out now; the end of the response waits for the provider's (Envoy 1.40
    # crashes on an upstream filter ending the response while the provider is still open).
    assert not tail.response_body.response.body_mutation.streamed_response.end_of_stream
    data = body_of(tail)
    assert data is not None
    ((_, payload),) = sse_events(data)
    error = json.loads(payload)["error"]
    assert error["code"] == "stream_interrupted"
    assert "15s" in error["message"]
    assert t.processor.deadline() == clock.now() + 5.0  # stream_abandon_s
    assert t.send(response_body(sse(openai_events(["late"])), end_of_stream=False)) == []
    (end,) = t.send(response_body(b"", end_of_stream=True))
    assert end.response_body.response.body_mutation.streamed_response == ep.StreamedBodyResponse(end_of_stream=True)
    assert t.processor.deadline() is None
    assert t.on_deadline() == []
    assert sample(sidecar, "rungway_streams_total", outcome="interrupted") == 1
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="stream_interrupted") == 1


def test_each_chunk_resets_the_stall_timer() -> None:
    clock = FakeClock()
    t = stream_try(make_sidecar(clock=clock))
    t.send(response_headers(200, SSE))
    events = openai_events(["a", "b"], finish=None, usage=False, done=False)
    t.send(response_body(sse(events[:2]), end_of_stream=False))
    clock.advance(10.0)
    t.send(response_body(sse(events[2:]), end_of_stream=False))
    assert t.processor.deadline() == clock.now() + 15.0


def test_watchdog_finalises_a_finished_stream_whose_done_never_came() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar, include_usage=True)
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Paris."], usage=False, done=False)), end_of_stream=False))
    assert t.processor.deadline() == clock.now() + 1.0  # the finish grace, not the stall timeout
    clock.advance(1.0)
    (tail,) = t.on_deadline()
    data = body_of(tail)
    assert data is not None
    usage, done = sse_events(data)
    assert json.loads(usage[1])["usage"]["prompt_tokens"] == 100  # 400 bytes / 4
    assert done == (None, "[DONE]")
    assert sample(sidecar, "rungway_streams_total", outcome="finalised") == 1


def test_provider_close_after_a_cut_appends_an_error_event() -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    (tail,) = t.send(response_body(b"", end_of_stream=True))
    data = body_of(tail)
    assert data is not None
    ((_, payload),) = sse_events(data)
    assert json.loads(payload)["error"]["code"] == "stream_interrupted"
    assert sample(sidecar, "rungway_streams_total", outcome="cut") == 1


def test_a_cut_stream_counts_as_a_failed_try() -> None:
    # The health board sees every outcome: a stream cut after its first token is a failed try,
    # like one the watchdog interrupts.
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    t.send(response_body(b"", end_of_stream=True))
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="stream_interrupted") == 1


def test_attempt_refuses_request_trailers() -> None:
    t = Try(make_sidecar(), rung=0)
    with pytest.raises(ValueError, match="attempt does not process request_trailers"):
        t.send(ep.ProcessingRequest(request_trailers=ep.HttpTrailers()))


# ---- the failure rules, enforced: skipped slots, each rung's own budget ---------------------------


def test_a_slot_the_rules_forbid_is_skipped_without_a_key_or_a_provider() -> None:
    sidecar = make_sidecar()
    # Rung 0 timed out (judged): the next real try must be on rung 1, so rung 0's second slot is skipped.
    previous = record(attempt=1, started_ms=0.0, rung=0, failure="timeout", first_failure="timeout", next_rung=1)
    t = Try(sidecar, rung=0, slot=1, attempt=2, trip=previous)
    assert t.processor.phase is Phase.SKIPPED
    headers = set_headers(t.headers_answer)
    assert headers == {SKIP_HEADER: "1"}
    assert PRIMARY_KEY not in str(t.headers_answer)
    assert "authorization" in removed_headers(t.headers_answer)
    passed_on = trip_of(t.headers_answer)
    assert (passed_on.failure, passed_on.next_rung, passed_on.skipped, passed_on.attempt) == (
        Failure.TIMEOUT,
        1,
        True,
        2,
    )
    # The relay's 421 goes back to the router as it is; nothing is observed or blamed.
    assert t.send(response_headers(421, {SKIPPED_HEADER: "1"})) == [response_headers_response()]
    t.on_close()
    kinds = [type(e).__name__ for e in t.effects]
    assert "Observation" not in kinds and "Tripped" not in kinds
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_attempts_total", **labels, outcome="skipped") == 1


def test_the_rung_a_skip_passes_on_is_served_and_counts_the_real_tries() -> None:
    skipped = dict(
        TripRecord(
            2,
            0,
            0.0,
            slot=1,
            real_tries=1,
            failure=Failure.TIMEOUT,
            first_failure=Failure.TIMEOUT,
            next_rung=1,
            skipped=True,
        ).encode()
    )
    t = Try(make_sidecar(), rung=1, slot=0, attempt=3, trip=skipped)
    assert t.processor.phase is Phase.STARTED
    assert set_headers(t.headers_answer)["x-api-key"] == SECONDARY_KEY
    assert trip_of(t.headers_answer).real_tries == 2


def test_a_transient_failure_gets_the_same_rung_once() -> None:
    t = Try(make_sidecar(), rung=0, slot=0, attempt=1, tries=6)
    judged = t.answer_json(503, {"error": {"message": "overloaded", "type": "server_error"}})
    assert set_headers(judged)[":status"] == "503"
    assert trip_of(judged).next_rung == 0  # the same rung's next slot
    again = Try(make_sidecar(), rung=0, slot=1, attempt=2, tries=6, trip=dynamic_metadata(judged, META_TRIP))
    assert again.processor.phase is Phase.STARTED
    judged = again.answer_json(503, {"error": {"message": "overloaded", "type": "server_error"}})
    assert trip_of(judged).next_rung == 1  # once only: then the next rung


def test_a_silent_rung_is_never_tried_again() -> None:
    clock = FakeClock(start=100.0)
    sidecar = make_sidecar(clock=clock)
    # The previous try on rung 0 reached the provider and ended without an answer after its
    # 2 s budget (the deadline or a reset): a timeout, inferred.
    previous = record(attempt=1, started_ms=clock.now() * 1000, rung=0)
    clock.advance(2.1)
    t = Try(sidecar, rung=0, slot=1, attempt=2, trip=previous, tries=6)
    assert t.processor.phase is Phase.SKIPPED
    assert trip_of(t.headers_answer).next_rung == 1


def test_no_first_token_within_the_rungs_budget_hops_before_the_stream_starts() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar, tries=6)
    t.send(response_headers(200, SSE))
    assert t.send(response_body(b": keep-alive\n\n", end_of_stream=False)) == []
    clock.advance(2.0)  # rung main/0 has timeout_s 2
    headers, body = t.on_deadline()
    assert set_headers(headers)[":status"] == "503"
    assert trip_of(headers).failure is Failure.TIMEOUT and trip_of(headers).next_rung == 1
    assert body_of(body) is not None  # the router retries on the 503 and resets this try itself


def test_with_max_attempts_spent_a_try_answers_the_client_instead_of_a_provider() -> None:
    previous = record(attempt=3, started_ms=1_000_000.0, rung=1, real_tries=5)  # ended unanswered, early
    t = Try(make_sidecar(), rung=1, slot=1, attempt=4, tries=6, trip=previous)
    assert t.processor.phase is Phase.REFUSED
    answer = t.headers_answer
    assert answer.immediate_response.status.code == 503
    assert immediate_headers(answer)[REASON] == "connect_error"
    assert PRIMARY_KEY not in str(answer) and SECONDARY_KEY not in str(answer)


# ---- synthetic probes: observed for the board, never counted as traffic ---------------------------


@pytest.mark.parametrize(("status", "answer"), [(200, openai_answer()), (503, {"error": {"message": "down"}})])
def test_a_probe_is_observed_for_the_board_but_counted_as_no_tenants_or_rungs_traffic(
    status: int, answer: dict[str, Any]
) -> None:
    sidecar = make_sidecar()
    t = Try(sidecar, rung=0, rungs=(0,), tries=1, probe=True, tenant="default")
    t.answer_json(status, answer)
    kinds = sorted(type(e).__name__ for e in t.effects)
    assert kinds == ["Observation"]
    (obs,) = t.effects
    assert obs.probe is True and (obs.failure is None) == (status == 200)
    counted = [
        s
        for counter in vars(sidecar.metrics).values()
        if hasattr(counter, "collect")
        for metric in counter.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.value
    ]
    assert [(s.name, s.labels) for s in counted if not s.name.startswith("rungway_circuit_transitions")] == []


# ---- Envoy 1.40: the response ends only after the provider's end ----------------------------------


def test_a_provider_that_never_ends_after_the_clients_last_bytes_is_reset_through_envoy() -> None:
    clock = FakeClock()
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    clock.advance(15.0)
    (tail,) = t.on_deadline()  # the stall's error event
    assert not tail.response_body.response.body_mutation.streamed_response.end_of_stream
    clock.advance(5.0)
    (reset,) = t.on_deadline()
    assert reset.WhichOneof("response") == "immediate_response"
    assert t.processor.deadline() is None
    assert t.send(response_body(b"", end_of_stream=True)) == []
    assert sample(sidecar, "rungway_streams_total", outcome="abandoned") == 1


def test_a_provider_that_keeps_sending_after_the_clients_last_bytes_is_reset_at_once() -> None:
    # Envoy 1.40 forwards every byte of a FULL_DUPLEX_STREAMED body to the sidecar; a provider
    # that floods it for stream_abandon_s pushes the ext_proc stream over its write watermark,
    # and the watermark callback crashes Envoy on a try being torn down or not yet connected.
    clock = FakeClock()
    sidecar = make_sidecar(clock=clock)
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    (tail,) = t.send(response_body(b"data: " + b"x" * (MAX_EVENT_BYTES + 1), end_of_stream=False))
    assert json.loads(sse_events(body_of(tail) or b"")[0][1])["error"]["code"] == "schema_error"
    assert not tail.response_body.response.body_mutation.streamed_response.end_of_stream
    abandon_at = t.processor.deadline()
    assert abandon_at == clock.now() + 5.0  # stream_abandon_s, for a provider that goes quiet
    for _ in range(_LATE_BYTES // (16 * 1024)):  # up to _LATE_BYTES: dropped, still waiting
        assert t.send(response_body(b"x" * (16 * 1024), end_of_stream=False)) == []
    assert t.processor.deadline() == abandon_at
    (reset,) = t.send(response_body(b"x", end_of_stream=False))
    assert reset.WhichOneof("response") == "immediate_response"
    assert t.processor.deadline() is None
    assert t.send(response_body(b"x" * (1024 * 1024), end_of_stream=False)) == []  # in flight
    assert t.send(response_body(b"", end_of_stream=True)) == []
    assert t.on_deadline() == []
    assert sample(sidecar, "rungway_streams_total", outcome="provider_error") == 1
    assert sample(sidecar, "rungway_streams_total", outcome="abandoned") == 1


def test_a_provider_that_sends_a_little_after_the_clients_last_bytes_still_ends_cleanly() -> None:
    clock = FakeClock()
    t = stream_try(make_sidecar(clock=clock))
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False))
    clock.advance(15.0)
    (_tail,) = t.on_deadline()  # the stall's error event
    late = sse(openai_events([f" w{i}" for i in range(200)]))
    assert len(late) < _LATE_BYTES
    assert t.send(response_body(late, end_of_stream=False)) == []
    (end,) = t.send(response_body(b"", end_of_stream=True))
    assert end.response_body.response.body_mutation.streamed_response == ep.StreamedBodyResponse(end_of_stream=True)


def test_done_before_the_providers_end_of_stream_does_not_end_the_response() -> None:
    t = stream_try()
    t.send(response_headers(200, SSE))
    headers, body = t.send(response_body(sse(openai_events(["Paris."])), end_of_stream=False))
    assert set_headers(headers)[SERVED_BY] == "primary/gpt-4o"
    data = body_of(body)
    assert data is not None and data.endswith(b"data: [DONE]\n\n")
    assert not body.response_body.response.body_mutation.streamed_response.end_of_stream
    (end,) = t.send(response_body(b"", end_of_stream=True))
    assert end.response_body.response.body_mutation.streamed_response == ep.StreamedBodyResponse(end_of_stream=True)
    assert t.send(response_trailers()) == [ep.ProcessingResponse(response_trailers=ep.TrailersResponse())]


def test_a_stream_ending_with_its_last_chunk_ends_in_one_answer() -> None:
    t = stream_try()
    t.send(response_headers(200, SSE))
    _headers, body = t.send(response_body(sse(openai_events(["Paris."])), end_of_stream=True))
    assert body.response_body.response.body_mutation.streamed_response.end_of_stream
    data = body_of(body)
    assert data is not None and data.endswith(b"data: [DONE]\n\n")


def test_an_event_that_is_not_json_is_skipped_and_the_stream_goes_on() -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    events = openai_events(["Par", "is."])
    first = sse(events[:2])
    bad = b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [{"delta": {"content": \n\n'
    _headers, body = t.send(response_body(first, end_of_stream=False))
    assert body_of(body) == first
    assert t.send(response_body(bad, end_of_stream=False)) == []
    (rest,) = t.send(response_body(sse(events[2:]), end_of_stream=True))
    assert body_of(rest) == sse(events[2:])
    assert rest.response_body.response.body_mutation.streamed_response.end_of_stream
    assert sample(sidecar, "rungway_streams_total", outcome="complete") == 1


def test_an_endless_line_before_the_first_token_hops_as_a_malformed_stream() -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    assert t.send(response_body(sse(openai_events([])[:1]), end_of_stream=False)) == []
    chunk = b"data: " + b"x" * (64 * 1024)
    answers: list[Any] = []
    for _ in range(MAX_EVENT_BYTES // len(chunk) + 2):
        answers = t.send(response_body(chunk, end_of_stream=False))
        if answers:
            break
    headers, body = answers
    assert set_headers(headers)[":status"] == "503"  # the router retries on the next rung
    assert trip_of(headers).failure is Failure.SCHEMA_ERROR
    data = body_of(body)
    assert data is not None and json.loads(data)["error"]["code"] == "schema_error"
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="schema_error") == 1
    # A few later bytes are dropped (only the provider's end of stream is passed on); a flood of
    # them is reset at once (see test_a_provider_that_keeps_sending_after_the_clients_last_bytes...).
    assert t.send(response_body(b"x" * 1024, end_of_stream=False)) == []


def test_an_endless_line_after_the_first_token_ends_the_stream_with_an_error_event() -> None:
    sidecar = make_sidecar()
    t = stream_try(sidecar)
    t.send(response_headers(200, SSE))
    released = t.send(response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), False))
    assert len(released) == 2  # headers and the first token went out
    (tail,) = t.send(response_body(b"data: " + b"x" * (MAX_EVENT_BYTES + 1), end_of_stream=False))
    data = body_of(tail)
    assert data is not None
    ((_, payload),) = sse_events(data)
    assert json.loads(payload)["error"]["code"] == "schema_error"
    assert sample(sidecar, "rungway_streams_total", outcome="provider_error") == 1
    labels = {"ladder": "main", "rung": "0", "provider": "primary", "model": "gpt-4o"}
    assert sample(sidecar, "rungway_trips_total", **labels, reason="schema_error") == 1
    (end,) = t.send(response_body(b"more", end_of_stream=True))
    assert end.response_body.response.body_mutation.streamed_response == ep.StreamedBodyResponse(end_of_stream=True)
