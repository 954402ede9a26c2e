"""One failure taxonomy for every provider, and the retry rule of each class.

Upstream failures are classified once, at the boundary (the attempt filter), and from then on
only the `Failure` value travels: into the trip metadata, the x-rungway-reason header, metrics
and the client's error body.
"""

from __future__ import annotations

from enum import StrEnum


class Failure(StrEnum):
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECT_ERROR = "connect_error"
    CONTEXT_OVERFLOW = "context_overflow"
    SAFETY_BLOCK = "safety_block"
    SCHEMA_ERROR = "schema_error"
    QUALITY_REGRESSION = "quality_regression"
    TOOL_MISMATCH = "tool_mismatch"
    BUDGET_EXCEEDED = "budget_exceeded"
    ACCESS_DENIED = "access_denied"
    CLIENT_ERROR = "client_error"
    STREAM_INTERRUPTED = "stream_interrupted"
    # The caller holds no credential Rungway knows: answered before any provider is called.
    UNAUTHENTICATED = "unauthenticated"
    # The tenant's policy does not permit any rung that could serve now (a tier below the one it
    # allows, a region outside its residency): an honest refusal rather than a silent downgrade.
    NOT_PERMITTED = "not_permitted"


class Retry(StrEnum):
    """Where the request goes after a try failed with a given class: one rule per class."""

    # The same rung again, once per extra slot it has (after backoff, or the provider's short
    # Retry-After), then the next rung.
    SAME_RUNG = "same_rung"
    NEXT_RUNG = "next_rung"  # the next rung at once: never this rung again for this request
    LARGER_CONTEXT = "larger_context"  # only a later rung whose context window is larger
    STOP = "stop"  # never re-sent: the failure is the client's answer


RETRY_RULE: dict[Failure, Retry] = {
    # No first byte within the rung's budget: re-sending to a silent rung only waits again.
    Failure.TIMEOUT: Retry.NEXT_RUNG,
    # A short Retry-After is waited out on the same rung; a long or missing one, or a second
    # 429, is a persistent limit: the next rung at once (routing.trip decides which).
    Failure.RATE_LIMITED: Retry.SAME_RUNG,
    Failure.SERVER_ERROR: Retry.SAME_RUNG,  # a single 500/502/503/529
    Failure.CONNECT_ERROR: Retry.SAME_RUNG,  # a reset or a refused connection
    Failure.CONTEXT_OVERFLOW: Retry.LARGER_CONTEXT,
    # A provider's safety refusal is an answer about the content: routing around it would be
    # shopping for a laxer model. Policy may opt in (`hop_on_safety_block`).
    Failure.SAFETY_BLOCK: Retry.STOP,
    Failure.SCHEMA_ERROR: Retry.NEXT_RUNG,
    Failure.QUALITY_REGRESSION: Retry.NEXT_RUNG,
    Failure.TOOL_MISMATCH: Retry.NEXT_RUNG,
    # Tenant budgets are enforced before a request is routed, so at a rung this can only be the
    # provider account's quota (OpenAI's insufficient_quota): another rung has its own.
    Failure.BUDGET_EXCEEDED: Retry.NEXT_RUNG,
    # A key the provider refuses is our misconfiguration for that rung (401/403), not the
    # client's fault: the next rung has its own key.
    Failure.ACCESS_DENIED: Retry.NEXT_RUNG,
    Failure.CLIENT_ERROR: Retry.STOP,
    Failure.STREAM_INTERRUPTED: Retry.STOP,
    Failure.UNAUTHENTICATED: Retry.STOP,
    Failure.NOT_PERMITTED: Retry.STOP,
}

# Failures that say the rungs could not serve (an outage), not that the request itself cannot be
# served (a bad request, a safety refusal, a prompt no rung can hold, the tenant's own rules).
OUTAGES: frozenset[Failure] = frozenset(
    {
        Failure.TIMEOUT,
        Failure.RATE_LIMITED,
        Failure.SERVER_ERROR,
        Failure.CONNECT_ERROR,
        Failure.SCHEMA_ERROR,
        Failure.QUALITY_REGRESSION,
        Failure.TOOL_MISMATCH,
        Failure.BUDGET_EXCEEDED,
        Failure.ACCESS_DENIED,
    }
)

# The HTTP status a client sees when Rungway itself reports a failure of this class.
CLIENT_STATUS: dict[Failure, int] = {
    Failure.TIMEOUT: 504,
    Failure.RATE_LIMITED: 429,
    Failure.SERVER_ERROR: 503,
    Failure.CONNECT_ERROR: 503,
    Failure.CONTEXT_OVERFLOW: 400,
    Failure.SAFETY_BLOCK: 400,
    Failure.SCHEMA_ERROR: 502,
    Failure.QUALITY_REGRESSION: 502,
    Failure.TOOL_MISMATCH: 502,
    Failure.BUDGET_EXCEEDED: 429,
    Failure.ACCESS_DENIED: 502,
    Failure.CLIENT_ERROR: 400,
    Failure.STREAM_INTERRUPTED: 502,
    Failure.UNAUTHENTICATED: 401,
    Failure.NOT_PERMITTED: 503,
}
