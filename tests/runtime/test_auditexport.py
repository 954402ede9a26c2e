"""Fleet mode: each pod's chains shipped line for line into one Redis stream (a real
redis-server), never a record skipped or repeated across rounds and restarts, and every
(pod, chain) in the stream verifies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from extproc.audit import Broken, Entry, Intact, Kind, Tampering
from extproc.policy import AuditSettings
from extproc.runtime.auditexport import STREAM, export_once, verify_stream
from extproc.runtime.auditlog import AuditLog
from tests.stack import RedisServer


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    server = RedisServer()
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


def write(directory: Path, chain: str, first: int, n: int) -> None:
    log = AuditLog(directory, chain, AuditSettings(fsync_interval_s=0.01)).open()
    for i in range(first, first + n):
        log.submit(Entry(float(i), Kind.HOP, tenant="acme", trigger="server_error", request_id=f"r{i}"))
    log.close()


async def test_each_pods_chains_are_shipped_once_and_verify_from_the_stream(redis_client: Any, tmp_path: Path) -> None:
    write(tmp_path / "a", "w0", 0, 7)
    write(tmp_path / "a", "w1", 0, 3)
    write(tmp_path / "b", "w0", 0, 4)
    assert await export_once(redis_client, tmp_path / "a", "pod-a") == 10
    assert await export_once(redis_client, tmp_path / "b", "pod-b") == 4
    assert await export_once(redis_client, tmp_path / "a", "pod-a") == 0  # nothing twice
    write(tmp_path / "a", "w0", 7, 5)  # the worker restarted and went on
    assert await export_once(redis_client, tmp_path / "a", "pod-a") == 5
    verdicts = await verify_stream(redis_client)
    assert {key: (v.records if isinstance(v, Intact) else v) for key, v in verdicts.items()} == {
        "pod-a/w0": 12,
        "pod-a/w1": 3,
        "pod-b/w0": 4,
    }


async def test_a_record_removed_from_the_stream_shows(redis_client: Any, tmp_path: Path) -> None:
    write(tmp_path, "w0", 0, 5)
    await export_once(redis_client, tmp_path, "pod-a")
    entries = await redis_client.xrange(STREAM)
    await redis_client.xdel(STREAM, entries[2][0])
    verdict = (await verify_stream(redis_client))["pod-a/w0"]
    assert isinstance(verdict, Broken) and verdict.tampering is Tampering.DELETED
