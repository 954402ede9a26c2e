"""Synthetic probes (H4): which rung endpoints are due a tiny completion through Envoy (pure).

`rungway up` sends them, with a token that lets decide route a probe to exactly one rung; the
attempt filter then observes the answer like any other try, so a probe moves circuits and
scores through the same path as live traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .circuit import CircuitState
from .health import Board, endpoint_key
from .policy import REQUESTED_MODEL, Policy


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


def due(all_targets: Iterable[ProbeTarget], board: Board, last_sent: dict[str, float], now: float) -> list[ProbeTarget]:
    """Targets whose interval has passed. Endpoints traffic is avoiding (circuit not closed, or
    a score low enough that some impact class left) are probed at the faster recovery
    interval: live traffic no longer tells how they are, probes do — so a recovered provider
    gets its traffic back quickly, and a still-broken one does not get it back at all."""
    settings = board.settings
    out = []
    for target in all_targets:
        ep = board.endpoints.get(target.key)
        recovering = ep is not None and (
            ep.circuit.state(now) is not CircuitState.CLOSED
            or board.score(ep, now).value < settings.leave_below.deferrable
        )
        interval = settings.recovery_probe_s if recovering else settings.probe_interval_s
        if interval <= 0:
            continue
        if now - last_sent.get(target.key, float("-inf")) >= interval:
            out.append(target)
    return out
