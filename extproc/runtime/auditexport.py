"""The audit trail shipped to the fleet: each pod's chains copied, line for line, into one
shared Redis stream (fleet mode: the health bus's Redis, `audit.export: bus`).

`rungway up` runs one exporter per pod, off every worker: it reads the chains' files and appends
the records not yet shipped, each as its unchanged canonical line with the pod and the chain, so
whoever reads the stream can verify each (pod, chain) again (`audit.verify` over the lines).
Where each chain stands is kept in Redis itself (a hash: `<pod>/<chain>` → last seq shipped),
written in the same MULTI as the records: a restart neither skips nor repeats a record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..audit import Line, lines_of
from ..audit.verify import Verdict, verify
from .auditlog import chain_lines, segments

log = logging.getLogger("rungway.audit")

STREAM = "rungway:audit"
POSITIONS = "rungway:audit:exported"
_BATCH = 500


def unshipped(directory: Path, positions: Mapping[str, int], pod: str) -> dict[str, list[tuple[int, bytes]]]:
    """Each chain's whole records after the seq last shipped, as (seq, line)."""
    from ..audit import Record, RecordError

    out: dict[str, list[tuple[int, bytes]]] = {}
    for chain, files in segments(directory).items():
        after = positions.get(f"{pod}/{chain}", -1)
        fresh: list[tuple[int, bytes]] = []
        for line in chain_lines(files):
            if not line.complete:
                break  # being written (or torn): the next round
            try:
                seq = Record.parse(line.data).seq
            except RecordError:
                continue  # shipped as it is would not verify either; `rungway audit verify` names it
            if seq > after:
                fresh.append((seq, line.data))
        if fresh:
            out[chain] = fresh
    return out


async def export_once(client: Any, directory: Path, pod: str) -> int:
    """Ship what is new; the number of records shipped. `client`: a redis.asyncio.Redis."""
    raw = await client.hgetall(POSITIONS)
    positions = {k.decode(): int(v) for k, v in raw.items()}
    shipped = 0
    for chain, records in unshipped(directory, positions, pod).items():
        for start in range(0, len(records), _BATCH):
            batch = records[start : start + _BATCH]
            async with client.pipeline(transaction=True) as pipe:
                for seq, line in batch:
                    pipe.xadd(STREAM, {"pod": pod, "chain": chain, "seq": seq, "line": line})
                pipe.hset(POSITIONS, f"{pod}/{chain}", batch[-1][0])
                await pipe.execute()
            shipped += len(batch)
    return shipped


async def read_stream(client: Any) -> dict[str, list[Line]]:
    """Every (pod/chain)'s lines from the stream, in the order they were shipped."""
    grouped: dict[str, list[bytes]] = {}
    for _, fields in await client.xrange(STREAM):
        key = f"{fields[b'pod'].decode()}/{fields[b'chain'].decode()}"
        grouped.setdefault(key, []).append(fields[b"line"])
    return {key: lines_of([(f"{STREAM}[{key}]", b"".join(lines))]) for key, lines in grouped.items()}


async def verify_stream(client: Any) -> dict[str, Verdict]:
    return {key: verify(lines) for key, lines in (await read_stream(client)).items()}
