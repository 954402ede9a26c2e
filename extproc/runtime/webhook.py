"""Signed webhooks Rungway sends to a tenant's URL (a deferred task's answer, a tier change):
one signature scheme and one delivery loop, retried with backoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time

import aiohttp

from ..deferral import retry_delay

SIGNATURE_HEADER = "x-rungway-signature"


def sign(secret: str, at: float, payload: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">`: the receiver recomputes it with
    the shared secret and rejects a stale `t` (a replayed delivery)."""
    t = str(int(at))
    digest = hmac.new(secret.encode(), t.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


async def deliver(
    url: str,
    payload: bytes,
    secret: str,
    *,
    attempts: int,
    rng: random.Random,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> bool:
    """POST `payload` (JSON) signed to `url` until a 2xx, at most `attempts` times; whether it
    was delivered. Each attempt is signed anew (the receiver checks `t` is fresh)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for attempt in range(1, attempts + 1):
            signed = {"content-type": "application/json", **(headers or {}),
                      SIGNATURE_HEADER: sign(secret, time.time(), payload)}  # fmt: skip
            try:
                async with session.post(url, data=payload, headers=signed) as r:
                    await r.read()
                    if 200 <= r.status < 300:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            if attempt < attempts:
                await asyncio.sleep(retry_delay(attempt, rng, base_s=0.5, cap_s=30))
    return False
