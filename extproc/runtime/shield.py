"""The reset shield: a rescuable stream's try reaches its provider through here.

Envoy's router can only reset the client's stream when a provider resets its own after the
response headers went downstream (`Filter::onUpstreamReset` → `onUpstreamAbort` →
`sendLocalReply`, which resets once headers were encoded): the attempt filter never sees the
end, so nothing can be rescued. Here the try's request arrives from Envoy's relay (a Unix
socket, HTTP/1.1) and goes on through Envoy's rescue listener (the provider's pools, TLS checks
and access log; the rung's path, key and body were set by the attempt filter already). When the
provider's answer is a begun event stream (200, text/event-stream, at least one byte passed on)
and its connection then resets, the shield ends its own response cleanly instead: to the attempt
filter that is a stream cut without a finish, which it rescues from the next rung (it forwards
only whole events, so a torn last event never reaches the client). Anything else — a reset
before the first byte, a non-stream answer cut short — is passed on as a reset, exactly what the
try would have seen from the provider itself.

Costs: two more local hops (relay → shield → rescue listener) for rescuable streams only (the
attempt filter asks for the shield only for a stream whose task class has `rescue: true`); the
shield copies bytes, it never parses them. If the worker dies, the streams it shields are reset
like a provider's (the client's stream with them, as when the worker's ext_proc stream dies)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from ..core.names import CLUSTER_HEADER

log = logging.getLogger("rungway.shield")
# Set by `rungway up` for each worker: the socket its shield serves on.
SHIELD_SOCKET_ENV = "RUNGWAY_SHIELD_SOCKET"
# Hop-by-hop headers, and the relay's own envoy headers: the rescue listener sets its own.
_NOT_FORWARDED: Final = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)
_NOT_RETURNED: Final = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
_RESET_ERRORS: Final = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)

# Called with the provider's direct cluster and what became of the reset: "shielded" (ended
# cleanly for a rescue) or "passed" (reset on, nothing of the stream had gone out yet).
ResetHook = Callable[[str, str], None]


def forwarded_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The try's headers as the rescue listener should get them (a repeated one, each time)."""
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        low = name.lower()
        if low in _NOT_FORWARDED or low.startswith("x-envoy-") or low.startswith("x-forwarded-"):
            continue
        out.append((low, value))
    return out


def is_event_stream(status: int, content_type: str) -> bool:
    return status == 200 and "text/event-stream" in content_type


class Shield:
    """One worker's shield: an aiohttp server on `socket`, calling `rescue_socket`."""

    def __init__(self, socket: Path, rescue_socket: Path, on_reset: ResetHook | None = None) -> None:
        self.socket = socket
        self.rescue_socket = rescue_socket
        self._on_reset = on_reset or (lambda cluster, outcome: None)
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No total timeout: the relay's per-try budget bounds the wait for headers, and the
        # attempt filter's stall and abandon timers bound the stream; both reset this request.
        self._session = aiohttp.ClientSession(
            # No pool limit (aiohttp's default is 100): each stream holds its connection for as
            # long as the model writes, and a try waiting for one would only end at its budget.
            connector=aiohttp.UnixConnector(path=str(self.rescue_socket), limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        # handler_cancellation: a try Envoy resets (client gone, stall, budget) cancels the
        # call, even while the provider is silent.
        server = web.Server(self._handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        self.socket.unlink(missing_ok=True)
        site = web.UnixSite(self._runner, str(self.socket))
        await site.start()
        os.chmod(self.socket, 0o600)
        log.info("reset shield listening on %s", self.socket)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        cluster = request.headers.get(CLUSTER_HEADER)
        session = self._session
        if not cluster or session is None:
            return web.Response(status=502, text="the shield was reached without a provider cluster")
        body = await request.content.read()  # bounded by Envoy: the attempt filter buffered it
        try:
            upstream = await session.request(
                request.method,
                "http://rungway-shield" + request.path_qs,
                data=body,
                headers=forwarded_headers(request.headers),
                allow_redirects=False,
            )
        except _RESET_ERRORS:
            _abort(request)  # as the provider's own refusal or reset reaches the relay
            return web.Response()
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _NOT_RETURNED:
                    response.headers.add(name, value)
            await response.prepare(request)
            stream = is_event_stream(upstream.status, upstream.headers.get("content-type", ""))
            passed = 0
            while True:
                try:
                    chunk = await upstream.content.readany()
                except _RESET_ERRORS:
                    # The provider's side broke (a write to Envoy failing is not caught here:
                    # that is the try being reset, and it ends this handler).
                    if stream and passed:
                        self._on_reset(cluster, "shielded")
                        log.info("a provider reset a begun stream (%s): ended cleanly for a rescue", cluster)
                        await response.write_eof()
                    else:
                        self._on_reset(cluster, "passed")
                        _abort(request)
                    return response
                if not chunk:
                    break
                await response.write(chunk)
                passed += len(chunk)
            upstream.release()
            await response.write_eof()
            return response
        finally:
            upstream.close()


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
