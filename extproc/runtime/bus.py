"""The health bus: every observation and state change is an event, delivered to every member.

Theory of operation. Each worker process keeps its own health board and feeds it every event it
receives, its own and other members'; the bus only delivers, it never decides. `publish()` hands
the event to local subscribers synchronously (so local state is current even with the server
down), then queues its JSON for remote delivery. One pump task per member sends the queue in
batches (one JSON list per frame: ≤ 256 events, or whatever a 50 ms linger collected), in publish
order, and one reader task delivers other members' frames to the subscribers, skipping the
member's own events (Redis echoes them back).

Losing the server degrades to local state, never to an outage: publish() never blocks or raises;
the member reconnects with jittered backoff (≤ 1 s) and keeps up to 10 000 unsent events
meanwhile, dropping the oldest. The backlog is sent after reconnecting, not discarded: whether an
observation is stale is the board's decision (events carry their own timestamps), and a circuit
that opened during a partition is exactly what the other members need to hear about. Pub/sub has
no replay, so after a *re*connect the pump waits `SETTLE_S` — longer than any member's reconnect
backoff — before sending, giving the other members time to resubscribe. Delivery is therefore
at-least-once across failures (a frame whose send failed midway is sent again) and exactly-once
otherwise.

Nobody else is believed. Every frame is sealed when it is sent (core/frame.py: HMAC-SHA256 with
the fleet's secret, a time, a nonce) and opened before anything is read from it; a frame that is
forged, stale, replayed, oversized or malformed changes nothing and is counted by reason
(`on_reject`, the snapshot's "rejected"). The pod's hub signs with a secret `rungway up` makes
for each run and lives on a 0600 socket in a private directory; a Redis bus signs with the fleet
secret and refuses to start without one unless the policy opts in to `insecure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import stat
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..core.frame import MAX_FRAME_BYTES, MAX_FRAME_EVENTS, FrameReader, FrameRules, Rejection, seal
from ..policy import BusSecurity, Credential, CredentialError, HealthSettings

Event = dict[str, Any]
Callback = Callable[[Event], None]
RejectCallback = Callable[[str], None]
Wall = Callable[[], float]

MAX_PENDING = 10_000  # unsent events kept while disconnected
BATCH_EVENTS = MAX_FRAME_EVENTS
BATCH_BYTES = 1 << 20
MAX_EVENT_BYTES = 64 << 10  # an event this big is a bug: dropped, so every frame fits MAX_FRAME_BYTES
FLUSH_INTERVAL_S = 0.05  # how long a lone event waits for company before it is sent
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 1.0
SETTLE_S = BACKOFF_CAP_S + 0.25
CONNECT_TIMEOUT_S = 1.0
STOP_FLUSH_S = 0.75  # stop() spends at most this flushing, the rest of its second closing
CLOSE_TIMEOUT_S = 0.25
LINE_LIMIT = MAX_FRAME_BYTES + 1  # longest hub line a reader accepts (a frame and its newline)
HUB_MEMBER_BUFFER = 16 << 20  # a member that lets this much pile up is disconnected
REDIS_PING_S = 1.0  # a quiet subscription is pinged this often...
REDIS_SILENCE_S = 3.0  # ...and given up after this long without a word (a hung server)
HELLO = b"[]\n"  # the hub's greeting: an empty batch, sent once the member is in the fan-out

# Where a fleet's signing secrets come from when the policy does not name a source.
SECRET_ENV = "RUNGWAY_BUS_SECRET"
SECRET_FILE_ENV = "RUNGWAY_BUS_SECRET_FILE"
PREVIOUS_SECRET_ENV = "RUNGWAY_BUS_SECRET_PREVIOUS"
PREVIOUS_SECRET_FILE_ENV = "RUNGWAY_BUS_SECRET_PREVIOUS_FILE"

log = logging.getLogger("rungway.bus")

# A prebuilt encoder keeps the C fast path (json.dumps with arguments builds one per call).
_encode = json.JSONEncoder(separators=(",", ":")).encode


class HealthBus(Protocol):
    # This member's id, stamped on its events as "origin".
    origin: str

    async def start(self) -> None:
        """Connect in the background; never raises because a server is down."""
        ...

    async def stop(self) -> None:
        """Flush what can be flushed (≤ 1 s in all), then close. Local delivery goes on."""
        ...

    def publish(self, event: Event) -> None:
        """Hand a copy of `event` plus "origin" (this member's id, replacing any the caller set)
        to local subscribers now, and queue it for the other members. Never blocks or raises."""
        ...

    def subscribe(self, callback: Callback) -> None:
        """`callback` gets this member's events synchronously and other members' events as they
        arrive, each once. Callbacks must not mutate the event: all subscribers share it."""
        ...

    def on_reject(self, callback: RejectCallback) -> None:
        """`callback(reason)` for every frame (or event) from elsewhere that was dropped unread:
        a Rejection's value (signature, stale, replayed, size, malformed)."""
        ...

    @property
    def connected(self) -> bool:
        """True while remote delivery works."""
        ...

    def snapshot(self) -> dict[str, Any]: ...


# ---- pure pieces ---------------------------------------------------------------------------


def _new_origin() -> str:
    return uuid.uuid4().hex[:16]


def _reconnect_delay(attempt: int, rng: random.Random) -> float:
    """Exponential from 50 ms, capped at 1 s, jittered into [½, 1] of that so members spread out."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** min(attempt, 16))
    return ceiling * (0.5 + 0.5 * rng.random())


class _Outbox:
    """Encoded events not yet sent, oldest first, at most `limit` of them (the oldest go first)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_pending must be at least 1, but was {limit}")
        self.limit = limit
        self.dropped = 0
        self._lines: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._lines)

    def push(self, line: str) -> None:
        if len(self._lines) >= self.limit:
            self._lines.popleft()
            self.dropped += 1
        self._lines.append(line)

    def take(self, max_events: int, max_bytes: int) -> list[str]:
        batch: list[str] = []
        size = 0
        while self._lines and len(batch) < max_events:
            # An event bigger than max_bytes still goes, alone.
            if batch and size + len(self._lines[0]) > max_bytes:
                break
            line = self._lines.popleft()
            batch.append(line)
            size += len(line) + 1
        return batch

    def requeue(self, batch: list[str]) -> None:
        """Put back a batch that could not be sent; it is older than anything queued since."""
        overflow = len(self._lines) + len(batch) - self.limit
        if overflow > 0:
            self.dropped += overflow
            batch = batch[overflow:]
        self._lines.extendleft(reversed(batch))


