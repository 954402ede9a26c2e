"""Rungway: an Envoy ext_proc sidecar that keeps LLM traffic on a fallback ladder."""

from .ladder import NeedBody, Refusal, RequestFeatures, Route, choose
from .policy import Policy, PolicyError, load_policy, parse_policy
from .taxonomy import Failure

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
