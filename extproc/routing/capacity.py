"""Capacity of a rung (T3): what it has in flight, by tenant and impact, and whether it takes one
more request (pure). Under `rungway up` the ledger is the pod's, shared by its workers
(runtime/slots.py).

Theory of operation. A rung with `capacity` has `max_in_flight` slots.
A request holds a slot of its first rung from the moment decide routed it (a reservation, which
lapses after `RESERVATION_S` if no try takes it up) and a slot of every rung one of its tries
runs on, until that try's stream ends. decide asks `admits` for each rung of a route and drops
the rungs that refuse; a request left with none is answered at once (filters/shed.py).

Two rules, both checked for every admission:
- Impact reservations: `reserved[i]` slots may be taken only by impact i or a more important
  one. An impact may use the rung while its total in flight is below max_in_flight minus the
  reservations of every more important impact, so a reserved slot is never lent downwards.
- Tenant shares: a tenant never holds more than `tenant_share` of the slots. When other tenants
  want the rung too (they hold a slot of it, or were refused one within `DEMAND_S`), a tenant at
  or over its fair share (usable slots // tenants wanting) takes another only while that leaves
  a free slot for each other wanting tenant still under its share. An over-share tenant never
  takes the slot an under-share one is waiting for, so a noisy tenant cannot take another's
  fallback capacity: the next slot its requests free goes to the quiet tenant, and the shares
  converge as the noisy tenant's requests end; idle slots are still used.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ..core import Impact
from ..policy.schema import RungCapacity

# A routed request's first try starts a few milliseconds after decide answers; a second is long.
# (Under `rungway up` the try may run in another worker: the ledger is the pod's, so that
# worker's try takes up the reservation all the same; runtime/slots.py.)
RESERVATION_S: Final = 1.0
# A tenant refused a slot counts as wanting the rung this long (a shed client comes back after
# its Retry-After, a second by default).
DEMAND_S: Final = 5.0
# Most important first.
LEDGER_VERSION: Final = 1
IMPORTANCE: Final = (Impact.REVENUE_CRITICAL, Impact.CUSTOMER_FACING, Impact.ASYNC_ACCEPTABLE, Impact.DEFERRABLE)


class Denial(StrEnum):
    """Why a rung takes no more of a request's kind (the metrics' `reason`)."""

    RUNG_FULL = "rung_full"  # every slot is in flight
    RESERVED = "reserved"  # the free slots are reserved for more important impacts
    TENANT_SHARE = "tenant_share"  # the tenant holds its share of the rung


@dataclass(frozen=True, slots=True)
class Limits:
    """A rung's capacity, as the ledger applies it."""

    max_in_flight: int
    reserved: Mapping[Impact, int]
    tenant_share: float

    def usable(self, impact: Impact) -> int:
        """Slots this impact may fill: all but those reserved for more important impacts."""
        above = IMPORTANCE[: IMPORTANCE.index(impact)]
        return max(0, self.max_in_flight - sum(self.reserved.get(i, 0) for i in above))

    @classmethod
    def of(cls, capacity: RungCapacity) -> Limits:
        return cls(capacity.max_in_flight, dict(capacity.reserved), capacity.tenant_share)

    @property
    def tenant_cap(self) -> int:
        return max(1, math.floor(self.tenant_share * self.max_in_flight + 1e-9))


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a slot: the request's tenant and impact."""

    tenant: str
    impact: Impact


RungId = tuple[str, int]  # (ladder, rung index)


@dataclass
class _Rung:
    # By the worker process running the try (its pid under `rungway up`): a worker that dies
    # takes its tries with it (`forget`).
    tries: Counter[tuple[int, Holder]] = field(default_factory=Counter)
    reserved: deque[tuple[float, Holder]] = field(default_factory=deque)  # (routed at, holder)
    wanted: dict[str, float] = field(default_factory=dict)  # tenant -> last refused at