def _frame(batch: list[str]) -> bytes:
    return ("[" + ",".join(batch) + "]").encode()


def _redact(url: str) -> str:
    """The URL without its password (redis-py reads one from the userinfo or ?password=)."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
            parts = parts._replace(netloc=netloc)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in query):
            hidden = [(name, "***" if name.lower() == "password" else value) for name, value in query]
            parts = parts._replace(query=urlencode(hidden, safe="*/"))
        return urlunsplit(parts)
    except ValueError:  # an unparseable URL (a bad port): nothing of it is shown
        return "<unparseable URL>"


def _reason(exc: BaseException) -> str:
    # Class and errno text only: OSError's str() can carry a file path.
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class _Subscribers:
    """Synchronous fan-out to callbacks; a callback that raises is logged once and skipped over."""

    def __init__(self) -> None:
        self._callbacks: tuple[Callback, ...] = ()
        self._failed: set[int] = set()

    def add(self, callback: Callback) -> None:
        # A tuple, so a callback that subscribes another does not disturb the loop in deliver().
        self._callbacks = (*self._callbacks, callback)

    def deliver(self, event: Event) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception as exc:
                if id(callback) not in self._failed:
                    self._failed.add(id(callback))
                    name = getattr(callback, "__qualname__", type(callback).__name__)
                    log.error(
                        "health bus subscriber %s raised %s; its later failures are not logged", name, _reason(exc)
                    )


class _Rejections:
    """Frames dropped unread, by reason: counted, handed to callbacks, logged once per reason."""

    def __init__(self) -> None:
        self.counts = {reason.value: 0 for reason in Rejection}
        self._callbacks: tuple[RejectCallback, ...] = ()

    def add(self, callback: RejectCallback) -> None:
        self._callbacks = (*self._callbacks, callback)

    def note(self, reason: Rejection, where: str) -> None:
        self.counts[reason.value] += 1
        if self.counts[reason.value] == 1:
            log.warning("health bus dropped a frame from %s (%s); later ones are counted, not logged", where, reason)
        for callback in self._callbacks:
            try:
                callback(reason.value)
            except Exception as exc:
                log.debug("health bus rejection callback raised %s", _reason(exc))


def _nonce() -> str:
    return secrets.token_hex(8)


# ---- in-process ----------------------------------------------------------------------------


class InProcessBus:
    """Local subscribers only: one process, no server."""

    def __init__(self, *, origin: str | None = None) -> None:
        self.origin = origin or _new_origin()
        self._subscribers = _Subscribers()
        self._published = 0

    def __repr__(self) -> str:
        return f"<InProcessBus published={self._published}>"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        self._published += 1
        self._subscribers.deliver({**event, "origin": self.origin})

    def subscribe(self, callback: Callback) -> None:
        self._subscribers.add(callback)

    def on_reject(self, callback: RejectCallback) -> None:
        pass  # nothing arrives from elsewhere

    @property
    def connected(self) -> bool:
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "local", "connected": True, "published": self._published, "received": 0, "dropped": 0}


# ---- members of a shared bus ---------------------------------------------------------------


class _Link(Protocol):
    """One live connection to the server."""

    async def send(self, frame: bytes) -> None: ...

    async def receive(self, deliver: Callable[[bytes], None]) -> None:
        """Deliver frames until the connection fails (raises); never returns normally."""
        ...

    async def close(self) -> None: ...


class _Member:
    """What HubBus and RedisBus share: local delivery, the outbox, the pump, reconnects."""

    kind = ""
    server = ""  # for log lines

    def __init__(
        self, *, rules: FrameRules, origin: str | None, max_pending: int, rng: random.Random | None, wall: Wall
    ) -> None:
        self.origin = origin or _new_origin()
        self.rules = rules
        self._reader = FrameReader(rules)
        self._wall = wall
        self._rejections = _Rejections()
        self._failures = 0  # connection attempts (or connections) that failed
        self._last_error: str | None = None
        self._subscribers = _Subscribers()
        self._outbox = _Outbox(max_pending)
        self._rng = rng or random.Random()
        self._published = 0
        self._received = 0
        self._connected = False
        self._closed = False
        self._outage_since: float | None = None
        self._warned_encode = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the outbox is not empty
        self._full = asyncio.Event()  # a whole batch is waiting (or we are stopping)
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<{type(self).__name__} {state} pending={len(self._outbox)} dropped={self._outbox.dropped}>"

    async def _open(self) -> _Link:
        raise NotImplementedError

    def _where(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- the caller's side (sync, never raises) -----------------------------------------

    def publish(self, event: Event) -> None:
        stamped = {**event, "origin": self.origin}
        self._published += 1
        self._subscribers.deliver(stamped)
        if self._closed:
            return
        try:
            line = _encode(stamped)
            if len(line) > MAX_EVENT_BYTES:
                raise ValueError(f"an event of {len(line)} bytes")
        except (TypeError, ValueError) as exc:
            self._outbox.dropped += 1
            if not self._warned_encode:
                self._warned_encode = True
                log.error("health bus dropped an event it cannot send (%s); later ones are not logged", _reason(exc))
            return
        self._outbox.push(line)
        self._wake.set()
        if len(self._outbox) >= BATCH_EVENTS:
            self._full.set()

    def subscribe(self, callback: Callback) -> None:
        self._subscribers.add(callback)

    def on_reject(self, callback: RejectCallback) -> None:
        self._rejections.add(callback)

    @property
    def connected(self) -> bool:
        return self._connected

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "connected": self._connected,
            "published": self._published,
            "received": self._received,
            "dropped": self._outbox.dropped,
            "pending": len(self._outbox),
            "rejected": dict(self._rejections.counts),
            "signed_with": self.rules.key_ids(),  # ids only: which secrets this member accepts
            "connect_failures": self._failures,
            "last_error": self._last_error,
            **self._where(),
        }

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"health-bus-{self.kind}")

    async def stop(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        self._full.set()
        # The pump flushes and returns while connected; otherwise the loop exits at once.
        done, _ = await asyncio.wait({task}, timeout=STOP_FLUSH_S)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ---- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        ever_connected = False
        while not self._stopping.is_set():
            link: _Link | None = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    link = await self._open()
                self._connected = True
                if self._outage_since is not None:
                    log.info(
                        "health bus reconnected to %s after %.1f s; %d buffered events to send, %d dropped so far",
                        self.server,
                        loop.time() - self._outage_since,
                        len(self._outbox),
                        self._outbox.dropped,
                    )
                    self._outage_since = None
                # Connected on the very first try: nobody else can have been waiting on us.
                settle = ever_connected or attempt > 0
                ever_connected = True
                attempt = 0
                await self._serve(link, settle=settle)
            except Exception as exc:
                if not self._stopping.is_set():
                    self._failures += 1
                    self._last_error = _reason(exc)
                if self._outage_since is None and not self._stopping.is_set():
                    self._outage_since = loop.time()
                    log.warning(
                        "health bus lost %s (%s); keeping local state, buffering up to %d events",
                        self.server,
                        _reason(exc),
                        self._outbox.limit,
                    )
            finally:
                self._connected = False
                if link is not None:
                    await self._close_link(link)
            if not self._stopping.is_set():
                await _wait(self._stopping, _reconnect_delay(attempt, self._rng))
                attempt += 1

    async def _close_link(self, link: _Link) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.close()
        except Exception as exc:
            log.debug("health bus: closing the connection failed: %s", _reason(exc))

    async def _serve(self, link: _Link, *, settle: bool) -> None:
        """Pump and read until the link fails (raises) or stop() has been flushed (returns)."""
        reader = asyncio.create_task(link.receive(self._on_frame))
        pump = asyncio.create_task(self._pump(link, settle=settle))
        try:
            done, _ = await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            pump.cancel()
            await asyncio.gather(reader, pump, return_exceptions=True)
        if pump in done and not pump.cancelled() and pump.exception() is None:
            return
        failed = pump if pump in done else reader
        error = None if failed.cancelled() else failed.exception()
        raise error or ConnectionError("health bus connection closed")

    async def _pump(self, link: _Link, *, settle: bool) -> None:
        if settle:
            await _wait(self._stopping, SETTLE_S)
        while True:
            if not self._outbox:
                if self._stopping.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._outbox) < BATCH_EVENTS and not self._stopping.is_set():
                self._full.clear()
                await _wait(self._full, FLUSH_INTERVAL_S)
            batch = self._outbox.take(BATCH_EVENTS, BATCH_BYTES)
            try:
                # Sealed now, not when queued: a backlog sent after an outage is fresh (its
                # events carry their own times), and a resent batch gets a new nonce.
                await link.send(seal(_frame(batch), self.rules, self._wall(), _nonce()))
            except BaseException:
                self._outbox.requeue(batch)
                raise

    def _on_frame(self, frame: bytes) -> None:
        events = self._reader.read(frame, self._wall())
        if isinstance(events, Rejection):
            self._rejections.note(events, self.server)
            return
        for event in events:
            if event.get("origin") == self.origin:
                continue
            self._received += 1
            self._subscribers.deliver(event)


# ---- the pod-local hub -------------------------------------------------------------------


class _HubLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, frame: bytes) -> None:
        self._writer.write(frame + b"\n")
        await self._writer.drain()

    async def receive(self, deliver: Callable[[bytes], None]) -> None:
        while True:
            line = await self._reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("the health hub closed the connection")
            deliver(line[:-1])

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class HubBus(_Member):
    """A member of the pod-local HubServer: newline-delimited JSON batches over a Unix socket."""

    kind = "hub"
    server = "the pod's health hub"

    def __init__(
        self,
        path: Path,
        *,
        rules: FrameRules,
        origin: str | None = None,
        max_pending: int = MAX_PENDING,
        rng: random.Random | None = None,
        wall: Wall = time.time,
    ) -> None:
        super().__init__(rules=rules, origin=origin, max_pending=max_pending, rng=rng, wall=wall)
        self.path = Path(path)

    def _where(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    async def _open(self) -> _Link:
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=LINE_LIMIT)
        link = _HubLink(reader, writer)
        try:
            # Until the greeting, the hub may not fan out to us yet.
            if await reader.readline() != HELLO:
                raise ConnectionError("the health hub did not greet")
        except BaseException:
            await link.close()
            raise
        return link


class HubServer:
    """The pod-local fan-out, run by the supervisor: every member's batches go to every other
    member, and to the supervisor's own subscribers."""

    kind = "hub-server"

    def __init__(self, path: Path, *, rules: FrameRules, origin: str | None = None, wall: Wall = time.time) -> None:
        self.path = Path(path)
        self.origin = origin or _new_origin()
        self.rules = rules
        self._reader = FrameReader(rules)
        self._wall = wall
        self._rejections = _Rejections()
        self._subscribers = _Subscribers()
        self._server: asyncio.Server | None = None
        self._members: dict[asyncio.StreamWriter, None] = {}  # an ordered set
        self._handlers: set[asyncio.Task[Any]] = set()
        self._pending: list[str] = []
        self._flush_handle: asyncio.Handle | None = None
        self._published = 0
        self._received = 0
        self._dropped = 0

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<HubServer {state} members={len(self._members)}>"

    async def start(self) -> None:
        if self._server is None:
            # Only this user may connect: the socket is 0600 in a directory nobody else may enter
            # (bind() follows the umask, so the mode is set at once, before any member is told).
            mode = stat.S_IMODE(self.path.parent.stat().st_mode)
            if mode & 0o077:
                raise PermissionError(f"the health hub's directory must be private (0700), but was {mode:04o}")
            # Replaces a stale socket file left by a previous hub at this path.
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=LINE_LIMIT)
            os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._flush()  # what the supervisor published this turn still goes out
        for writer in list(self._members):
            writer.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=STOP_FLUSH_S)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def publish(self, event: Event) -> None:
        stamped = {**event, "origin": self.origin}
        self._published += 1
        self._subscribers.deliver(stamped)
        if self._server is None:
            return
        try:
            line = _encode(stamped)
            if len(line) > MAX_EVENT_BYTES:
                raise ValueError(f"an event of {len(line)} bytes")
            if self._flush_handle is None:
                # One frame per loop turn, however many events the supervisor published in it.
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        except (TypeError, ValueError, RuntimeError):  # not JSON, or called off the loop thread
            self._dropped += 1
            return
        self._pending.append(line)

    def subscribe(self, callback: Callback) -> None:
        self._subscribers.add(callback)

    def on_reject(self, callback: RejectCallback) -> None:
        self._rejections.add(callback)

    @property
    def connected(self) -> bool:
        return self._server is not None

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "connected": self._server is not None,
            "published": self._published,
            "received": self._received,
            "dropped": self._dropped,
            "members": len(self._members),
            "rejected": dict(self._rejections.counts),
            "signed_with": self.rules.key_ids(),
            "path": str(self.path),
        }

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), BATCH_EVENTS):
            frame = seal(_frame(pending[start : start + BATCH_EVENTS]), self.rules, self._wall(), _nonce())
            self._fan_out(frame + b"\n", sender=None)

    def _fan_out(self, line: bytes, sender: asyncio.StreamWriter | None) -> None:
        for writer in list(self._members):
            if writer is sender or writer.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > HUB_MEMBER_BUFFER:
                # A member that stopped reading must not grow the supervisor without bound;
                # it reconnects and resends its own backlog.
                log.warning("health hub disconnected a member that stopped reading")
                self._members.pop(writer, None)
                writer.close()
                continue
            writer.write(line)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._members[writer] = None
        try:
            writer.write(HELLO)
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than any frame: the member is broken or hostile
                    self._rejections.note(Rejection.SIZE, "a hub member")
                    break
                if not line.endswith(b"\n"):
                    break  # gone, or died mid-line: the member resends that batch
                events = self._reader.read(line[:-1], self._wall())
                if isinstance(events, Rejection):
                    self._rejections.note(events, "a hub member")
                    continue
                # Passed on as sealed: each member verifies it again.
                self._fan_out(line, sender=writer)
                for event in events:
                    if event.get("origin") != self.origin:
                        self._received += 1
                        self._subscribers.deliver(event)
        except OSError:
            pass  # a member that breaks the connection is simply dropped
        finally:
            self._members.pop(writer, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)


