"""Policy as code (T1): the schema a platform team writes, and reading it.

Owns: the pydantic models (frozen, extra=forbid), loading YAML, provider credentials, and which
JSON Schemas are acceptable. May import: core.
"""

from .load import PolicyError, load_policy, parse_policy, resolve_credentials
from .schema import (
    MAX_LADDER_LENGTH,
    REQUESTED_MODEL,
    AuditSettings,
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
    "MAX_LADDER_LENGTH",
    "REQUESTED_MODEL",
    "AuditSettings",
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
    "LeaveBelow",
    "ModelRoute",
    "Policy",
    "PolicyError",
    "Provider",
    "Rung",
    "Shadow",
    "TaskClass",
    "TenantPolicy",
    "ToolRules",
    "is_loopback_host",
    "load_policy",
    "parse_policy",
    "resolve_credentials",
]
