"""The gRPC shell: one ext_proc server serving both filters, one processor per stream.

The stream loop owns message order, timers and error mapping; processors own meaning. The
filter a stream belongs to comes from the gRPC initial metadata Envoy sends (x-rungway-filter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..core.names import CHANNEL_TOKEN_KEY, DIRECT_PREFIX, FILTER_ROLE_KEY
from ..filters.attempt import AttemptProcessor
from ..filters.decide import DecideProcessor
from ..filters.effects import (
    Deferred,
    Effect,
    Escalated,
    RescueChunk,
    RescueItem,
    RescueRequested,
    TaskQueried,
)
from ..filters.wire import ProcessingRequest, ProcessingResponse
from ..routing.hold import CHECK_EVERY_S
from .rescue import RescueCallTask
from .shield import Shield
from .sidecar import Sidecar

log = logging.getLogger("rungway.server")

# The worker socket's permissions: its owner only, or its owner and group (a mesh's Envoy).
SOCKET_MODES = (0o600, 0o660)


class Processor(Protocol):
    def dispatch(self, request: ProcessingRequest) -> list[ProcessingResponse]: ...
    def on_rescue(self, item: RescueItem) -> list[ProcessingResponse]: ...
    def rescuing(self) -> bool: ...
    def deadline(self) -> float | None: ...
    def on_deadline(self) -> list[ProcessingResponse]: ...
    def on_close(self) -> None: ...
    def on_failure(self) -> None: ...
    def drain_effects(self) -> list[Effect]: ...


_PROCESSORS: dict[str, type[DecideProcessor] | type[AttemptProcessor]] = {
    "decide": DecideProcessor,
    "attempt": AttemptProcessor,
}


class ExternalProcessor(epg.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ProcessingResponse]:
        role, token = "", b""
        for key, value in context.invocation_metadata() or ():
            if key == FILTER_ROLE_KEY:
                role = value if isinstance(value, str) else value.decode()
            elif key == CHANNEL_TOKEN_KEY:
                token = value.encode() if isinstance(value, str) else value
        if not secrets.compare_digest(token, self._sidecar.channel_token.encode()):
            # Not our Envoy: nothing it sends is read, so it can learn no key.
            self._sidecar.metrics.channel_refused.inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown caller")
            return
        factory = _PROCESSORS.get(role)
        if factory is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown {FILTER_ROLE_KEY}: {role!r}")
            return
        sidecar = self._sidecar
        processor: Processor = factory(sidecar)
        clock = sidecar.clock
        requests = aiter(request_iterator)
        # A try's stream lives as long as the try: what decide's load shedding counts.
        is_try = factory is AttemptProcessor
        if is_try:
            sidecar.try_started()
        # With a deadline armed the read is awaited with a timeout; it is never cancelled (a
        # cancelled read would lose the message), so it stays pending across wake-ups.
        pending_read: asyncio.Future[ProcessingRequest] | None = None
        # A stream rescue's call (runtime/rescue.py) and its next item, read like Envoy's messages.
        rescue: RescueCallTask | None = None
        pending_item: asyncio.Future[RescueItem] | None = None

        def effects() -> Deferred | Escalated | TaskQueried | None:
            """Apply the processor's effects; return the one whose answer waits on I/O, if any."""
            nonlocal rescue, pending_item
            settle: Deferred | Escalated | TaskQueried | None = None
            for effect in (drained := processor.drain_effects()):
                if isinstance(effect, RescueRequested) and rescue is None:
                    rescue = RescueCallTask(effect.call, sidecar.rescue_socket)
                elif isinstance(effect, Deferred | Escalated | TaskQueried):
                    settle = effect
            sidecar.apply(drained)
            if rescue is not None and not processor.rescuing():
                # The client's stream is complete (or let go of): stop reading the rescue rung.
                rescue.cancel()
                rescue = None
                if pending_item is not None:
                    pending_item.cancel()
                    pending_item = None
            return settle

        try:
            while True:
                deadline = processor.deadline()
                if deadline is None and pending_read is None and rescue is None:
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        return
                else:
                    if pending_read is None:
                        pending_read = asyncio.ensure_future(anext(requests))
                    if rescue is not None and pending_item is None:
                        pending_item = asyncio.ensure_future(rescue.queue.get())
                    waiting = {pending_read} if pending_item is None else {pending_read, pending_item}
                    timeout = None if deadline is None else max(0.0, deadline - clock.now())
                    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if pending_item is not None and pending_item in done:
                        item, pending_item = pending_item.result(), None
                        if not isinstance(item, RescueChunk):
                            rescue = None  # its last item
                        answers = processor.on_rescue(item)
                        effects()
                        for answer in answers:
                            yield answer
                        continue
                    if not done:
                        answers = processor.on_deadline()
                        effects()
                        for answer in answers:
                            yield answer
                        continue
                    read, pending_read = pending_read, None
                    try:
                        request = read.result()
                    except StopAsyncIteration:
                        return
                answers = processor.dispatch(request)
                if (settle := effects()) is not None:
                    # The answer waits on the store: a deferral's 202 only once it is on disk.
                    answers = [*answers, await sidecar.settle(settle)]
                for answer in answers:
                    yield answer
        except asyncio.CancelledError:
            raise
        except Exception:
            # Envoy maps a failed stream to the filter's failure mode; the client never sees
            # a traceback, and the log line carries no request content.
            sidecar.metrics.sidecar_errors.labels(role).inc()
            log.exception("%s stream failed", role)
            processor.on_failure()  # our fault: nothing it saw so far may blame a provider
            await context.abort(grpc.StatusCode.INTERNAL, "rungway sidecar error")
        finally:
            if rescue is not None:
                rescue.cancel()
            if pending_item is not None:
                pending_item.cancel()
            if pending_read is not None:
                if pending_read.done():
                    # Retrieve it, so that asyncio does not log "exception was never retrieved"
                    # for the StopAsyncIteration (or error) of a stream that just ended.
                    if not pending_read.cancelled():
                        pending_read.exception()
                else:
                    pending_read.cancel()
            if is_try:
                sidecar.try_ended()
            processor.on_close()
            sidecar.apply(processor.drain_effects())


