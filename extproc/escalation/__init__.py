"""Human escalation (E2): when a served answer waits for a person instead, and an escalation's
lifecycle (pure).

Owns: whether a request is armed for escalation (`armed`: its tenant's rule, its impact, never a
stream, a probe or a replay a person decided on; `hands_off`: a task class whose outage answer is
a human handoff, T6 tier 3), which signals fire on an answer (`triggers`:
the serving rung's tier, the primary's health score, the task's contract, the answer's mean
token logprob), and the states an escalation goes through (`EscalationState`, a transition
table: open → approved / redirected / rejected / expired). May import: core, policy.
"""

from .lifecycle import EscalationState, IllegalEscalationError, resolved_state, transition
from .rules import Signals, armed, at_least, hands_off, triggers

__all__ = [
    "EscalationState",
    "IllegalEscalationError",
    "Signals",
    "armed",
    "at_least",
    "hands_off",
    "resolved_state",
    "transition",
    "triggers",
]