@dataclass
class Ledger:
    """Every limited rung's slots at one worker. Commands move state; queries never do."""

    _rungs: dict[RungId, _Rung] = field(default_factory=dict)

    # ---- commands ----------------------------------------------------------------------------

    def reserve(self, rung: RungId, holder: Holder, now: float) -> None:
        """decide routed a request whose first try will run on `rung`."""
        r = self._rung(rung, now)
        r.reserved.append((now, holder))

    def take(self, rung: RungId, holder: Holder, now: float, owner: int = 0) -> None:
        """A try started on `rung` (in worker `owner`): it takes up its request's reservation
        there, if any (made by whichever worker decided it)."""
        r = self._rung(rung, now)
        for i, (_, held) in enumerate(r.reserved):
            if held == holder:
                del r.reserved[i]
                break
        r.tries[owner, holder] += 1

    def free(self, rung: RungId, holder: Holder, owner: int = 0) -> None:
        """A try's stream on `rung` ended."""
        r = self._rungs.get(rung)
        if r is not None and r.tries[owner, holder] > 0:
            r.tries[owner, holder] -= 1
            if not r.tries[owner, holder]:
                del r.tries[owner, holder]

    def forget(self, owners: set[int]) -> None:
        """Only these workers are alive: the tries of any other are gone with it."""
        for r in self._rungs.values():
            for key in [k for k in r.tries if k[0] not in owners]:
                del r.tries[key]

    def owners(self) -> set[int]:
        return {owner for r in self._rungs.values() for owner, _ in r.tries}

    def refused(self, rung: RungId, tenant: str, now: float) -> None:
        """decide refused `tenant` a slot: it wants the rung (its fair share is kept for it)."""
        self._rung(rung, now).wanted[tenant] = now

    def _rung(self, rung: RungId, now: float) -> _Rung:
        r = self._rungs.setdefault(rung, _Rung())
        while r.reserved and r.reserved[0][0] < now - RESERVATION_S:
            r.reserved.popleft()
        for tenant in [t for t, at in r.wanted.items() if at < now - DEMAND_S]:
            del r.wanted[tenant]
        return r

    # ---- queries -----------------------------------------------------------------------------

    def held(self, rung: RungId, now: float) -> Counter[Holder]:
        """Slots in flight on the rung, by holder: tries plus live reservations."""
        r = self._rungs.get(rung)
        if r is None:
            return Counter()
        out: Counter[Holder] = Counter()
        for (_, holder), n in r.tries.items():
            out[holder] += n
        out.update(holder for at, holder in r.reserved if at >= now - RESERVATION_S)
        return out

    def admits(self, rung: RungId, limits: Limits, holder: Holder, now: float) -> Denial | None:
        """None if the rung takes one more request of `holder`'s, else why not."""
        held = self.held(rung, now)
        total = sum(held.values())
        if total >= limits.max_in_flight:
            return Denial.RUNG_FULL
        usable = limits.usable(holder.impact)
        by_tenant: Counter[str] = Counter()
        for h, n in held.items():
            by_tenant[h.tenant] += n
        mine = by_tenant[holder.tenant]
        if mine >= limits.tenant_cap:
            return Denial.TENANT_SHARE
        if total >= usable:
            return Denial.RESERVED
        r = self._rungs.get(rung)
        wanting = {t for t, n in by_tenant.items() if n > 0}
        if r is not None:
            wanting.update(t for t, at in r.wanted.items() if at >= now - DEMAND_S)
        wanting.add(holder.tenant)
        share = max(1, usable // len(wanting))
        if len(wanting) > 1 and mine >= share:
            # Over its share: only with a free slot left for each other tenant under its share.
            needy = sum(1 for t in wanting if t != holder.tenant and by_tenant[t] < share)
            if usable - total - 1 < needy:
                return Denial.TENANT_SHARE
        return None

    def snapshot(self, now: float) -> dict[str, dict[str, int]]:
        """In flight per rung ("ladder/index") and tenant, for /status and tests."""
        out: dict[str, dict[str, int]] = {}
        for rung in sorted(self._rungs):
            tenants: Counter[str] = Counter()
            for h, n in self.held(rung, now).items():
                tenants[h.tenant] += n
            if tenants:
                out[f"{rung[0]}/{rung[1]}"] = dict(sorted(tenants.items()))
        return out

    # ---- one encode/decode pair (runtime/slots.py keeps a pod's ledger in a shared file) --------

    def encode(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"v": LEDGER_VERSION, "rungs": []}
        for (ladder, index), r in sorted(self._rungs.items()):
            live = [(at, h) for at, h in r.reserved if at >= now - RESERVATION_S]
            wanted = {t: at for t, at in r.wanted.items() if at >= now - DEMAND_S}
            if not (r.tries or live or wanted):
                continue
            out["rungs"].append(
                {
                    "ladder": ladder,
                    "rung": index,
                    "tries": [[o, h.tenant, h.impact.value, n] for (o, h), n in sorted(r.tries.items(), key=str)],
                    "reserved": [[at, h.tenant, h.impact.value] for at, h in live],
                    "wanted": wanted,
                }
            )
        return out

    @classmethod
    def decode(cls, raw: Any) -> Ledger:
        """Raises ValueError on anything that is not an encoded ledger of this version."""
        try:
            if raw["v"] != LEDGER_VERSION:
                raise ValueError(f"ledger version {raw['v']!r}, expected {LEDGER_VERSION}")
            ledger = cls()
            for row in raw["rungs"]:
                r = ledger._rungs.setdefault((str(row["ladder"]), int(row["rung"])), _Rung())
                for owner, tenant, impact, n in row["tries"]:
                    r.tries[int(owner), Holder(str(tenant), Impact(impact))] = int(n)
                for at, tenant, impact in row["reserved"]:
                    r.reserved.append((float(at), Holder(str(tenant), Impact(impact))))
                r.wanted = {str(t): float(at) for t, at in row["wanted"].items()}
            return ledger
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an encoded ledger: {exc!r}") from None
