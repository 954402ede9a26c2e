"""A bounded soak of fault-mixed streams (tests/soak.py; `make soak` runs 3,000)."""

from __future__ import annotations

import pytest

from tests.soak import run_soak

pytestmark = pytest.mark.e2e


def test_a_few_hundred_fault_mixed_streams_never_crash_envoy_nor_truncate_silently() -> None:
    report = run_soak(streams=240, concurrency=8, seed=7)
    print("\n" + report.summary())
    assert len(report.streams) == 240
    assert not report.truncated, report.truncated[:5]
    assert report.envoy_trouble == [] and report.envoy_restarts == 0
    assert report.sidecar_errors == 0
    # Every fault kind was exercised.
    assert {s.fault for s in report.streams} >= {"malformed_event", "stall_at_watchdog_then_close", "cut"}


def test_fault_mixed_streams_with_rescue_on_never_crash_envoy_nor_truncate_silently() -> None:
    report = run_soak(streams=160, concurrency=8, seed=11, rescue=True)
    print("\n" + report.summary())
    assert not report.truncated, report.truncated[:5]
    assert report.envoy_trouble == [] and report.envoy_restarts == 0
    assert report.sidecar_errors == 0
    rescued = [
        s for s in report.streams if s.fault in ("cut", "stall_then_close") and not s.error_event and not s.exception
    ]
    assert rescued, "no cut or stalled stream was rescued"
    # A provider's reset after the first token (the reset shield) is rescued like a cut: every one.
    resets = [s for s in report.streams if s.fault in ("reset_after_first_token", "stall_then_reset")]
    broken = [s for s in resets if s.error_event or s.exception]
    assert resets and not broken, broken[:3]
