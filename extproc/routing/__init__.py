"""Routing: which rungs serve a request, and what a failed try means for it (pure).

Owns: the capability matrix and each rung's tool mode (`capability`), the ladder choice (request features + policy + a health view → route), the trip rules
(hop, wait, or final, per failure class), providers' rate-limit headers. May import: core, policy.
"""

from .capability import matrix_forbids, offers_tools, refuses_tools, tool_mode_of
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
    "matrix_forbids",
    "may_try",
    "next_step",
    "offers_tools",
    "orderings",
    "parse_retry_after",
    "previous_failure",
    "prompt_tokens_estimate",
    "refuses_tools",
    "reroute",
    "tenant_forbids",
    "tool_mode_of",
]
