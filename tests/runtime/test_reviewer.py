"""The pod's re-runner against a stand-in for Envoy's listener: a review waits while its tier-0
rung looks down, is re-run (as Rungway, with the pod's secret, pinned to the tenant's task and
impact) once it is back, goes back to pending when anything but tier 0 answers, and is kept
with its diff, counted and audited (both rungs, hashes only) when tier 0 answers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from extproc.audit import Entry, Kind, RungRef
from extproc.core import DegradedAnswer, Dialect, Failure, Impact, Observation
from extproc.health.board import Board
from extproc.review import ReviewState
from extproc.runtime.review import MemoryReviewStore
from extproc.runtime.reviewer import Reviewer, tier_0_of
from extproc.runtime.sidecar import configured_baselines, configured_endpoints
from tests.builders import make_policy
from tests.filters.test_attempt import anthropic_answer, openai_answer

POLICY = make_policy(
    tenants={"acme": {"rerun_on_recovery": True}},
    review={"store": "unused.db", "rerun_every_s": 0.1},
    health={"enabled": True, "circuit": {"consecutive_failures": 1, "open_s": 60}},
)
PROMPT = b'{"model":"gpt-4o","messages":[{"role":"user","content":"capital of France?"}]}'


def kept(at: float) -> DegradedAnswer:
    answer = json.dumps({**openai_answer("Paris, I think."), "model": "claude-fallback"}).encode()
    return DegradedAnswer("rev_1", "acme", "default", Impact.ASYNC_ACCEPTABLE, Dialect.OPENAI,
                          "/v1/chat/completions", "gpt-4o", (), "main", 1, 1, "secondary/claude-fallback",
                          "server_error", POLICY.stamp, "req-1", hashlib.sha256(PROMPT).hexdigest(), at,
                          PROMPT, answer)  # fmt: skip


class Envoy:
    """Answers each POST with the next (status, headers, body) it is given; records the requests."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status, headers, body = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def envoy() -> AsyncIterator[tuple[Envoy, str]]:
    fake = Envoy()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_review_is_re_run_on_tier_0_once_it_is_back_and_kept_with_its_diff(
    envoy: tuple[Envoy, str],
) -> None:
    fake, base = envoy
    store = MemoryReviewStore()
    now = [time.time()]
    store.keep(kept(now[0]), 10)
    audited: list[Entry] = []

    def reviewer(board: Board) -> Reviewer:
        assert POLICY.review is not None
        return Reviewer(POLICY.review, lambda: POLICY, store, board, "pod-secret", lambda: base, audited.append,
                        clock=lambda: now[0])  # fmt: skip

    down = Board(POLICY.health, configured_baselines(POLICY), configured_endpoints(POLICY))
    down.observe(Observation("primary/gpt-4o", now[0], Failure.SERVER_ERROR, 0.1), now[0])  # the primary is down
    async with aiohttp.ClientSession() as session:
        await reviewer(down).pass_once(session)
        assert fake.requests == []  # tier 0 looks down: nothing is re-run
        back = reviewer(Board(POLICY.health, configured_baselines(POLICY), configured_endpoints(POLICY)))
        # The first re-run comes back from another rung (tier 0 failed on the way): retried later.
        fake.answers.append((200, {"x-rungway-tier": "1", "x-rungway-served-by": "secondary/claude-fallback"},
                             anthropic_answer()))  # fmt: skip
        await back.pass_once(session)
        await _settled(back)
        view = store.get("rev_1")
        assert view is not None and view.state is ReviewState.PENDING and view.attempts == 1
        headers, body = fake.requests[0]
        assert headers["x-rungway-rerun"] == "pod-secret acme rev_1" and body == PROMPT
        assert (headers["x-rungway-task"], headers["x-rungway-impact"]) == ("default", "async_acceptable")
        assert "authorization" not in {k.lower() for k in headers}
        await back.pass_once(session)
        assert len(fake.requests) == 1  # waiting out its backoff
        now[0] += 10.0  # past the first backoff (at most 5 s)
        tier_0 = openai_answer("Paris.", tokens=3)
        fake.answers.append((200, {"x-rungway-tier": "0", "x-rungway-served-by": "primary/gpt-4o"}, tier_0))
        await back.pass_once(session)
        await _settled(back)
    view = store.get("rev_1")
    assert view is not None and view.state is ReviewState.DONE and view.rerun is not None
    assert view.rerun.served_by == "primary/gpt-4o" and json.loads(view.rerun.answer) == tier_0
    assert [c.field for c in view.rerun.diff.changes] == ["output_tokens"] and not view.rerun.diff.same_text
    assert back.reruns == {("acme", "retried"): 1, ("acme", "differs"): 1}
    (entry,) = audited
    assert (entry.kind, entry.trigger, entry.tenant, entry.request_id) == (Kind.RERUN, "recovered", "acme", "req-1")
    assert entry.source == RungRef("main", 1, "secondary", "claude-fallback", 1)
    assert entry.target == RungRef("main", 0, "primary", "gpt-4o", 0)
    assert entry.detail["rerun_sha256"] == hashlib.sha256(view.rerun.answer).hexdigest()
    assert entry.detail["degraded_sha256"] == hashlib.sha256(kept(0).answer).hexdigest()
    assert b"Paris" not in json.dumps(entry.encode()).encode()  # hashes, never the answers


async def _settled(reviewer: Reviewer) -> None:
    for task in list(reviewer._running.values()):
        await task


def test_the_tier_0_rung_serves_the_model_the_client_asked_for() -> None:
    assert tier_0_of(POLICY, kept(0)) == ("primary/gpt-4o", "primary/gpt-4o")
    assert tier_0_of(POLICY, DegradedAnswer(**{**_fields(kept(0)), "ladder": "gone"})) is None


def _fields(item: DegradedAnswer) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__dataclass_fields__}
