"""Client-visible flags: every response says who served it and whether it was degraded (A2)."""

from __future__ import annotations

from ..core import Failure
from ..core.names import ATTEMPTS, DEGRADED, POLICY_VERSION, REASON, SERVED_BY, TIER

NO_REASON = "none"
# Served by a fallback rung on purpose (health.canary_share), not because of a failure.
CANARY = "canary"


def flags(
    *,
    served_by: str,
    tier: int | None,
    degraded: bool,
    reason: Failure | str | None,
    policy_version: str,
    attempts: int,
) -> dict[str, str]:
    return {
        SERVED_BY: served_by,
        TIER: "none" if tier is None else str(tier),
        DEGRADED: "true" if degraded else "false",
        REASON: NO_REASON if reason is None else str(reason),
        POLICY_VERSION: policy_version,
        ATTEMPTS: str(attempts),
    }


def own_answer_headers(failure: Failure, policy_version: str) -> dict[str, str]:
    """Headers of an error Rungway answers itself (no rung served it)."""
    return {
        "content-type": "application/json",
        **flags(
            served_by="rungway",
            tier=None,
            degraded=False,
            reason=failure,
            policy_version=policy_version,
            attempts=0,
        ),
    }
