"""The approvals file on disk (routing/approval.py is its pure half): `rungway approve` and the
admin API edit it under a lock and replace it atomically; every worker follows it within a
second; a broken file at start stops the start, a broken rewrite keeps the last good one."""

from __future__ import annotations

import time
from pathlib import Path

from ..routing.approval import Approval, ApprovalError, Approvals
from .statefile import WatchedFile, editing, read_text, write_atomic


def read_approvals(path: Path) -> Approvals:
    """The approvals at `path` (an absent file: none); ApprovalError if unreadable or broken."""
    text = read_text(path, ApprovalError, "approvals file")
    return Approvals() if text is None else Approvals.parse(text)


def grant(path: Path, approval: Approval) -> Approvals:
    with editing(path):
        approvals = read_approvals(path).granted(approval, time.time())
        write_atomic(path, approvals.encode())
    return approvals


def revoke(path: Path, tenant: str, task: str | None) -> Approvals:
    with editing(path):
        approvals = read_approvals(path).revoked(tenant, task, time.time())
        write_atomic(path, approvals.encode())
    return approvals


class ApprovalsFile(WatchedFile[Approvals]):
    def __init__(self, path: Path) -> None:
        super().__init__(path, read_approvals, ApprovalError, "approvals")
