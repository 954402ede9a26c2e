"""A stream rescue's HTTP call: to the rescue rung through Envoy's rescue listener (a Unix
socket, no ext_proc: Envoy's pools, TLS checks and access log, the provider's key set by the
sidecar), its answer fed back to the try as RescueItems on a queue the stream's loop reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from ..core import Failure
from ..core.names import CLUSTER_HEADER
from ..filters.effects import RescueChunk, RescueEnded, RescueFailed, RescueItem, RungCall
from ..translate import classify, parse_provider_error

log = logging.getLogger("rungway.rescue")
# Set by `rungway up` for its workers: Envoy's rescue listener.
RESCUE_SOCKET_ENV = "RUNGWAY_RESCUE_SOCKET"
_ERROR_BODY_CAP = 64 * 1024


@contextlib.asynccontextmanager
async def call_rung(call: RungCall, socket: Path) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST `call` through Envoy's side listener; the response, within the call's budget."""
    timeout = aiohttp.ClientTimeout(total=call.budget_s)
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)), timeout=timeout) as session,
        session.post(
            "http://rungway-rescue" + call.path,
            data=call.body,
            headers={**call.headers, CLUSTER_HEADER: call.cluster},
        ) as response,
    ):
        yield response


class RescueCallTask:
    """One rescue call in flight; `queue` yields its items, the last one a RescueEnded or
    RescueFailed."""

    def __init__(self, call: RungCall, socket: Path | None) -> None:
        self.queue: asyncio.Queue[RescueItem] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(call, socket))

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self, call: RungCall, socket: Path | None) -> None:
        put = self.queue.put_nowait
        if socket is None:
            put(RescueFailed(Failure.CONNECT_ERROR, "no rescue listener is configured"))
            return
        try:
            async with call_rung(call, socket) as response:
                if response.status != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
                    body = await response.content.read(_ERROR_BODY_CAP)
                    error = parse_provider_error(call.dialect, body)
                    failure = classify(call.dialect, response.status, error) or Failure.SCHEMA_ERROR
                    put(RescueFailed(failure, f"the rescue rung answered HTTP {response.status}"))
                    return
                async for chunk in response.content.iter_any():
                    put(RescueChunk(chunk))
                put(RescueEnded())
        except TimeoutError:
            put(RescueFailed(Failure.TIMEOUT, f"the rescue did not complete within {call.budget_s:g}s"))
        except (aiohttp.ClientError, OSError) as exc:
            log.info("rescue call failed: %s", type(exc).__name__)
            put(RescueFailed(Failure.CONNECT_ERROR, "the rescue rung could not be reached"))
