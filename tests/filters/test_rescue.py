"""A stream rescued after its first token, in the attempt filter: which rung, the call, the
splice fed by what the runtime brings back, and the primary's failure never masked."""

from __future__ import annotations

import json
from typing import Any

from extproc.core import Failure
from extproc.core.names import SHIELD_HEADER
from extproc.filters.effects import RescueChunk, RescueEnded, RescueFailed, RescueRequested
from tests.builders import (
    SECONDARY_KEY,
    body_of,
    make_policy,
    make_sidecar,
    openai_events,
    policy_data,
    removed_headers,
    request_body,
    response_body,
    response_headers,
    sample,
    set_headers,
    sse,
)
from tests.filters.test_attempt import SSE, Try, sse_events, stream_try

HI = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def rescuing_policy(prefill: bool = True, rescue: bool = True) -> Any:
    data = policy_data()
    data["tasks"] = {**data.get("tasks", {}), "default": {"rescue": rescue}}
    if prefill:
        data["providers"]["secondary"]["capabilities"] = ["tools", "json_mode", "streaming", "prefill"]
    return make_policy(**{k: v for k, v in data.items() if k in ("tasks", "providers")})


def begun(policy: Any) -> Try:
    """A stream on rung 0 whose client has 'Hello wor' when the provider cuts it."""
    t = stream_try(make_sidecar(policy))
    t.send(request_body(HI, end_of_stream=True))
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Hello", " wor"], finish=None, usage=False, done=False)), False))
    return t


def rescue_calls(t: Try) -> list[Any]:
    return [e.call for e in t.effects if isinstance(e, RescueRequested)]


def test_a_cut_stream_is_handed_to_the_next_rung_with_a_prefill_and_its_own_key() -> None:
    t = begun(rescuing_policy())
    (note,) = t.send(response_body(b"", end_of_stream=True))
    assert b": rungway rescued-by secondary/" in (body_of(note) or b"")
    assert not note.response_body.response.body_mutation.streamed_response.end_of_stream
    (call,) = rescue_calls(t)
    assert call.cluster == "rw.direct.secondary" and call.path.endswith("/v1/messages")
    assert call.headers["x-api-key"] == SECONDARY_KEY and "authorization" not in call.headers
    body = json.loads(call.body)
    assert body["messages"][-1] == {"role": "assistant", "content": "Hello wor"}  # continuation
    assert sample(t.sidecar, "rungway_trips_total", ladder="main", rung="0", provider="primary",
                  model="gpt-4o", reason="stream_interrupted") == 1  # fmt: skip


