"""The approvals file as workers follow it: edits taken, a broken rewrite never replaces the last
good approvals, a broken file at start stops the start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from extproc.routing.approval import ApprovalError, approval
from extproc.runtime.approvals import ApprovalsFile, grant, read_approvals, revoke


def test_workers_follow_grants_and_revocations_and_keep_the_last_good_file(tmp_path: Path) -> None:
    path = tmp_path / "approvals.json"
    watched = ApprovalsFile(path)  # absent: no approvals yet
    assert watched.value.entries == ()
    grant(path, approval("clinic", 1, 3600, time.time(), by="ann"))
    assert watched.refresh() and watched.value.approved_tier("clinic", "default", time.time()) == 1
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{ half a file")
    assert not watched.refresh()
    assert watched.value.approved_tier("clinic", "default", time.time()) == 1  # the last good one stays
    with pytest.raises(ApprovalError):
        ApprovalsFile(path)  # a broken file at start stops the start
    path.unlink()
    grant(path, approval("clinic", 2, 3600, time.time()))
    revoke(path, "clinic", None)
    assert read_approvals(path).entries == ()