# ---- Redis -------------------------------------------------------------------------------


class _RedisLink:
    def __init__(self, client: aioredis.Redis, pubsub: PubSub, channel: str) -> None:
        self._client = client
        self._pubsub = pubsub
        self._channel = channel

    async def send(self, frame: bytes) -> None:
        await self._client.publish(self._channel, frame)

    async def receive(self, deliver: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await self._pubsub.get_message(timeout=REDIS_PING_S)
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    deliver(message["data"])
                continue
            # A hung server keeps the socket open: only silence gives it away.
            if now - heard >= REDIS_SILENCE_S:
                raise TimeoutError("redis stopped answering")
            await self._pubsub.ping()

    async def close(self) -> None:
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub untyped
        finally:
            await self._client.aclose()


class RedisBus(_Member):
    """A member of a fleet-wide bus: one Redis pub/sub channel, one PUBLISH per batch."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        channel: str = "rungway:health",
        *,
        rules: FrameRules,
        password: str | None = None,
        origin: str | None = None,
        max_pending: int = MAX_PENDING,
        rng: random.Random | None = None,
        wall: Wall = time.time,
    ) -> None:
        if urlsplit(url).scheme not in ("redis", "rediss"):
            raise ValueError(f"health bus URL must be redis:// or rediss://, but was {_redact(url)!r}")
        try:
            parse_url(url)  # a malformed URL fails here, not in a reconnect loop
        except ValueError:
            raise ValueError(f"health bus URL cannot be read: {_redact(url)!r}") from None
        super().__init__(rules=rules, origin=origin, max_pending=max_pending, rng=rng, wall=wall)
        self.url = url
        self.channel = channel
        self._password = password  # when not in the URL (redis-py lets the URL's win)
        self.server = f"redis at {_redact(url)}"

    def _where(self) -> dict[str, Any]:
        return {"url": _redact(self.url), "channel": self.channel}

    async def _open(self) -> _Link:
        # Reconnects are ours (with backoff and the outage log); redis-py must fail fast.
        client = aioredis.Redis.from_url(
            self.url,
            password=self._password,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
        )
        pubsub = client.pubsub()
        link = _RedisLink(client, pubsub, self.channel)
        try:
            await pubsub.subscribe(self.channel)
            # Connected means subscribed: wait for the confirmation, then check the publishing side.
            while True:
                message = await pubsub.get_message(timeout=CONNECT_TIMEOUT_S)
                if message is None:
                    raise TimeoutError("redis did not confirm the subscription")
                if message["type"] == "subscribe":
                    break
            await client.ping()
        except BaseException:
            await link.close()
            raise
        return link


class BusConfigError(RuntimeError):
    """The bus cannot start as configured (a missing or unreadable secret); names sources, never values."""


def _secret(source: Credential | None, env: str, file_env: str, environ: Mapping[str, str], what: str) -> str | None:
    if source is None:
        if environ.get(env, "").strip():
            return environ[env].strip()
        if not environ.get(file_env):
            return None
        source = Credential(file=Path(environ[file_env]))
    try:
        return source.resolve().get_secret_value()
    except CredentialError as exc:
        raise BusConfigError(f"the health bus {what} cannot be read: {exc}") from None


def fleet_rules(security: BusSecurity, environ: Mapping[str, str] = os.environ) -> FrameRules:
    """How a fleet bus signs and verifies, from the policy and the environment. Refuses an
    unsigned fleet bus unless the policy asks for one."""
    current = _secret(security.secret, SECRET_ENV, SECRET_FILE_ENV, environ, "secret")
    previous = _secret(
        security.previous_secret, PREVIOUS_SECRET_ENV, PREVIOUS_SECRET_FILE_ENV, environ, "previous secret"
    )
    if current is None:
        if previous is not None:
            raise BusConfigError("a previous health bus secret is set, but no current one")
        if not security.insecure:
            raise BusConfigError(
                f"a Redis health bus must be signed: set {SECRET_ENV}, or {SECRET_FILE_ENV} (--bus-secret-file), "
                "or health.bus_security.secret; or set health.bus_security.insecure: true to run it unsigned"
            )
        log.warning("the Redis health bus is UNSIGNED (bus_security.insecure): anyone who can publish is believed")
        return FrameRules.unsigned(max_age_s=security.max_age_s)
    try:
        return FrameRules.signed(current, previous, max_age_s=security.max_age_s)
    except ValueError as exc:
        raise BusConfigError(f"health bus: {exc}") from None


def fleet_bus(health: HealthSettings, environ: Mapping[str, str] = os.environ, origin: str | None = None) -> RedisBus:
    """The Redis member for a policy whose bus is a redis(s):// URL."""
    assert health.bus is not None
    security = health.bus_security
    password = None
    if security.password is not None:
        try:
            password = security.password.resolve().get_secret_value()
        except CredentialError as exc:
            raise BusConfigError(f"the health bus password cannot be read: {exc}") from None
    return RedisBus(health.bus, rules=fleet_rules(security, environ), password=password, origin=origin)


def bus_from_settings(
    health: HealthSettings,
    *,
    hub_path: Path | None = None,
    hub_secret: str | None = None,
    environ: Mapping[str, str] = os.environ,
    origin: str | None = None,
) -> HealthBus:
    """A worker's bus. No bus or "local": the pod's hub when there is one (signed with the secret
    `rungway up` made for it), else in-process; redis(s)://…: the fleet's Redis."""
    url = health.bus
    if url is None or url == "local":
        if hub_path is None:
            return InProcessBus(origin=origin)
        if hub_secret is None:
            raise BusConfigError("the pod's health hub was given without its secret")
        return HubBus(hub_path, rules=FrameRules.signed(hub_secret), origin=origin)
    if urlsplit(url).scheme in ("redis", "rediss"):
        return fleet_bus(health, environ, origin)
    raise ValueError(f"health bus must be 'local' or a redis:// or rediss:// URL, but was {_redact(url)!r}")
