"""The grpc.aio stream loop, driven in-process: message order, the deadline hook, effects applied,
and no asyncio task left with an exception nobody retrieved."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from extproc.core import Failure, SystemClock
from extproc.core.names import CHANNEL_TOKEN_KEY, FILTER_ROLE_KEY, META_DECISION
from extproc.routing.approval import Approval, Approvals
from extproc.runtime.server import ExternalProcessor
from tests.builders import (
    decide_fields,
    host_metadata_text,
    make_policy,
    make_sidecar,
    openai_events,
    request_headers,
    response_body,
    response_headers,
    sample,
    sse,
)
from tests.filters.test_attempt import CLIENT_HEADERS, decision
from tests.filters.test_decide_hold import HEADERS


class Context:
    """The part of grpc.aio's ServicerContext the loop uses."""

    def __init__(self, role: str, token: str | None = None) -> None:
        self.role = role
        self.token = token
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        if self.token is None:
            return [(FILTER_ROLE_KEY, self.role)]
        return [(FILTER_ROLE_KEY, self.role), (CHANNEL_TOKEN_KEY, self.token)]

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)


def stream_messages(policy: str) -> list[Any]:
    attributes = {"xds.upstream_host_metadata": host_metadata_text("main", 0), "upstream.request_attempt_count": 1}
    return [
        request_headers(
            CLIENT_HEADERS, metadata={META_DECISION: decision(stream=True, policy=policy)}, attributes=attributes
        ),
        response_headers(200, {"content-type": "text/event-stream"}),
        response_body(sse(openai_events(["Par"], finish=None, usage=False, done=False)), end_of_stream=False),
    ]


async def requests(messages: list[Any], then_wait_s: float) -> AsyncIterator[Any]:
    for message in messages:
        yield message
    await asyncio.sleep(then_wait_s)  # then Envoy ends its side of the stream


async def test_a_stream_that_ends_while_the_watchdog_answers_leaves_no_unretrieved_task_exception() -> None:
    loop = asyncio.get_running_loop()
    leaked: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: leaked.append(context))
    sidecar = make_sidecar(make_policy(stream_stall_s=0.05), clock=SystemClock())  # type: ignore[arg-type]
    context: Any = Context("attempt", sidecar.channel_token)
    process: Any = ExternalProcessor(sidecar).Process(
        requests(stream_messages(sidecar.policy.stamp), then_wait_s=0.1), context
    )
    answers = []
    async for answer in process:
        answers.append(answer)
        mutation = answer.response_body.response.body_mutation
        if mutation.streamed_response.end_of_stream:
            await asyncio.sleep(0.3)  # Envoy's side ends meanwhile: the pending read finishes
            break
    await process.aclose()  # gRPC stops reading the answers
    gc.collect()
    await asyncio.sleep(0)
    kinds = ["request_headers", "response_headers", "response_body", "response_body"]
    assert [a.WhichOneof("response") for a in answers] == kinds
    assert sample(sidecar, "rungway_streams_total", outcome="interrupted") == 1  # the watchdog's effect applied
    assert leaked == []


async def test_an_unknown_filter_role_is_refused() -> None:
    sidecar = make_sidecar()
    context: Any = Context("sideways", sidecar.channel_token)
    process = ExternalProcessor(sidecar).Process(requests([], 0), context)
    assert [a async for a in process] == []
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", [None, "", "wrong-token", "é"])
async def test_a_stream_without_envoys_channel_token_reads_nothing_and_gets_no_key(token: str | None) -> None:
    sidecar = make_sidecar()
    context: Any = Context("attempt", token)
    process = ExternalProcessor(sidecar).Process(requests(stream_messages(sidecar.policy.stamp), 0), context)
    assert [a async for a in process] == []  # not even the header mutation that carries the key
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "unknown caller")
    assert sample(sidecar, "rungway_channel_refused_total") == 1


async def test_a_try_is_in_flight_at_the_worker_for_as_long_as_its_stream() -> None:
    sidecar = make_sidecar(clock=SystemClock())  # type: ignore[arg-type]
    context: Any = Context("attempt", sidecar.channel_token)
    process: Any = ExternalProcessor(sidecar).Process(
        requests(stream_messages(sidecar.policy.stamp), then_wait_s=0.05), context
    )
    seen = []
    async for _ in process:
        seen.append(sidecar.admission.tries)
    assert seen and set(seen) == {1}
    assert sidecar.admission.tries == 0


async def test_a_decide_stream_is_not_a_try() -> None:
    sidecar = make_sidecar()
    context: Any = Context("decide", sidecar.channel_token)
    process: Any = ExternalProcessor(sidecar).Process(requests([], 0), context)
    assert [a async for a in process] == []
    assert sidecar.admission.tries == 0


async def test_a_worker_socket_open_beyond_its_group_is_refused_before_anything_binds(tmp_path) -> None:
    from extproc.runtime.server import serve

    with pytest.raises(ValueError, match="socket_mode must be one of"):
        await serve(make_sidecar(), tmp_path / "w.sock", socket_mode=0o666)
    assert not (tmp_path / "w.sock").exists()


@pytest.mark.parametrize(("given", "mode"), [("600", 0o600), ("660", 0o660), ("0660", 0o660), ("0o660", 0o660)])
def test_serve_takes_the_socket_mode_in_octal(given: str, mode: int) -> None:
    from extproc.cli import build_parser

    args = build_parser().parse_args(["serve", "--policy", "p.yaml", "--socket", "w.sock", "--socket-mode", given])
    assert args.socket_mode == mode


def held_sidecar(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A tenant (acme) whose fallbacks need an approval and who waits for one; the primary is down."""
    policy = make_policy(
        tenants={"acme": {"approval_beyond_tier": 0, "approval_wait_s": 30}}, approvals="approvals.json"
    )
    sidecar = make_sidecar(policy, clock=SystemClock())  # type: ignore[arg-type]
    view: Any = lambda key, first: Failure.SERVER_ERROR if key.startswith("primary") else None  # noqa: E731
    monkeypatch.setattr(sidecar, "health_view", lambda impact: view)
    return sidecar


async def test_a_held_decide_stream_is_answered_by_the_loop_once_an_approval_is_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = held_sidecar(monkeypatch)
    context: Any = Context("decide", sidecar.channel_token)
    message = request_headers(HEADERS, metadata=decide_fields(model="gpt-4o"))
    process: Any = ExternalProcessor(sidecar).Process(requests([message], then_wait_s=5), context)
    wait = await anext(process)
    assert wait.HasField("override_message_timeout") and sidecar.holding()
    sidecar.approvals = Approvals((Approval("acme", 1, sidecar.clock.wall() + 60),))
    answer = await asyncio.wait_for(anext(process), 2)  # the loop's next wake-up re-decides it
    assert answer.WhichOneof("response") == "request_headers" and not sidecar.holding()
    await process.aclose()


async def test_a_held_decide_stream_envoy_ends_frees_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = held_sidecar(monkeypatch)
    context: Any = Context("decide", sidecar.channel_token)
    message = request_headers(HEADERS, metadata=decide_fields(model="gpt-4o"))
    process: Any = ExternalProcessor(sidecar).Process(requests([message], then_wait_s=0.3), context)
    answers = [a async for a in process]  # Envoy ends its side after 0.3 s: the client left
    assert len(answers) == 1 and answers[0].HasField("override_message_timeout")
    assert sidecar.held("acme") == 0 and not sidecar.holding()
    assert sample(sidecar, "rungway_approval_holds_total", tenant="acme", outcome="gone") == 1
