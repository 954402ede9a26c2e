"""Names shared across rooms: endpoints, Envoy clusters, headers and metadata namespaces.

The config renderer (xds), the processors (filters) and the runtime all use these; defining them
here keeps the processors from importing the renderer.
"""

from __future__ import annotations

# ---- endpoints and clusters ---------------------------------------------------------------------


def endpoint_key(provider: str, model: str) -> str:
    """A rung endpoint, the unit of health: one provider's model."""
    return f"{provider}/{model}"


def cluster_name(ladder: str, rungs: tuple[int, ...], stream: bool) -> str:
    """The aggregate cluster for one ordering (subsequence) of a ladder's rungs."""
    mask = sum(1 << i for i in rungs)
    return f"rw.{ladder}.{mask:x}" + (".sse" if stream else "")


def rung_cluster(ladder: str, index: int) -> str:
    """The child cluster of one rung (its endpoint carries the rung's address as metadata)."""
    return f"rw.rung.{ladder}.{index}"


DIRECT_PREFIX = "rw.direct."


def direct_cluster(provider: str) -> str:
    """A provider reached without the ladder: fail-open and pass-through routes."""
    return DIRECT_PREFIX + provider


# ---- headers ------------------------------------------------------------------------------------

CLUSTER_HEADER = "x-rungway-cluster"
# `token ladder rung` on a synthetic probe from `rungway up`; decide refuses anything else.
PROBE_HEADER = "x-rungway-probe"
# gRPC initial metadata that tells the sidecar which filter a stream serves.
FILTER_ROLE_KEY = "x-rungway-filter"
# gRPC initial metadata carrying the secret Envoy and the sidecar share: a stream without it is
# refused before it can ask for a key.
CHANNEL_TOKEN_KEY = "x-rungway-channel"
# The ext_proc request attribute with the downstream peer's address (trusted_header auth).
PEER_ATTRIBUTE = "source.address"
# The tenant label of a request refused before anyone was identified (a bounded label), and of
# `rungway up`'s synthetic probes.
UNAUTHENTICATED_TENANT = "-"
PROBE_TENANT = "-probe"

# Client-visible flags on every answer (A2).
SERVED_BY = "x-rungway-served-by"
TIER = "x-rungway-tier"
DEGRADED = "x-rungway-degraded"
REASON = "x-rungway-reason"
POLICY_VERSION = "x-rungway-policy-version"
ATTEMPTS = "x-rungway-attempts"
NOTICE = "x-rungway-notice"  # the policy's word on the serving tier (T6: what still works)
TOOL_MODE = "x-rungway-tool-mode"  # the serving rung's tool mode (T5)
TOOLS_REMOVED = "x-rungway-tools-removed"  # the request's tools that rung was not offered
TRIMMED = "x-rungway-context-trimmed"  # messages left out to fit the rung's window (F6)

# Deferral (E1): the task id and state on a 202 and on the status answers, and the header that
# marks a replay (`token tenant task-id`, from `rungway up`'s drainer; decide refuses any other).
TASK_ID_HEADER = "x-rungway-task-id"
TASK_STATUS_HEADER = "x-rungway-task-status"
REPLAY_HEADER = "x-rungway-replay"
LOCATION = "location"

# ---- paths --------------------------------------------------------------------------------------

# GET TASKS_PATH + task id: a deferred task's state or answer (the holder of its tenant's key).
TASKS_PATH = "/v1/rungway/tasks/"

OPENAI_CHAT_PATH = "/v1/chat/completions"
ANTHROPIC_MESSAGES_PATH = "/v1/messages"

# ---- metadata -----------------------------------------------------------------------------------

META_DECISION = "rungway"  # written by decide, read by attempt, the router and the access log
META_TRIP = "rungway.trip"  # written by each try, read by the next one
META_REQUEST = "rungway.req"  # written by json_to_metadata, read by decide
MISSING = "\u0000missing"  # json_to_metadata's marker for an absent `model`
INVALID = "\u0000invalid"  # ... and for a body that is not a JSON object

# ---- the rung relay ------------------------------------------------------------------------------

# Every try reaches its provider through an internal listener of Envoy's own: there each rung
# has its own per-try budget, and a slot the failure rules forbid is skipped without a provider
# seeing it (the attempt filter sets SKIP_HEADER; the relay answers SKIP_STATUS at once).
RELAY_LISTENER = "rungway_relay"
RUNG_HEADER = "x-rungway-rung"  # "<ladder>/<rung>": which relay route (budget, provider) a try takes
SKIP_HEADER = "x-rungway-skip"
# Set by the attempt filter on a try whose stream may be rescued: the relay sends it through the
# sidecar's reset shield (runtime/shield.py), which turns the provider's reset after the stream
# began into a clean end the filter can rescue (Envoy can only reset the client's stream).
SHIELD_HEADER = "x-rungway-shield"
SHIELD_CLUSTER = "rungway_shield"
SKIPPED_HEADER = "x-rungway-skipped"
SKIP_STATUS = 421  # "misdirected": retried by the router, not counted as a 5xx by outlier detection
# The relay's response flags (Envoy's %RESPONSE_FLAGS%): tell its own 503 for a reset or refused
# connection (UF, UC, UR, ...) and 504 for the rung's budget (UT) from a provider's answer ("-").
RELAY_FLAGS_HEADER = "x-rungway-relay-flags"
# On a try's answer: Envoy's router retries (the next slot) only when this header is present. The
# attempt filter sets it on a hop and the relay on a skipped slot; a final answer never has it,
# whatever its status.
RETRY_HEADER = "x-rungway-retry"

# The environment variable that may carry the admin endpoint's bearer token (`rungway up`, `status`).
ADMIN_TOKEN_ENV = "RUNGWAY_ADMIN_TOKEN"
