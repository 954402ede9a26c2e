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


class Hop(StrEnum):
    """What the ladder does after an attempt failed with a given class."""

    NEXT_RUNG = "next_rung"  # flip to 503 so Envoy retries on the next rung
    LARGER_CONTEXT = "larger_context"  # hop only if a later rung has a larger window
    PROPAGATE = "propagate"  # hand the failure to the client as it is


HOP_RULE: dict[Failure, Hop] = {
    Failure.TIMEOUT: Hop.NEXT_RUNG,
    Failure.RATE_LIMITED: Hop.NEXT_RUNG,
    Failure.SERVER_ERROR: Hop.NEXT_RUNG,
    Failure.CONNECT_ERROR: Hop.NEXT_RUNG,
    Failure.CONTEXT_OVERFLOW: Hop.LARGER_CONTEXT,
    # A provider's safety refusal is an answer about the content: routing around it would be
    # shopping for a laxer model. Policy may opt in (`hop_on_safety_block`).
    Failure.SAFETY_BLOCK: Hop.PROPAGATE,
    Failure.SCHEMA_ERROR: Hop.NEXT_RUNG,
    Failure.QUALITY_REGRESSION: Hop.NEXT_RUNG,
    Failure.TOOL_MISMATCH: Hop.NEXT_RUNG,
    # Tenant budgets are enforced before a request is routed, so at a rung this can only be the
    # provider account's quota (OpenAI's insufficient_quota): another rung has its own.
    Failure.BUDGET_EXCEEDED: Hop.NEXT_RUNG,
    # A key the provider refuses is our misconfiguration for that rung, not the client's fault:
    # the next rung has its own key.
    Failure.ACCESS_DENIED: Hop.NEXT_RUNG,
    Failure.CLIENT_ERROR: Hop.PROPAGATE,
    Failure.STREAM_INTERRUPTED: Hop.PROPAGATE,
}

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
}
