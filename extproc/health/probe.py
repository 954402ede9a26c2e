"""Synthetic probes (H4): which rung endpoints are due a tiny completion through Envoy, and which
prober of a fleet sends it (pure).

`rungway up`'s supervisor is a pod's only prober (its workers never probe). It sends probes with
a token that lets decide route a probe to exactly one rung; the attempt filter then observes the
answer like any other try, marked `probe=True`, so a probe moves circuits and scores through the
same path as live traffic, in every replica of the board alike.

Manners:
- Targets are bounded: every endpoint the policy names with a fixed model, plus the
  `max_probed_models` client-named models (`$requested` rungs) live traffic used most recently.
  A model seen only in probes, or only in failures about the request itself (context_overflow,
  safety_block, client_error), is not probed.
- Never inside a provider's Retry-After or rate-limit reset (the board's `quota_until`).
- Every `probe_interval_s`, and every `recovery_probe_s` for endpoints traffic is avoiding — an
  open circuit included, so recovery is noticed within seconds however long the outage lasts, at
  a steady 60 / recovery_probe_s probes a minute.
- One probe per endpoint and interval across a fleet sharing a bus: `ProbeSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

from ..core import CircuitChanged, ProbeClaim
from ..core.names import endpoint_key
from ..policy import REQUESTED_MODEL, Policy
from .board import Board
from .circuit import CircuitState

# How long a prober waits between claiming a probe and sending it: far longer than the bus takes
# to carry a rival's claim, far shorter than any probe interval.
CLAIM_SETTLE_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    key: str  # provider/model: the endpoint the circuit is about
    ladder: str
    rung: int
    model: str  # sent as the request's model (a `$requested` rung serves it as is)


def targets(policy: Policy, board: Board) -> list[ProbeTarget]:
    """Every endpoint of the policy with a fixed model, and the `max_probed_models` endpoints
    of client-named models that live traffic used most recently (least recently used out)."""
    found: dict[str, ProbeTarget] = {}
    for ladder, rungs in policy.ladders.items():
        for i, rung in enumerate(rungs):
            if rung.model != REQUESTED_MODEL:
                key = endpoint_key(rung.provider, rung.model)
                found.setdefault(key, ProbeTarget(key, ladder, i, rung.model))
    named: list[tuple[float, ProbeTarget]] = []
    for key, ep in board.endpoints.items():
        if key in found or ep.used_at == -math.inf:
            continue
        provider, _, model = key.partition("/")
        for ladder, i in sorted(ep.routes):
            route = policy.ladders.get(ladder)
            serving = route[i] if route is not None and i < len(route) else None
            if serving is not None and serving.provider == provider and serving.model in (REQUESTED_MODEL, model):
                named.append((ep.used_at, ProbeTarget(key, ladder, i, model)))
                break
    named.sort(key=lambda pair: (-pair[0], pair[1].key))
    for _, target in named[: policy.health.max_probed_models]:
        found[target.key] = target
    return sorted(found.values(), key=lambda t: t.key)


def rate_limited(board: Board, key: str, now: float) -> bool:
    """Is the provider's Retry-After or rate-limit reset still running for this endpoint?"""
    ep = board.endpoints.get(key)
    return ep is not None and ep.quota_until > now


def due(
    all_targets: Iterable[ProbeTarget],
    board: Board,
    last_sent: dict[str, float],
    now: float,
    half_open_elsewhere: Collection[str] = (),
) -> list[ProbeTarget]:
    """Targets whose interval has passed since anyone last probed them. Endpoints traffic is
    avoiding (a circuit open or half-open, or a score low enough that some impact class left)
    are probed at the faster recovery interval: live traffic no longer tells how they are,
    probes do. An open circuit counts its probes' answers (the circuit's module doc), so a
    recovered provider is found out within seconds, whatever the outage's length or the flap
    backoff; the backoff only holds live traffic back. Nothing is due while the provider's
    Retry-After or rate-limit reset runs.
    `half_open_elsewhere`: endpoints another replica of the board reports half-open — it may
    be a little behind this one, and needs probes too."""
    settings = board.settings
    out = []
    for target in all_targets:
        if rate_limited(board, target.key, now):
            continue
        ep = board.endpoints.get(target.key)
        recovering = (
            target.key in half_open_elsewhere
            or (ep is not None and ep.circuit.state(now) is not CircuitState.CLOSED)
            or (ep is not None and board.score(ep, now).value < settings.leave_below.deferrable)
        )
        interval = settings.recovery_probe_s if recovering else settings.probe_interval_s
        if interval <= 0:
            continue
        if now - last_sent.get(target.key, -math.inf) >= interval:
            out.append(target)
    return out


