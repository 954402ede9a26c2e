"""The fleet health bus through real Envoy, attacked: someone who can publish to the Redis
channel but does not hold the fleet secret cannot take a rung out, open a circuit or inflate
the retry budget; a fleet member who holds it still can."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from extproc.core import FrameRules, seal
from tests.conftest import KEY_ENV, Fleet
from tests.e2e.test_health import ask, endpoint, health_policy, status
from tests.stack import RedisServer, Stack, running

pytestmark = pytest.mark.e2e
SECRET = "e2e-fleet-secret-0123456789abcdef"
REDIS_PASSWORD = "e2e-redis-acl-password"
CHANNEL = "rungway:health"
PRIMARY = "primary/gpt-4o"
ENV = {**KEY_ENV, "RUNGWAY_BUS_SECRET": SECRET, "RW_TEST_REDIS_PASSWORD": REDIS_PASSWORD}


@pytest.fixture
def fresh(fleet: Fleet) -> Iterator[Fleet]:
    fleet.reset()
    yield fleet
    fleet.reset()


@pytest.fixture
def acl_redis() -> Iterator[RedisServer]:
    """Redis with ACLs: only the user `rungway`, with a password (the attacker has it too: the
    fleet secret, not the Redis password, is what a member must hold to be believed)."""
    server = RedisServer(
        "--user", "default", "off", "--user", "rungway", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"
    )
    server.start()
    yield server
    server.stop()


def fleet_policy(fresh: Fleet, tmp_path: Path, server: RedisServer) -> dict[str, Any]:
    # The password from the environment, the ACL user in the URL.
    security = {"password": {"env": "RW_TEST_REDIS_PASSWORD"}}
    return health_policy(fresh, tmp_path, bus=f"redis://rungway@127.0.0.1:{server.port}/0", bus_security=security)


def attacker(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username="rungway", password=REDIS_PASSWORD)


def hostile_events(now: float) -> list[dict[str, Any]]:
    """A day's quota block, an open circuit and a retry budget inflated a million-fold."""
    return [
        {"v": 1, "k": "quota", "key": PRIMARY, "until": now + 86_400, "origin": "attacker"},
        {"v": 1, "k": "abandon", "key": PRIMARY, "at": now, "score": 0.0, "reason": "server_error", "origin": "x"},
        {"v": 1, "k": "req", "at": now, "count": 1_000_000, "origin": "attacker"},
    ]


def body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events).encode()


