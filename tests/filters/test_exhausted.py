"""Product tiers (T6): a task class whose policy names its own answer for an outage gets that
answer — a handoff notice (tier 3) or a static answer (tier 4) — as a normal completion in the
client's dialect, flagged degraded, instead of an error; the request's own faults still get theirs."""

from __future__ import annotations

import json
from typing import Any

from extproc.core import Dialect
from extproc.core.names import REASON, SERVED_BY, TIER
from extproc.translate.sse import SseParser
from tests.builders import (
    body_of,
    make_policy,
    make_sidecar,
    openai_events,
    response_body,
    response_headers,
    set_headers,
    sse,
)
from tests.filters.test_attempt import SSE, Try, openai_answer, record, stream_try

MESSAGE = "Our assistant cannot answer right now; your request was passed to a person who will reply by email."


def exhausting_sidecar(tier: int = 3) -> Any:
    tasks = {
        "default": {"min_output_tokens": 1, "when_exhausted": {"tier": tier, "message": MESSAGE}},
        "summarizer": {"min_output_tokens": 10},
    }
    return make_sidecar(make_policy(tasks=tasks))


def last_try(sidecar: Any, **kw: Any) -> Try:
    trip = record(attempt=2, started_ms=0.0, rung=1, failure="timeout", first_failure="timeout")
    return Try(sidecar, rung=2, attempt=3, trip=trip, **kw)


def test_an_outage_on_the_last_rung_is_answered_with_the_tasks_handoff_notice() -> None:
    judged = last_try(exhausting_sidecar()).answer_json(
        503, {"error": {"message": "overloaded", "type": "server_error"}}
    )
    headers = set_headers(judged)
    assert headers[":status"] == "200" and headers[TIER] == "3" and headers["x-rungway-degraded"] == "true"
    assert headers[SERVED_BY] == "rungway/handoff" and headers[REASON] == "server_error"
    answer = json.loads(body_of(judged) or b"")
    assert answer["choices"][0]["message"]["content"] == MESSAGE and answer["choices"][0]["finish_reason"] == "stop"
    assert headers["content-length"] == str(len(body_of(judged) or b""))


def test_an_anthropic_client_gets_a_message_in_its_own_dialect() -> None:
    t = last_try(exhausting_sidecar(4), dialect=Dialect.ANTHROPIC, ladder="main")
    judged = t.answer_json(200, openai_answer(content=None))  # a 200 without content: quality_regression
    headers = set_headers(judged)
    assert headers[TIER] == "4" and headers[SERVED_BY] == "rungway/static"
    answer = json.loads(body_of(judged) or b"")
    assert answer["type"] == "message" and answer["content"] == [{"type": "text", "text": MESSAGE}]


def test_a_stream_that_fails_before_its_first_token_on_the_last_rung_gets_a_whole_stream() -> None:
    trip = record(attempt=2, started_ms=0.0, rung=1, failure="timeout", first_failure="timeout")
    t = stream_try(exhausting_sidecar(), rung=2, attempt=3, trip=trip)
    t.send(response_headers(200, SSE))
    headers, *bodies = t.send(response_body(sse(openai_events([])), end_of_stream=True))
    assert set_headers(headers)[":status"] == "200" and set_headers(headers)[TIER] == "3"
    stream = b"".join(body_of(b) or b"" for b in bodies)
    events = [e.data for e in SseParser().feed(stream)]
    texts = [
        json.loads(d)["choices"][0]["delta"].get("content")
        for d in events
        if d != "[DONE]" and json.loads(d)["choices"]
    ]
    assert "".join(t or "" for t in texts) == MESSAGE and events[-1] == "[DONE]"


def test_the_requests_own_fault_still_gets_its_error() -> None:
    judged = last_try(exhausting_sidecar()).answer_json(
        400, {"error": {"message": "messages: required", "type": "invalid_request_error"}}
    )
    assert set_headers(judged)[":status"] == "400"
