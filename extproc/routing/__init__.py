"""Routing: which rungs serve a request, and what a failed try means for it (pure).

Owns: the ladder choice (request features + policy + a health view → route), the trip rules
(hop, wait, or final, per failure class), providers' rate-limit headers. May import: core, policy.
"""

from .ladder import (
    HealthView,
    NeedBody,
    Refusal,
    RequestFeatures,
    Route,
    choose,
    orderings,
    prompt_tokens_estimate,
    reroute,
    tenant_forbids,
)
from .trip import Action, Position, Step, may_try, next_step, parse_retry_after, previous_failure

__all__ = [
    "Action",
    "HealthView",
    "NeedBody",
    "Position",
    "Refusal",
    "RequestFeatures",
    "Route",
    "Step",
    "choose",
    "may_try",
    "next_step",
    "orderings",
    "parse_retry_after",
    "previous_failure",
    "prompt_tokens_estimate",
    "reroute",
    "tenant_forbids",
]
