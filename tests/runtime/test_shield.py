"""The reset shield (runtime/shield.py) between two real HTTP servers on Unix sockets: a stand-in
for Envoy's rescue listener that misbehaves on command, and the shield's own socket as Envoy's
relay would call it."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from extproc.core.names import CLUSTER_HEADER
from extproc.runtime.shield import Shield, forwarded_headers

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(3)]


def rst(request: web.BaseRequest) -> None:
    """Close with a TCP-style reset, as a provider behind Envoy's rescue listener looks to it."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.upstream_socket = tmp / "rescue.sock"
        self.shield_socket = tmp / "shield.sock"
        self.handler: Handler | None = None
        self.seen: list[web.BaseRequest] = []
        self.resets: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()
        self.shield = Shield(self.shield_socket, self.upstream_socket, lambda c, o: self.resets.append((c, o)))

    async def _upstream(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(request)
        await request.read()
        assert self.handler is not None
        try:
            return await self.handler(request)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def __aenter__(self) -> Rig:
        self._runner = web.ServerRunner(web.Server(self._upstream, handler_cancellation=True))
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.upstream_socket)).start()
        await self.shield.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shield.stop()
        await self._runner.cleanup()

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.shield_socket)))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with Rig(tmp_path) as r:
        yield r


def sse_then(after: int, end: str) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-provider": "p"})
        await response.prepare(request)
        for event in EVENTS[:after]:
            await response.write(event)
        if end == "reset":
            await asyncio.sleep(0.05)  # the bytes reach the shield before the reset
            rst(request)
            return response
        if end == "silence":
            await asyncio.sleep(30)
        await response.write_eof()
        return response

    return handle


async def post(rig: Rig, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        rig.client() as session,
        session.post(
            "http://shield/v1/chat/completions?x=1",
            data=b'{"stream": true}',
            headers={CLUSTER_HEADER: "rw.direct.primary", "authorization": "Bearer k", **headers},
        ) as response,
    ):
        body = await response.read()
        return response.status, CIMultiDict(response.headers), body


async def test_a_whole_stream_passes_through_unchanged(rig: Rig) -> None:
    rig.handler = sse_then(3, "end")
    status, headers, body = await post(rig, **{"x-envoy-expected-rq-timeout-ms": "2000", "x-request-id": "r1"})
    assert (status, body) == (200, b"".join(EVENTS))
    assert headers["x-provider"] == "p" and headers["content-type"] == "text/event-stream"
    (seen,) = rig.seen
    assert seen.path_qs == "/v1/chat/completions?x=1" and seen.method == "POST"
    # The rescue listener routes by the cluster header; the key passes; the relay's envoy headers do not.
    assert seen.headers[CLUSTER_HEADER] == "rw.direct.primary" and seen.headers["authorization"] == "Bearer k"
    assert "x-envoy-expected-rq-timeout-ms" not in seen.headers and seen.headers["x-request-id"] == "r1"
    assert rig.resets == []


async def test_a_header_sent_twice_reaches_the_provider_twice(rig: Rig) -> None:
    rig.handler = sse_then(3, "end")
    headers = CIMultiDict([(CLUSTER_HEADER, "rw.direct.primary"), ("x-tag", "a"), ("x-tag", "b")])
    async with rig.client() as session, session.post("http://shield/", data=b"{}", headers=headers) as response:
        assert response.status == 200
    (seen,) = rig.seen
    assert seen.headers.getall("x-tag") == ["a", "b"]


async def test_a_reset_after_the_stream_began_becomes_a_clean_end(rig: Rig) -> None:
    rig.handler = sse_then(2, "reset")
    status, _, body = await post(rig)  # no exception: the response ended as HTTP allows
    assert (status, body) == (200, b"".join(EVENTS[:2]))
    assert rig.resets == [("rw.direct.primary", "shielded")]


async def test_a_reset_before_any_byte_is_passed_on_as_a_reset(rig: Rig) -> None:
    rig.handler = sse_then(0, "reset")
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(rig)
    assert rig.resets == [("rw.direct.primary", "passed")]


async def test_a_non_stream_answer_cut_short_is_never_made_to_look_whole(rig: Rig) -> None:
    async def cut_json(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"choices": [')
        await asyncio.sleep(0.05)
        rst(request)
        return response

    rig.handler = cut_json
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(rig)
    assert rig.resets == [("rw.direct.primary", "passed")]


async def test_an_error_status_passes_through_with_its_body(rig: Rig) -> None:
    async def overloaded(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"error": "overloaded"}, status=529, headers={"retry-after": "3"})

    rig.handler = overloaded
    status, headers, body = await post(rig)
    assert (status, headers["retry-after"], body) == (529, "3", b'{"error": "overloaded"}')


async def test_no_rescue_listener_is_a_reset_like_a_refused_connection(tmp_path: Path) -> None:
    shield = Shield(tmp_path / "shield.sock", tmp_path / "nobody-listens.sock")
    await shield.start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(tmp_path / "shield.sock"))) as session,
        ):
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await session.post("http://shield/", data=b"{}", headers={CLUSTER_HEADER: "rw.direct.primary"})
    finally:
        await shield.stop()


async def test_a_request_without_a_provider_cluster_is_refused(rig: Rig) -> None:
    async with rig.client() as session, session.post("http://shield/", data=b"{}") as response:
        assert response.status == 502
    assert rig.seen == []


async def test_a_caller_that_goes_away_cancels_the_providers_call(rig: Rig) -> None:
    # Envoy resets the try (the client left, the stall watchdog, the budget): the provider's call
    # must not live on while the provider is silent.
    rig.handler = sse_then(1, "silence")
    async with rig.client() as session:
        response = await session.post("http://shield/", data=b"{}", headers={CLUSTER_HEADER: "rw.direct.primary"})
        assert await response.content.readany() == EVENTS[0]
        response.close()  # drops the connection mid-stream
    await asyncio.wait_for(rig.cancelled.wait(), 10)
    assert rig.resets == []


def test_forwarded_headers_drop_hop_by_hop_and_envoys_own() -> None:
    headers = {
        "Host": "x",
        "Content-Length": "3",
        "Transfer-Encoding": "chunked",
        "Connection": "keep-alive",
        "X-Envoy-Attempt-Count": "2",
        "X-Forwarded-Proto": "http",
        "Authorization": "Bearer k",
        "anthropic-version": "2023-06-01",
    }
    assert forwarded_headers(headers) == [("authorization", "Bearer k"), ("anthropic-version", "2023-06-01")]


async def test_more_streams_than_a_client_pool_holds_pass_at_once(rig: Rig) -> None:
    # Streams last as long as a model writes: each holds its connection to the rescue listener.
    # aiohttp's default pool of 100 would queue the 101st until the relay's budget ends it.
    release = asyncio.Event()

    async def long_stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(EVENTS[0])
        await release.wait()
        await response.write_eof()
        return response

    rig.handler = long_stream
    many = 110  # under the listen backlog (128) of the shield's socket
    connector = aiohttp.UnixConnector(path=str(rig.shield_socket), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        responses: list[aiohttp.ClientResponse] = []

        async def first_event() -> bytes:
            response = await session.post("http://shield/", data=b"{}", headers={CLUSTER_HEADER: "rw.direct.p"})
            responses.append(response)
            return await response.content.readany()

        calls = [asyncio.ensure_future(first_event()) for _ in range(many)]
        try:
            done, _ = await asyncio.wait(calls, timeout=20)
            assert [c.result() for c in done] == [EVENTS[0]] * many
        finally:
            release.set()
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            for response in responses:
                await response.read()
                response.release()
