"""The workers' counters as /status shows them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from extproc.runtime.metrics import Metrics, stream_summary


def test_stream_summary_sums_stream_ends_and_groups_rescues_by_path() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.streams.labels("complete").inc(3)
    m.streams.labels("cut").inc()
    m.rescues.labels("main", "0", "1", "rescued").inc(2)
    m.rescues.labels("main", "0", "1", "rescue_diverged").inc()
    m.rescues.labels("main", "1", "2", "rescue_stalled").inc()
    summary = stream_summary(registry.collect())
    assert summary["ended"] == {"complete": 3, "cut": 1}
    assert summary["rescues"] == [
        {"ladder": "main", "from_rung": 0, "to_rung": 1, "rescue_diverged": 1, "rescued": 2},
        {"ladder": "main", "from_rung": 1, "to_rung": 2, "rescue_stalled": 1},
    ]


def test_stream_summary_of_nothing_is_empty() -> None:
    assert stream_summary(CollectorRegistry().collect()) == {"ended": {}, "rescues": []}
