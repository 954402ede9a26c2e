"""Client-visible flags: every response says who served it and whether it was degraded (A2)."""

from __future__ import annotations

from ..core import Failure
from ..core.names import (
    ATTEMPTS,
    DEGRADED,
    NOTICE,
    POLICY_VERSION,
    REASON,
    SERVED_BY,
    TIER,
    TOOL_MODE,
    TOOLS_REMOVED,
    TRIMMED,
)

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
    tool_mode: str | None = None,
    tools_removed: tuple[str, ...] = (),
    trimmed: int = 0,
    notice: str | None = None,
) -> dict[str, str]:
    """`tool_mode`: the serving rung's (T5); `tools_removed`: the request's tools its mode took
    away (with plan_only, the answer is the calls the model would make, as data); `trimmed`:
    messages left out of the history to fit the rung's window (F6); `notice`: what the policy says
    about the tier (T6: what still works, what is limited)."""
    out = {
        SERVED_BY: served_by,
        TIER: "none" if tier is None else str(tier),
        DEGRADED: "true" if degraded else "false",
        REASON: NO_REASON if reason is None else str(reason),
        POLICY_VERSION: policy_version,
        ATTEMPTS: str(attempts),
    }
    if tool_mode is not None:
        out[TOOL_MODE] = tool_mode
    if tools_removed:
        out[TOOLS_REMOVED] = ",".join(tools_removed)
    if trimmed:
        out[TRIMMED] = str(trimmed)
    if notice is not None:
        out[NOTICE] = notice
    return out


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