def test_the_rescue_rungs_bytes_become_the_rest_of_the_clients_stream() -> None:
    t = begun(rescuing_policy())
    t.send(response_body(b"", end_of_stream=True))
    anthropic_rest = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"claude","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"ld!"}}\n\n'
    )
    (more,) = t.processor.on_rescue(RescueChunk(anthropic_rest))
    texts = [json.loads(d)["choices"][0]["delta"].get("content") for _, d in sse_events(body_of(more) or b"")]
    assert texts == ["ld!"]
    stop = (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    (end,) = t.processor.on_rescue(RescueChunk(stop))
    t.apply()
    events = sse_events(body_of(end) or b"")
    assert events[-1] == (None, "[DONE]")
    assert [json.loads(d)["choices"][0]["finish_reason"] for _, d in events[:-1] if "choices" in d] == ["stop"]
    assert end.response_body.response.body_mutation.streamed_response.end_of_stream  # the provider had ended
    assert t.processor.on_rescue(RescueEnded()) == []  # nothing after the end
    labels = {"ladder": "main", "from_rung": "0", "to_rung": "1", "outcome": "rescued"}
    assert sample(t.sidecar, "rungway_stream_rescues_total", **labels) == 1


def test_a_refused_prefill_is_asked_again_as_a_regeneration_on_the_same_rung() -> None:
    t = begun(rescuing_policy())
    t.send(response_body(b"", end_of_stream=True))
    assert t.processor.on_rescue(RescueFailed(Failure.CLIENT_ERROR, "the rescue rung answered HTTP 400")) == []
    t.apply()
    first, again = rescue_calls(t)
    assert again.cluster == first.cluster
    assert json.loads(again.body)["messages"][-1]["role"] == "user"  # the original request


def test_a_failed_rescue_ends_with_one_error_that_keeps_the_primarys_failure() -> None:
    t = begun(rescuing_policy(prefill=False))
    t.send(response_body(b"", end_of_stream=True))
    (end,) = t.processor.on_rescue(RescueFailed(Failure.SERVER_ERROR, "the rescue rung answered HTTP 500"))
    ((_, payload),) = sse_events(body_of(end) or b"")
    error = json.loads(payload)["error"]
    assert error["rungway_reason"] == "stream_interrupted" and error["rungway_rescue"] == "rescue_unavailable"


def test_no_rescue_when_the_task_class_does_not_ask() -> None:
    t = begun(rescuing_policy(rescue=False))
    (tail,) = t.send(response_body(b"", end_of_stream=True))
    assert not rescue_calls(t)
    ((_, payload),) = sse_events(body_of(tail) or b"")
    assert json.loads(payload)["error"]["code"] == "stream_interrupted"


def test_a_stall_is_rescued_by_the_watchdog_and_late_primary_bytes_are_dropped() -> None:
    t = begun(rescuing_policy())
    t.sidecar.clock.advance(16.0)  # type: ignore[attr-defined]
    answers = t.on_deadline()
    assert rescue_calls(t) and b"rescued-by" in (body_of(answers[-1]) or b"")
    assert t.send(response_body(sse(openai_events([" late"], finish=None, usage=False, done=False)), False)) == []


def test_a_primary_that_floods_during_the_rescue_is_let_go_of() -> None:
    t = begun(rescuing_policy())
    t.sidecar.clock.advance(16.0)  # type: ignore[attr-defined]
    t.on_deadline()  # stalled: the rescue starts, the primary is still open
    junk = sse(openai_events([], finish=None, usage=False, done=False)) * 2000
    answers = t.send(response_body(junk, end_of_stream=False))
    assert [a.WhichOneof("response") for a in answers] == ["immediate_response"]
    labels = {"ladder": "main", "from_rung": "0", "to_rung": "1", "outcome": "primary_flooded"}
    assert sample(t.sidecar, "rungway_stream_rescues_total", **labels) == 1


def test_the_rescue_rungs_own_result_goes_to_the_health_board() -> None:
    from extproc.core import Observation

    t = begun(rescuing_policy(prefill=False))
    t.send(response_body(b"", end_of_stream=True))
    t.processor.on_rescue(RescueFailed(Failure.SERVER_ERROR, "the rescue rung answered HTTP 500"))
    t.apply()
    observed = [(e.key, e.failure, e.rung) for e in t.effects if isinstance(e, Observation)]
    # The primary's cut, then the rescue rung's own failure (its endpoint, its rung).
    assert observed == [("primary/gpt-4o", Failure.STREAM_INTERRUPTED, 0),
                        ("secondary/claude-fallback", Failure.SERVER_ERROR, 1)]  # fmt: skip


def test_the_rescue_budget_is_what_is_left_of_the_requests_route_timeout() -> None:
    policy = rescuing_policy()
    policy = policy.model_copy(update={"route_timeout_s": 10.0})
    sidecar = make_sidecar(policy)
    # Decided 9.5 s ago (earlier tries spent it): 0.5 s of the route timeout is left.
    t = stream_try(sidecar, decided_ms=(sidecar.clock.now() - 9.5) * 1000)
    t.send(request_body(HI, end_of_stream=True))
    t.send(response_headers(200, SSE))
    t.send(response_body(sse(openai_events(["Hello"], finish=None, usage=False, done=False)), False))
    t.send(response_body(b"", end_of_stream=True))
    (call,) = rescue_calls(t)
    assert 0 < call.budget_s <= 0.3  # less Envoy's margin


def test_a_flood_during_the_rescue_closes_it_for_good() -> None:
    t = begun(rescuing_policy())
    t.sidecar.clock.advance(16.0)  # type: ignore[attr-defined]
    t.on_deadline()
    junk = sse(openai_events([], finish=None, usage=False, done=False)) * 2000
    t.send(response_body(junk, end_of_stream=False))
    assert not t.processor.rescuing()
    assert t.processor.on_rescue(RescueChunk(b"data: {}\n\n")) == []  # nothing after the reset


def test_the_rescue_rungs_tokens_are_billed_to_it() -> None:
    t = begun(rescuing_policy())
    t.send(response_body(b"", end_of_stream=True))
    rest = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
        b'"role":"assistant","model":"c","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"ld!"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":7}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    t.processor.on_rescue(RescueChunk(rest))
    t.apply()
    labels = {"ladder": "main", "rung": "1", "endpoint": "secondary/claude-fallback"}
    assert sample(t.sidecar, "rungway_output_tokens_total", **labels) == 7


def test_no_rescue_from_a_rung_whose_tool_mode_would_take_a_tool_away() -> None:
    data = policy_data(tools={"write": ["issue_refund"]})
    data["tasks"] = {**data["tasks"], "default": {"rescue": True}}
    refund = [{"type": "function", "function": {"name": "issue_refund"}}]
    for tools, rescued in (({"write": []}, True), (data["tools"], False)):
        t = stream_try(make_sidecar(make_policy(tasks=data["tasks"], tools=tools)))
        t.send(request_body({**HI, "tools": refund}, end_of_stream=True))
        t.send(response_headers(200, SSE))
        t.send(response_body(sse(openai_events(["Hello", " wor"], finish=None, usage=False, done=False)), False))
        t.send(response_body(b"", end_of_stream=True))
        # The secondary (tier 1) may continue it only while it would get the same tools.
        assert bool(rescue_calls(t)) is rescued


def test_only_a_rescuable_streams_try_asks_for_the_reset_shield() -> None:
    # The relay sends a try with SHIELD_HEADER through the reset shield (runtime/shield.py): only
    # a stream whose task class asks for rescue pays its two extra hops.
    rescuing = stream_try(make_sidecar(rescuing_policy()))
    assert set_headers(rescuing.headers_answer)[SHIELD_HEADER] == "1"
    for t in (
        stream_try(make_sidecar(rescuing_policy(rescue=False))),
        Try(make_sidecar(rescuing_policy()), rung=0),  # not a stream
    ):
        assert SHIELD_HEADER not in set_headers(t.headers_answer)
        # Header mutations carry over between tries: every try removes an earlier one's.
        assert SHIELD_HEADER in removed_headers(t.headers_answer)
