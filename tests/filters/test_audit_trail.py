"""What the filters put in the audit trail: a hop, its trip and the degraded answer of one
request, each with the request's id, tenant, policy version and prompt hash (never the prompt);
nothing for a tier-0 answer or with the trail off; a refusal from decide."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from google.protobuf import json_format

from extproc.audit import Entry, Kind, RungRef
from extproc.core import Failure
from extproc.core.names import META_DECISION
from extproc.filters.decide import DecideProcessor
from extproc.filters.effects import Audited
from extproc.filters.wire import Mode
from extproc.runtime.auditlog import MemoryAudit
from extproc.runtime.sidecar import Sidecar
from tests.builders import (
    CLIENT_KEY,
    decide_fields,
    make_policy,
    make_sidecar,
    policy_data,
    request_body,
    request_headers,
)
from tests.filters.test_attempt import Try, anthropic_answer, openai_answer, record

PROMPT = hashlib.sha256(b'{"model":"gpt-4o","messages":[{"role":"user","content":"secret"}]}').hexdigest()
PRIMARY = RungRef("main", 0, "primary", "gpt-4o", 0)
SECONDARY = RungRef("main", 1, "secondary", "claude-fallback", 1)
CONTEXT: dict[str, Any] = {
    "tenant": "acme",
    "task": "default",
    "policy": make_policy(audit={"dir": "/var/lib/rungway/audit"}).stamp,  # the revision's stamp
    "request_id": "req-1",
    "prompt_hash": PROMPT,
}


def audited_sidecar(**overrides: Any) -> Sidecar:
    sidecar = make_sidecar(make_policy(**{"audit": {"dir": "/var/lib/rungway/audit"}, **overrides}))
    sidecar.audit = MemoryAudit()
    return sidecar


def entries(sidecar: Sidecar) -> list[Entry]:
    assert isinstance(sidecar.audit, MemoryAudit)
    return [r.entry for r in sidecar.audit.records]


def test_a_fallback_leaves_its_trip_hop_and_tier_change() -> None:
    sidecar = audited_sidecar()
    first = Try(sidecar, rung=0, request_id="req-1", prompt_hash=PROMPT)
    first.answer_json(500, {"error": {"message": "boom"}})
    second = Try(
        sidecar,
        rung=1,
        attempt=2,
        trip=record(attempt=1, started_ms=1_000_000.0, rung=0, failure="server_error"),
        request_id="req-1",
        prompt_hash=PROMPT,
    )
    second.answer_json(200, anthropic_answer())
    at = sidecar.clock.wall()
    assert entries(sidecar) == [
        Entry(at, Kind.TRIP, trigger="server_error", source=PRIMARY, **CONTEXT),
        Entry(at, Kind.HOP, trigger="server_error", source=PRIMARY, target=SECONDARY, **CONTEXT),
        Entry(
            at,
            Kind.TIER_CHANGE,
            trigger="server_error",
            source=PRIMARY,
            target=SECONDARY,
            tokens=2,
            cost=0.0,
            **CONTEXT,
        ),
    ]


def test_a_tier_zero_answer_leaves_nothing_and_the_trail_can_be_off() -> None:
    on = audited_sidecar()
    Try(on, rung=0).answer_json(200, openai_answer())
    assert entries(on) == []
    off = make_sidecar()  # no audit directory: the filters make no entries at all
    t = Try(off, rung=0)
    t.answer_json(500, {"error": {"message": "boom"}})
    assert not [e for e in t.effects if isinstance(e, Audited)]


def test_decide_hashes_the_body_and_records_a_refusal_without_the_prompt() -> None:
    sidecar = audited_sidecar(tenants={"acme": {"regions": ["eu-west"]}})  # no provider is in it
    processor = DecideProcessor(sidecar)
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-request-id": "req-9",
    }
    (asked,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model="gpt-4o")))
    assert asked.mode_override.request_body_mode == Mode.BUFFERED  # the body's hash is in every record
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "secret"}]}).encode()
    (refused,) = processor.dispatch(request_body(body))
    assert refused.immediate_response.status.code == 503
    sidecar.apply(processor.drain_effects())
    (entry,) = entries(sidecar)
    assert (entry.kind, entry.trigger, entry.tenant, entry.request_id, entry.prompt_hash) == (
        Kind.REFUSED,
        "not_permitted",
        "acme",
        "req-9",
        hashlib.sha256(body).hexdigest(),
    )
    assert "secret" not in json.dumps(entry.encode())


def test_without_prompt_hashes_decide_reads_no_body_and_still_names_the_request() -> None:
    sidecar = audited_sidecar(audit={"dir": "/var/lib/rungway/audit", "prompt_hash": False})
    processor = DecideProcessor(sidecar)
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-request-id": "req-7",
    }
    (routed_now,) = processor.dispatch(request_headers(headers, metadata=decide_fields(model="gpt-4o")))
    assert not routed_now.HasField("mode_override")
    decision = json_format.MessageToDict(routed_now.dynamic_metadata)[META_DECISION]
    assert decision["request_id"] == "req-7" and "prompt_hash" not in decision


def test_a_rung_that_gets_less_leaves_tool_mode_and_trim_records() -> None:
    data = policy_data(tools={"write": ["issue_refund"]}, context={"trim": True})
    data["ladders"]["main"][1]["context_window"] = 300
    sidecar = make_sidecar(make_policy(**{**data, "audit": {"dir": "/var/lib/rungway/audit"}}))
    sidecar.audit = MemoryAudit()
    t = Try(sidecar, rung=1, rungs=(1, 2), skip=Failure.SERVER_ERROR, request_id="req-3", prompt_hash=PROMPT)
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 200} for i in range(20)]
    request = {
        "model": "gpt-4o",
        "messages": [*history, {"role": "user", "content": "last"}],
        "tools": [
            {"type": "function", "function": {"name": "issue_refund"}},
            {"type": "function", "function": {"name": "lookup_order"}},
        ],
    }
    t.send(request_body(request))
    kinds = {e.kind: e for e in entries(sidecar)}
    assert kinds[Kind.HOP].trigger == "server_error"  # decide skipped the first rung
    tool_mode, trim = kinds[Kind.TOOL_MODE], kinds[Kind.TRIM]
    assert (tool_mode.trigger, tool_mode.target, tool_mode.detail) == (
        "read_only",
        SECONDARY,
        {"removed": "issue_refund"},
    )
    assert trim.trigger == "context_window" and int(trim.detail["messages"]) > 0
    assert (trim.request_id, trim.prompt_hash) == ("req-3", PROMPT)
