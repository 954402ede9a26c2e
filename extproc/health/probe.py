"""Synthetic probes (H4): which rung endpoints are due a tiny completion through Envoy (pure).

`rungway up` sends them, with a token that lets decide route a probe to exactly one rung; the
attempt filter then observes the answer like any other try, so a probe moves circuits and
scores through the same path as live traffic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from ..core import CircuitChanged
from ..core.names import endpoint_key
from ..policy import REQUESTED_MODEL, Policy
from .board import Board
from .circuit import CircuitState


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    key: str  # provider/model: the endpoint the circuit is about
    ladder: str
    rung: int
    model: str  # sent as the request's model (a `$requested` rung serves it as is)


def targets(policy: Policy, board: Board) -> list[ProbeTarget]:
    """Every endpoint of the policy with a fixed model, and every endpoint seen in traffic."""
    found: dict[str, ProbeTarget] = {}
    for ladder, rungs in policy.ladders.items():
        for i, rung in enumerate(rungs):
            if rung.model != REQUESTED_MODEL:
                key = endpoint_key(rung.provider, rung.model)
                found.setdefault(key, ProbeTarget(key, ladder, i, rung.model))
    for key, ep in board.endpoints.items():
        for ladder, i in sorted(ep.routes):
            route = policy.ladders.get(ladder)
            if route is None or i >= len(route) or key in found:
                continue
            provider, _, model = key.partition("/")
            if route[i].provider == provider and route[i].model in (REQUESTED_MODEL, model):
                found[key] = ProbeTarget(key, ladder, i, model)
    return sorted(found.values(), key=lambda t: t.key)


def due(
    all_targets: Iterable[ProbeTarget],
    board: Board,
    last_sent: dict[str, float],
    now: float,
    half_open_elsewhere: Collection[str] = (),
) -> list[ProbeTarget]:
    """Targets whose interval has passed. Endpoints traffic is avoiding (half-open, or a score
    low enough that some impact class left) are probed at the faster recovery interval: live
    traffic no longer tells how they are, probes do — so a recovered provider gets its traffic
    back quickly, and a still-broken one does not get it back at all. An open circuit is not
    probed: nothing it hears counts until it is half-open (and a probe answered just as it
    turns half-open would land on either side of the turn in different replicas).
    `half_open_elsewhere`: endpoints another replica of the board reports half-open — it may
    be a little behind this one, and needs probes too."""
    settings = board.settings
    out = []
    for target in all_targets:
        ep = board.endpoints.get(target.key)
        state = ep.circuit.state(now) if ep is not None else CircuitState.CLOSED
        elsewhere = target.key in half_open_elsewhere
        if state is CircuitState.OPEN and not elsewhere:
            continue
        recovering = (
            elsewhere
            or state is CircuitState.HALF_OPEN
            or (ep is not None and board.score(ep, now).value < settings.leave_below.deferrable)
        )
        interval = settings.recovery_probe_s if recovering else settings.probe_interval_s
        if interval <= 0:
            continue
        if now - last_sent.get(target.key, float("-inf")) >= interval:
            out.append(target)
    return out


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