async def serve(
    sidecar: Sidecar,
    socket_path: Path,
    *,
    grace_s: float = 5.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    socket_mode: int = 0o600,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when `stop` is None); then drain in-flight
    streams for up to `grace_s`. `socket_mode` 0o660 lets the socket's group connect too: a mesh's
    Envoy (another user, e.g. Istio's istio-proxy) sharing the socket's directory and group."""
    if socket_mode not in SOCKET_MODES:
        raise ValueError(f"socket_mode must be one of {[oct(m) for m in SOCKET_MODES]}, but was {oct(socket_mode)}")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    epg.add_ExternalProcessorServicer_to_server(ExternalProcessor(sidecar), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await sidecar.bus.start()
    # A Unix socket, never a TCP port: in a 0700 directory and itself 0600, so only the
    # sidecar's user (Envoy runs as it) can connect at all (0660: and its group, see above).
    socket_path.unlink(missing_ok=True)
    if server.add_insecure_port(f"unix:{socket_path}") == 0:
        raise OSError(f"cannot bind the gRPC server to {socket_path}")
    await server.start()
    os.chmod(socket_path, socket_mode)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("ext_proc server listening on %s", socket_path)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    shield = _shield(sidecar)
    if shield is not None:
        await shield.start()
    watches = [asyncio.create_task(_watch_keys(sidecar))]
    if sidecar.handed is not None:
        watches.append(asyncio.create_task(_watch_policy(sidecar)))
    if sidecar.approvals_file is not None:
        watches.append(asyncio.create_task(_watch_approvals(sidecar)))
    await stop.wait()
    for watch in watches:
        watch.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    if shield is not None:
        await shield.stop()
    await sidecar.bus.stop()
    log.info("ext_proc server stopped")


def _shield(sidecar: Sidecar) -> Shield | None:
    """This worker's reset shield, when `rungway up` gave it one (and a rescue listener)."""
    if sidecar.shield_socket is None or sidecar.rescue_socket is None:
        return None
    resets = sidecar.metrics.stream_resets

    def on_reset(cluster: str, outcome: str) -> None:
        resets.labels(cluster.removeprefix(DIRECT_PREFIX), outcome).inc()

    return Shield(sidecar.shield_socket, sidecar.rescue_socket, on_reset)


async def _watch_policy(sidecar: Sidecar, every_s: float = 0.05) -> None:
    """Take the revisions `rungway up` hands over as soon as it writes them."""
    while True:
        await asyncio.sleep(every_s)
        sidecar.refresh_policy()


async def _watch_approvals(sidecar: Sidecar, every_s: float = CHECK_EVERY_S) -> None:
    """While a request is held for an approval, a new approval reaches it within every_s (held
    requests re-decide as often: routing/hold.py)."""
    while True:
        await asyncio.sleep(every_s)
        if sidecar.holding():
            try:
                sidecar.refresh_approvals()
            except Exception:  # a stat or read failure must never stop the worker serving
                log.exception("approvals check failed")


async def _watch_keys(sidecar: Sidecar, every_s: float = 1.0) -> None:
    """A new client key works, and a revoked one stops, within about a second."""
    while True:
        await asyncio.sleep(every_s)
        try:
            sidecar.every_second()
        except Exception:  # a stat or read failure must never stop the worker serving
            log.exception("key store check failed")
