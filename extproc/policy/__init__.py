"""Policy as code (T1): the schema a platform team writes, and reading it.

Owns: the pydantic models (frozen, extra=forbid), loading YAML (a file, or a directory:
defaults and one file per tenant), revisions (stamp, history, what a reload may change),
provider credentials, and which JSON Schemas are acceptable. May import: core.
"""

from .load import PolicyError, load_policy, parse_policy, resolve_credentials
from .revision import KEEP_PREVIOUS, History, PolicyReloaded, ReloadOutcome, start_only_changes
from .schema import (
    MAX_LADDER_LENGTH,
    REQUESTED_MODEL,
    Budget,
    BusSecurity,
    CircuitSettings,
    Clients,
    ContextRules,
    Cost,
    Credential,
    CredentialError,
    Ejection,
    Exhausted,
    HealthSettings,
    LeaveBelow,
    ModelRoute,
    Policy,
    Provider,
    Rung,
    Shadow,
    TaskClass,
    TenantPolicy,
    ToolRules,
    is_loopback_host,
)

__all__ = [
    "KEEP_PREVIOUS",
    "MAX_LADDER_LENGTH",
    "REQUESTED_MODEL",
    "Budget",
    "BusSecurity",
    "CircuitSettings",
    "Clients",
    "ContextRules",
    "Cost",
    "Credential",
    "CredentialError",
    "Ejection",
    "Exhausted",
    "HealthSettings",
    "History",
    "LeaveBelow",
    "ModelRoute",
    "Policy",
    "PolicyError",
    "PolicyReloaded",
    "Provider",
    "ReloadOutcome",
    "Rung",
    "Shadow",
    "TaskClass",
    "TenantPolicy",
    "ToolRules",
    "is_loopback_host",
    "load_policy",
    "parse_policy",
    "resolve_credentials",
    "start_only_changes",
]
