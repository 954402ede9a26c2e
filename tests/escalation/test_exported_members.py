"""extproc.escalation's public names are pinned."""

from __future__ import annotations

import extproc.escalation


def test_escalation_exports_exactly_its_public_names() -> None:
    assert sorted(extproc.escalation.__all__) == [
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
