"""An escalation's states. OPEN from the moment the request is suspended (stored before its
client gets the 202) until a person decides (APPROVED, REDIRECTED, REJECTED) or no one has
within the deferral queue's task TTL (EXPIRED). A decision is final: a second one is refused,
so two on-call people acting at once cannot both win."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ..core import Review


class EscalationState(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REDIRECTED = "redirected"
    REJECTED = "rejected"
    EXPIRED = "expired"


TRANSITIONS: Final[frozenset[tuple[EscalationState, EscalationState]]] = frozenset(
    {
        (EscalationState.OPEN, EscalationState.APPROVED),
        (EscalationState.OPEN, EscalationState.REDIRECTED),
        (EscalationState.OPEN, EscalationState.REJECTED),
        (EscalationState.OPEN, EscalationState.EXPIRED),
    }
)
_BY_REVIEW: Final = {
    Review.APPROVE: EscalationState.APPROVED,
    Review.REDIRECT: EscalationState.REDIRECTED,
    Review.REJECT: EscalationState.REJECTED,
}


class IllegalEscalationError(ValueError):
    pass


def transition(source: EscalationState, target: EscalationState) -> EscalationState:
    if (source, target) not in TRANSITIONS:
        raise IllegalEscalationError(f"an escalation cannot go from {source.value} to {target.value}")
    return target


def resolved_state(review: Review) -> EscalationState:
    return _BY_REVIEW[review]
