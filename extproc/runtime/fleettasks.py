"""The deferral queue shared by a fleet: the `TaskStore` contract on Redis, so a task accepted
by any pod is answered at any pod's status URL and replayed by any pod's drainer.

Theory of operation. Each task is a hash (`task:<id>`: its record and body, its state, lease,
backoff and, once answered, its result), and its tenant's stream (`q:<tenant>`) carries one
entry naming it. The stream is read through one consumer group (`drainers`) whose consumers
are the pods' drainers: `replayable` reads again the entries this drainer holds (which keeps
them its own), takes over with XAUTOCLAIM the entries of a drainer silent for `takeover_s` (a
pod that died, or one too busy replaying to read: min-idle-time), and only then has new ones
delivered, a few per tenant (per-tenant streams: one tenant's backlog never hides another's
tasks). The hash is the truth:
`claim`, `retry` and `finish` are compare-and-set transactions (WATCH / MULTI) that check the
task's state against deferral's transition table with the caller's clock, exactly as the
SQLite store does, so of two pods holding the same entry (a takeover of a pod that was only
slow) one claim wins per lease and the first answer wins for good. A finished or expired task
leaves its stream and every drainer's pending list (XACK + XDEL in the same MULTI) and its hash
expires `result_ttl_s` later.

`accept` is one Lua script: the id already known (idempotent), the tenant's pending count
against its capacity, the hash, the stream entry and the indexes, all or nothing. The worker
answers 202 only after Redis replied: with `appendonly yes` and `appendfsync always` that reply
means the write is on Redis's disk. Calls block: the asyncio shells run them in a thread.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core import DeferredTask, TaskResult
from ..deferral import Candidate, Swept, TaskState, TaskView, is_due, transition
from ..deferral.queue import PENDING
from ..policy import Deferral
from .tasks import SqliteTaskStore, TaskStore

PREFIX = "rungway:{tasks}"  # one hash tag: every key in one slot, should the Redis be a cluster
GROUP = "drainers"
# Entries a drainer holds per tenant, as a multiple of the tasks it replays per tenant per pass:
# room for tasks waiting out a backoff without stopping the tenant's next ones.
_HELD = 4
_TIDY_EVERY_S = 60.0  # forgetting consumers of pods long gone: housekeeping, not correctness
# The longest a call waits for Redis's reply, whatever the caller would allow SQLite's write lock:
# a healthy Redis answers in milliseconds, and `rungway up` reads the queue's depth for /metrics
# on its event loop.
_REPLY_WAIT_S = 2.0
# A drainer silent this many passes (at least the floor, at most a lease) holds its entries no
# more: a dead pod's waiting tasks move on within seconds, not after a whole `lease_s`.
_TAKEOVER_PASSES = 20
_TAKEOVER_FLOOR_S = 10.0

_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return 0 end
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[5], ARGV[8], '0', 'MKSTREAM')
end
redis.call('SADD', KEYS[4], ARGV[2])
local entry = redis.call('XADD', KEYS[5], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'tenant', ARGV[2], 'state', ARGV[7], 'accepted_at', ARGV[3], 'attempts', 0,
  'lease_until', 0, 'not_before', 0, 'ended_at', 0, 'record', ARGV[4], 'body', ARGV[5], 'entry', entry)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""

# Consumers with nothing pending, silent for longer than a takeover, are pods long gone. Checked
# and deleted in one script: a consumer deleted with entries pending would strand them.
_TIDY = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local gone = 0
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone = gone + 1
  end
end
return gone
"""


class RedisTaskStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        takeover_s: float = 10.0,
        result_ttl_s: float = 3600.0,
        consumer: str | None = None,
        prefix: str = PREFIX,
    ) -> None:
        """`client`: bytes in and out (no decode_responses). `takeover_s`: how long a drainer
        may stay silent before another takes over the entries it holds (a task being replayed
        stays the replaying drainer's until its own lease lapses: the hash says so).
        `consumer`: this drainer's name in the group (unique per process: a restarted pod's
        old name is taken over)."""
        # redis-py types every reply as str | bytes | ...: this client answers bytes only.
        self._r: Any = client
        self._takeover_ms = max(1, int(takeover_s * 1000))
        self._result_ttl = max(1, int(result_ttl_s))
        self._me = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._p = prefix
        self._accept = client.register_script(_ACCEPT)
        self._tidy = client.register_script(_TIDY)
        self._tidied_at = float("-inf")

    @classmethod
    def connect(cls, url: str, *, password: str | None = None, timeout_s: float = 5.0, **kwargs: Any) -> RedisTaskStore:
        """A store on a fresh client. No retries inside redis-py: a call that fails fails at
        once (the worker answers 503, the drainer tries on its next pass)."""
        client = redis.Redis.from_url(
            url,
            password=password,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
        )
        return cls(client, **kwargs)

    def close(self) -> None:
        self._r.close()

    # ---- keys --------------------------------------------------------------------------------

    def _task(self, task_id: str) -> str:
        return f"{self._p}:task:{task_id}"

    def _queue(self, tenant: str) -> str:
        return f"{self._p}:q:{tenant}"

    def _pending(self, tenant: str | None = None) -> str:
        return f"{self._p}:pending" if tenant is None else f"{self._p}:pending:{tenant}"

    # ---- commands ----------------------------------------------------------------------------

    def accept(self, task: DeferredTask, capacity: int) -> bool:
        keys = [
            self._task(task.id),
            self._pending(),
            self._pending(task.tenant),
            f"{self._p}:tenants",
            self._queue(task.tenant),
        ]
        args: list[str | bytes | int] = [task.id, task.tenant, repr(task.accepted_at), task.encode(), task.body]
        return bool(self._accept(keys, [*args, capacity, TaskState.QUEUED.value, GROUP]))

    def claim(self, task_id: str, now: float, lease_s: float) -> DeferredTask | None:
        key = self._task(task_id)

        def cas(pipe: Any) -> DeferredTask | None:
            state, not_before, lease_until, record, body = pipe.hmget(
                key, "state", "not_before", "lease_until", "record", "body"
            )
            if state is None or not is_due(TaskState(state.decode()), float(not_before), float(lease_until), now):
                return None
            target = transition(TaskState(state.decode()), TaskState.RUNNING)
            pipe.multi()
            pipe.hset(key, mapping={"state": target.value, "lease_until": repr(now + lease_s)})
            pipe.hincrby(key, "attempts", 1)
            return DeferredTask.decode(record.decode(), body)

        found: DeferredTask | None = self._r.transaction(cas, key, value_from_callable=True)
        return found

    def retry(self, task_id: str, not_before: float) -> None:
        key = self._task(task_id)

        def cas(pipe: Any) -> None:
            state = pipe.hget(key, "state")
            if state is not None and TaskState(state.decode()) is TaskState.RUNNING:
                target = transition(TaskState.RUNNING, TaskState.QUEUED)
                pipe.multi()
                pipe.hset(key, mapping={"state": target.value, "not_before": repr(not_before)})

        self._r.transaction(cas, key)

    def finish(self, task_id: str, result: TaskResult) -> bool:
        fields = {"result": result.encode(), "result_body": result.body}
        return self._end(task_id, TaskState.DONE, result.finished_at, fields)

    def _end(self, task_id: str, target: TaskState, at: float, fields: dict[str, Any]) -> bool:
        """A pending task DONE or EXPIRED: out of the queue, its body gone, kept `result_ttl_s`.
        False when it is not pending (answered already, expired, unknown)."""
        key = self._task(task_id)

        def cas(pipe: Any) -> bool:
            state, tenant, entry = pipe.hmget(key, "state", "tenant", "entry")
            if state is None or TaskState(state.decode()) not in PENDING:
                return False
            transition(TaskState(state.decode()), target)
            pipe.multi()
            pipe.hset(key, mapping={"state": target.value, "ended_at": repr(at), "body": b"", **fields})
            pipe.expire(key, self._result_ttl)
            pipe.zrem(self._pending(), task_id)
            pipe.zrem(self._pending(tenant.decode()), task_id)
            pipe.zadd(f"{self._p}:ended", {task_id: at})
            pipe.xack(self._queue(tenant.decode()), GROUP, entry)
            pipe.xdel(self._queue(tenant.decode()), entry)
            return True

        first: bool = self._r.transaction(cas, key, value_from_callable=True)
        return first

    def sweep(self, now: float, task_ttl_s: float, result_ttl_s: float) -> Swept:
        expired: list[str] = []
        for raw in self._r.zrangebyscore(self._pending(), "-inf", repr(now - task_ttl_s)):
            task_id = raw.decode()
            tenant = self._r.hget(self._task(task_id), "tenant")
            if tenant is not None and self._end(task_id, TaskState.EXPIRED, now, {}):
                expired.append(tenant.decode())
        ended = f"{self._p}:ended"
        gone = [raw.decode() for raw in self._r.zrangebyscore(ended, "-inf", repr(now - result_ttl_s))]
        dropped = 0
        if gone:
            with self._r.pipeline(transaction=True) as pipe:
                for task_id in gone:
                    pipe.delete(self._task(task_id))
                pipe.zrem(ended, *gone)
                dropped = sum(pipe.execute()[:-1])
        if now - self._tidied_at >= _TIDY_EVERY_S:
            self._tidied_at = now
            for tenant in self._tenants():
                self._tidy([self._queue(tenant)], [GROUP, self._takeover_ms, self._me])
        return Swept(tuple(expired), dropped)

    # ---- queries -----------------------------------------------------------------------------

    def pending(self, tenant: str) -> int:
        return int(self._r.zcard(self._pending(tenant)))

    def replayable(self, now: float, per_tenant: int) -> list[Candidate]:
        """Due tasks, at most `per_tenant` of each tenant (its oldest), oldest first: of the
        entries this drainer holds or takes over, then of new ones. Reading them is what keeps
        them this drainer's (a query of the tasks, a command of the consumer group)."""
        tenants = self._tenants()
        held = per_tenant * _HELD
        with self._r.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.xreadgroup(GROUP, self._me, {self._queue(tenant): "0"}, count=held)
                pipe.xautoclaim(self._queue(tenant), GROUP, self._me, self._takeover_ms, "0-0", count=per_tenant)
            try:
                replies = pipe.execute()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._regroup(tenants)  # a tenant's stream deleted by hand: made again, read next pass
                return []
        mine: dict[str, dict[bytes, bytes]] = {}  # tenant -> entry id -> task id
        for i, tenant in enumerate(tenants):
            history, (_, taken, *_) = replies[2 * i], replies[2 * i + 1]
            entries = mine.setdefault(tenant, {})
            for entry, fields in [*_entries(history), *taken]:
                if fields:  # an entry deleted since it was delivered has no fields
                    entries[entry] = fields[b"id"]
        due = self._due(now, mine)
        # New entries until each tenant has `per_tenant` due, its stream has no more, or this
        # drainer holds as many as it may (entries of tasks waiting out a backoff count).
        hungry = {tenant for tenant in tenants if len(mine[tenant]) < held}
        while hungry:
            wants = {t: min(held - len(mine[t]), per_tenant - len(due.get(t, []))) for t in hungry}
            asked = [t for t in sorted(hungry) if wants[t] > 0]
            with self._r.pipeline(transaction=False) as pipe:
                for tenant in asked:
                    pipe.xreadgroup(GROUP, self._me, {self._queue(tenant): ">"}, count=wants[tenant])
                replies = pipe.execute()
            fresh = {
                t: {entry: fields[b"id"] for entry, fields in _entries(r)} for t, r in zip(asked, replies, strict=True)
            }
            for tenant, found in self._due(now, fresh).items():
                due.setdefault(tenant, []).extend(found)
            for tenant, entries in fresh.items():
                mine[tenant].update(entries)
            hungry = {t for t in asked if fresh[t] and len(mine[t]) < held and len(due.get(t, [])) < per_tenant}
        out: list[Candidate] = []
        for found in due.values():
            out.extend(sorted(found, key=lambda c: (c.accepted_at, c.id))[:per_tenant])
        return sorted(out, key=lambda c: (c.accepted_at, c.id))

    def _due(self, now: float, held: dict[str, dict[bytes, bytes]]) -> dict[str, list[Candidate]]:
        """The held entries' tasks that are due now, by tenant. An entry whose task is gone
        (evicted by a Redis that should not evict) is acknowledged away."""
        pairs = [(tenant, entry, task_id) for tenant, entries in held.items() for entry, task_id in entries.items()]
        with self._r.pipeline(transaction=False) as pipe:
            for _, _, task_id in pairs:
                pipe.hmget(self._task(task_id.decode()), "state", "not_before", "lease_until", "accepted_at")
            states = pipe.execute()
        out: dict[str, list[Candidate]] = {}
        orphans: list[tuple[str, bytes]] = []
        for (tenant, entry, task_id), (state, not_before, lease_until, accepted_at) in zip(pairs, states, strict=True):
            if state is None:
                orphans.append((tenant, entry))
            elif is_due(TaskState(state.decode()), float(not_before), float(lease_until), now):
                out.setdefault(tenant, []).append(Candidate(task_id.decode(), tenant, float(accepted_at)))
        if orphans:
            with self._r.pipeline(transaction=True) as pipe:
                for tenant, entry in orphans:
                    pipe.xack(self._queue(tenant), GROUP, entry)
                    pipe.xdel(self._queue(tenant), entry)
                pipe.execute()
        return out

    def _regroup(self, tenants: list[str]) -> None:
        for tenant in tenants:
            try:
                self._r.xgroup_create(self._queue(tenant), GROUP, "0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _tenants(self) -> list[str]:
        return sorted(raw.decode() for raw in self._r.smembers(f"{self._p}:tenants"))

    def task(self, task_id: str) -> DeferredTask | None:
        record, body = self._r.hmget(self._task(task_id), "record", "body")
        return DeferredTask.decode(record.decode(), body) if record is not None else None

    def lookup(self, task_id: str, tenant: str) -> TaskView | None:
        owner, state, accepted_at, attempts, result, body = self._r.hmget(
            self._task(task_id), "tenant", "state", "accepted_at", "attempts", "result", "result_body"
        )
        if owner is None or owner.decode() != tenant:
            return None
        answer = TaskResult.decode(result.decode(), body) if result is not None else None
        return TaskView(task_id, tenant, TaskState(state.decode()), float(accepted_at), int(attempts), answer)

    def depth(self) -> tuple[int, float | None]:
        with self._r.pipeline(transaction=True) as pipe:
            pipe.zcard(self._pending())
            pipe.zrange(self._pending(), 0, 0, withscores=True)
            count, oldest = pipe.execute()
        return int(count), (float(oldest[0][1]) if oldest else None)


def _entries(reply: Sequence[Any] | None) -> Iterable[tuple[bytes, dict[bytes, bytes]]]:
    """The (entry id, fields) of an XREADGROUP reply on one stream."""
    for _, entries in reply or ():
        yield from entries


def deferral_store(settings: Deferral, *, wait_s: float, consumer: str | None = None) -> TaskStore:
    """The policy's deferral store: its SQLite file, or the fleet's Redis. `wait_s`: how long a
    call may wait for the store (a worker answering a client keeps it under Envoy's ext_proc
    message timeout)."""
    if settings.redis is None:
        assert settings.store is not None
        return SqliteTaskStore(settings.store, wait_s)
    password = settings.redis_password.resolve().get_secret_value() if settings.redis_password else None
    return RedisTaskStore.connect(
        settings.redis,
        password=password,
        timeout_s=min(wait_s, _REPLY_WAIT_S),
        takeover_s=min(settings.lease_s, max(_TAKEOVER_FLOOR_S, _TAKEOVER_PASSES * settings.replay_every_s)),
        result_ttl_s=settings.result_ttl_s,
        consumer=consumer,
    )
