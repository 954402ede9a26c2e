"""Rungway: an Envoy ext_proc sidecar that keeps LLM traffic on a fallback ladder.

The rooms (docs/ARCHITECTURE.md): core (vocabulary), policy, routing, health, translate,
filters (the two ext_proc processors), runtime (all I/O), xds (Envoy config), demo; cli.
"""

from .core import Failure
from .policy import Policy, PolicyError, load_policy, parse_policy
from .routing import NeedBody, Refusal, RequestFeatures, Route, choose

__all__ = [
    "Failure",
    "NeedBody",
    "Policy",
    "PolicyError",
    "Refusal",
    "RequestFeatures",
    "Route",
    "choose",
    "load_policy",
    "parse_policy",
]