@dataclass
class ProbeSchedule:
    """When each endpoint was last probed by any prober on the bus, and this prober's claims.

    Before it probes, a prober publishes a `ProbeClaim` and waits `settle_s`. Every prober hears
    every claim, its own included, and takes it as the endpoint's latest probe: one probe resets
    the timer of the whole fleet. Two probers whose timers run out together both claim; the
    earlier claim — by time, then by prober id — probes and the other stands down. Each decides
    from the same two claims, so they agree without another round trip. A claim the bus carries
    later than `settle_s` costs one extra probe at most; without the bus, each prober probes on
    its own. State is bounded by the targets (`keep`)."""

    me: str  # this prober's id (its bus origin)
    rival_window_s: float  # a rival's claim older than this before mine is an earlier round
    settle_s: float = CLAIM_SETTLE_S
    last: dict[str, float] = field(default_factory=dict)  # endpoint -> latest claim heard
    _mine: dict[str, ProbeClaim] = field(default_factory=dict)  # claims waiting out settle_s

    def hear(self, claim: ProbeClaim, now: float) -> None:
        """A claim from the bus, anyone's (a command)."""
        # A clock running ahead must not silence this prober for longer than an interval.
        at = min(claim.at, now)
        if at > self.last.get(claim.key, -math.inf):
            self.last[claim.key] = at
        mine = self._mine.get(claim.key)
        if (
            mine is not None
            and claim.by != self.me
            and claim.at > mine.at - self.rival_window_s
            and (claim.at, claim.by) < (mine.at, mine.by)
        ):
            del self._mine[claim.key]  # the rival's claim came first: it probes, this one stands down

    def claim(self, keys: Iterable[str], now: float) -> list[ProbeClaim]:
        """Claim probes of these endpoints (due ones): the claims to publish (a command)."""
        out = []
        for key in keys:
            if key in self._mine:
                continue
            mine = ProbeClaim(key, now, self.me)
            self._mine[key] = mine
            self.last[key] = max(self.last.get(key, -math.inf), now)
            out.append(mine)
        return out

    def ready(self, now: float) -> list[str]:
        """Endpoints whose claim waited out `settle_s` unbeaten: probe them now (a command)."""
        keys = [key for key, mine in self._mine.items() if now - mine.at >= self.settle_s]
        for key in keys:
            del self._mine[key]
        return keys

    def keep(self, keys: Collection[str]) -> None:
        """Forget endpoints that are no longer targets (a command)."""
        for gone in [key for key in self.last if key not in keys]:
            del self.last[gone]
        for gone in [key for key in self._mine if key not in keys]:
            del self._mine[gone]


@dataclass
class ReplicaReports:
    """What the other replicas of the board last said of each endpoint's circuit (their
    "circuit" events). Replicas see the same observations but not at the same instant: one may
    still be half-open, waiting for a probe, when this one closed and stopped probing."""

    ttl_s: float  # a replica silent this long (restarted, gone) no longer counts
    _last: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)

    def note(self, event: CircuitChanged, origin: str, now: float) -> None:
        self._last[(event.key, origin)] = (event.target, now)

    def half_open(self, now: float) -> set[str]:
        """Endpoints some replica last reported half-open."""
        for stale in [k for k, (_, at) in self._last.items() if now - at > self.ttl_s]:
            del self._last[stale]
        return {key for (key, _), (state, _) in self._last.items() if state == CircuitState.HALF_OPEN.value}