def rejected(stack: Stack) -> dict[str, float]:
    """rungway_bus_events_rejected_total by reason, summed over the workers."""
    out: dict[str, float] = {}
    for line in stack.metrics().splitlines():
        if line.startswith("rungway_bus_events_rejected_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def served_by_primary(stack: Stack) -> None:
    for _ in range(3):
        raw = ask(stack)
        assert raw.headers["x-rungway-served-by"] == PRIMARY
        assert raw.headers["x-rungway-attempts"] == "1"
    row = endpoint(stack, PRIMARY)
    assert row["quota_until"] is None and row["circuit"]["state"] == "closed", row


def captured_frame(server: RedisServer, stack: Stack) -> bytes:
    """A genuine frame the fleet sent, as an eavesdropper on the channel records it."""
    pubsub = attacker(server).pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub untyped
    pubsub.subscribe(CHANNEL)
    try:
        ask(stack)  # the worker publishes what it observed
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message" and b'"k":"obs"' in message["data"]:
                frame: bytes = message["data"]
                return frame
        raise AssertionError("no frame of the fleet's was heard on the channel")
    finally:
        pubsub.close()


def test_forged_stale_and_replayed_frames_leave_routing_unchanged_and_a_members_signed_event_moves_it(
    fresh: Fleet, tmp_path: Path, acl_redis: RedisServer
) -> None:
    with running(fleet_policy(fresh, tmp_path, acl_redis), workers=2, env=ENV) as stack:
        bus = status(stack)["bus"]
        assert (bus["kind"], bus["connected"], bus["connect_failures"]) == ("redis", True, 0)
        assert REDIS_PASSWORD not in json.dumps(status(stack)) and SECRET not in json.dumps(status(stack))
        served_by_primary(stack)
        replay = captured_frame(acl_redis, stack)
        now = time.time()
        wrong_key = FrameRules.signed("an-attackers-guess-0123456789")
        with attacker(acl_redis) as client:
            client.publish(CHANNEL, body(hostile_events(now)))  # no signature at all
            client.publish(CHANNEL, seal(body(hostile_events(now)), wrong_key, now, secrets.token_hex(8)))
            # A genuine frame the fleet signed, a minute ago (say, a real quota block that ended).
            old = seal(body(hostile_events(now - 60)), FrameRules.signed(SECRET), now - 60, secrets.token_hex(8))
            client.publish(CHANNEL, old)
            client.publish(CHANNEL, replay)  # recorded a moment ago, sent again
            client.publish(CHANNEL, b"[" * 200_000)  # a parser's stack (unsigned, so never parsed)
            client.publish(CHANNEL, b"RW1 " + b"\x00" * (3 << 20))  # 3 MiB
        # Two workers and the supervisor each refuse each frame; the workers count it.
        deadline = time.monotonic() + 5
        while rejected(stack) != {"signature": 6.0, "stale": 2.0, "replayed": 2.0, "size": 2.0} and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert rejected(stack) == {"signature": 6.0, "stale": 2.0, "replayed": 2.0, "size": 2.0}
        assert status(stack)["bus"]["rejected"] == {
            "signature": 3,
            "stale": 1,
            "replayed": 1,
            "size": 1,
            "malformed": 0,
        }
        served_by_primary(stack)  # nothing moved; every worker still serves
        assert status(stack)["bus"]["connected"] is True

        # A second member of the fleet, holding the secret, says the primary's quota is spent.
        member = FrameRules.signed(SECRET)
        signal = [{"v": 1, "k": "quota", "key": PRIMARY, "until": time.time() + 60, "origin": "another-pod"}]
        with attacker(acl_redis) as client:
            client.publish(CHANNEL, seal(body(signal), member, time.time(), secrets.token_hex(8)))
        assert endpoint(stack, PRIMARY, until=lambda row: row["quota_until"] is not None)["quota_until"] is not None
        for _ in range(4):  # each worker has heard it
            raw = ask(stack)
            assert raw.headers["x-rungway-served-by"] == "secondary/claude-fallback"
            assert raw.headers["x-rungway-reason"] == "rate_limited"


def test_the_previous_secret_is_still_believed_while_a_fleet_rotates(
    fresh: Fleet, tmp_path: Path, acl_redis: RedisServer
) -> None:
    env = {**ENV, "RUNGWAY_BUS_SECRET": "the-new-fleet-secret-0123456789", "RUNGWAY_BUS_SECRET_PREVIOUS": SECRET}
    with running(fleet_policy(fresh, tmp_path, acl_redis), env=env) as stack:
        served_by_primary(stack)
        signal = [{"v": 1, "k": "quota", "key": PRIMARY, "until": time.time() + 60, "origin": "not-yet-rotated"}]
        with attacker(acl_redis) as client:  # a member still on the old secret
            client.publish(CHANNEL, seal(body(signal), FrameRules.signed(SECRET), time.time(), secrets.token_hex(8)))
        endpoint(stack, PRIMARY, until=lambda row: row["quota_until"] is not None)
        assert ask(stack).headers["x-rungway-served-by"] == "secondary/claude-fallback"


def test_a_redis_bus_without_a_fleet_secret_refuses_to_start(
    fresh: Fleet, tmp_path: Path, acl_redis: RedisServer
) -> None:
    env = {**ENV, "RUNGWAY_BUS_SECRET": ""}
    with pytest.raises(RuntimeError, match="a Redis health bus must be signed: set RUNGWAY_BUS_SECRET"):
        Stack(fleet_policy(fresh, tmp_path, acl_redis), env=env)


def test_a_wrong_redis_password_keeps_serving_on_local_state_and_shows_why(
    fresh: Fleet, tmp_path: Path, acl_redis: RedisServer
) -> None:
    with running(fleet_policy(fresh, tmp_path, acl_redis), env={**ENV, "RW_TEST_REDIS_PASSWORD": "wrong"}) as stack:
        for _ in range(3):  # the supervisor's replica hears nothing without the bus: answers only
            assert ask(stack).headers["x-rungway-served-by"] == PRIMARY
        bus = status(stack)["bus"]
        assert bus["connected"] is False and bus["last_error"] == "AuthenticationError", bus
        assert bus["url"] == f"redis://rungway@127.0.0.1:{acl_redis.port}/0"
