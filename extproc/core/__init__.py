"""The vocabulary every other room speaks: failure classes, dialects, impact classes, names of
endpoints, clusters, headers and metadata, the clock, and the typed messages that cross a
boundary (the routing decision, the per-try record, health-bus events and the signed frames
that carry them).

Imports nothing else of ours (a test enforces it), so any room may import it.
"""

from .clock import Clock, FakeClock, SystemClock
from .decision import Decision, PassedThrough, Refused, RungAddress, TripRecord
from .dialect import Capability, Dialect, ToolMode
from .escalation import Escalation, Resolution, Review, Step
from .events import (
    Abandoned,
    BusEvent,
    CircuitChanged,
    Observation,
    ProbeClaim,
    QuotaSignal,
    RequestsDecided,
    Spent,
    decode_event,
)
from .failure import CLIENT_STATUS, OUTAGES, RETRY_RULE, Failure, Retry
from .fields import ContractError
from .frame import FrameKey, FrameReader, FrameRules, Rejection, seal
from .impact import Impact
from .review import DegradedAnswer
from .task import DeferredTask, TaskResult

__all__ = [
    "CLIENT_STATUS",
    "OUTAGES",
    "RETRY_RULE",
    "Abandoned",
    "BusEvent",
    "Capability",
    "CircuitChanged",
    "Clock",
    "ContractError",
    "Decision",
    "DeferredTask",
    "DegradedAnswer",
    "Dialect",
    "Escalation",
    "Failure",
    "FakeClock",
    "FrameKey",
    "FrameReader",
    "FrameRules",
    "Impact",
    "Observation",
    "PassedThrough",
    "ProbeClaim",
    "QuotaSignal",
    "Refused",
    "Rejection",
    "RequestsDecided",
    "Resolution",
    "Retry",
    "Review",
    "RungAddress",
    "Spent",
    "Step",
    "SystemClock",
    "TaskResult",
    "ToolMode",
    "TripRecord",
    "decode_event",
    "seal",
]
