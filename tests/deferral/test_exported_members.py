"""extproc.deferral's public names are pinned."""

from __future__ import annotations

import extproc.deferral


def test_deferral_exports_exactly_its_public_names() -> None:
    assert sorted(extproc.deferral.__all__) == [
        "Candidate",
        "IllegalTransitionError",
        "Swept",
        "TaskQueue",
        "TaskState",
        "TaskView",
        "Verdict",
        "deferrable",
        "fair_order",
        "is_due",
        "may_wait",
        "replay_verdict",
        "retry_delay",
        "servable",
        "transition",
    ]
    for name in extproc.deferral.__all__:
        assert getattr(extproc.deferral, name) is not None
