"""Deferral's answers, rendered without I/O: the 202 that says a request was accepted for
later (or why not), and a deferred task's state or answer for its client.

The header contract (README "Deferred requests"): a 202 carries `x-rungway-task-id`,
`location` (the status URL, on the same listener), `x-rungway-task-status` and `retry-after`
(seconds until it is worth asking); the body is a JSON object in the client's dialect's
envelope (`object` / `type`: `rungway.task`) with the same id and status URL.
"""

from __future__ import annotations

import json

from ..audit import Entry
from ..core import DeferredTask, Dialect, Failure, Refused
from ..core.names import LOCATION, META_DECISION, TASK_ID_HEADER, TASK_STATUS_HEADER, TASKS_PATH
from ..deferral import TaskState, TaskView
from ..translate import render_error
from .effects import Deferred
from .flags import flags, own_answer_headers
from .wire import ProcessingResponse, immediate, with_metadata

POLL_AFTER_S = 1  # the retry-after of a task not answered yet


def status_url(task_id: str) -> str:
    return TASKS_PATH + task_id


def task_id_of(path: str) -> str | None:
    """The task id of a status URL's path, or None for a malformed one."""
    task_id = path.split("?", 1)[0].removeprefix(TASKS_PATH)
    if not 8 <= len(task_id) <= 64 or not all(c.isalnum() or c in "-_" for c in task_id):
        return None
    return task_id


def deferral(
    task: DeferredTask, capacity: int, reason: Failure, policy_version: str, entry: Entry | None = None
) -> Deferred:
    """The effect that stores `task`, with the three answers the runtime picks from."""
    dialect = task.dialect.value
    accepted = _rendered(
        202,
        task_headers(task.id, TaskState.QUEUED, flags_=_deferred_flags(reason, policy_version)),
        task_body(task.id, task.dialect, task.model, TaskState.QUEUED, task.accepted_at),
        task,
    )
    full_headers = {**own_answer_headers(Failure.RATE_LIMITED, policy_version), "retry-after": "30"}
    message = (
        f"tenant {task.tenant!r} already has {capacity} deferred requests waiting "
        "(deferral.max_per_tenant); retry later"
    )
    full = _rendered(429, full_headers, render_error(dialect, Failure.RATE_LIMITED, message), task)
    down = "no permitted rung can serve this request now and it could not be queued; retry later"
    unavailable = _rendered(
        503,
        {**own_answer_headers(Failure.SERVER_ERROR, policy_version), "retry-after": "5"},
        render_error(dialect, Failure.SERVER_ERROR, down),
        task,
    )
    return Deferred(task, capacity, accepted, full, unavailable, entry)


def task_answer(
    view: TaskView | None, task_id: str, tenant: str, dialect: Dialect, policy_version: str
) -> ProcessingResponse:
    """A task's state for its own tenant: 202 while waiting, its answer once done, 410 once
    expired, 404 for an id the tenant does not have (another tenant's task included)."""
    if view is None:
        body = render_error(dialect.value, Failure.CLIENT_ERROR, f"no deferred task {task_id!r}")
        return _mark(tenant, immediate(404, own_answer_headers(Failure.CLIENT_ERROR, policy_version), body))
    if view.state is TaskState.DONE and view.result is not None:
        result = view.result
        headers = {**dict(result.headers), **task_headers(view.id, view.state, flags_={})}
        del headers["retry-after"]
        return _mark(tenant, immediate(result.status, headers, result.body))
    if view.state is TaskState.EXPIRED:
        message = f"deferred task {view.id!r} expired before a permitted rung could serve it"
        headers = {**own_answer_headers(Failure.SERVER_ERROR, policy_version), TASK_ID_HEADER: view.id}
        headers[TASK_STATUS_HEADER] = view.state.value
        return _mark(tenant, immediate(410, headers, render_error(dialect.value, Failure.SERVER_ERROR, message)))
    headers = task_headers(view.id, view.state, flags_={"content-type": "application/json"})
    return _mark(tenant, immediate(202, headers, task_body(view.id, dialect, "", view.state, view.accepted_at)))


def _deferred_flags(reason: Failure, policy_version: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        **flags(
            served_by="rungway",
            tier=None,
            degraded=True,
            reason=reason,
            policy_version=policy_version,
            attempts=0,
        ),
    }


def task_headers(task_id: str, state: TaskState, *, flags_: dict[str, str]) -> dict[str, str]:
    return {
        **flags_,
        TASK_ID_HEADER: task_id,
        TASK_STATUS_HEADER: state.value,
        LOCATION: status_url(task_id),
        "retry-after": str(POLL_AFTER_S),
    }


def task_body(task_id: str, dialect: Dialect, model: str, state: TaskState, accepted_at: float) -> bytes:
    """A task in the envelope of the client's dialect: an OpenAI-shaped object with no choices,
    an Anthropic-shaped message with no content; SDKs that parse it do not fail on it."""
    common = {"id": task_id, "status": state.value, "status_url": status_url(task_id), "created": int(accepted_at)}
    if dialect is Dialect.ANTHROPIC:
        body: dict[str, object] = {"type": "rungway.task", "role": "assistant", "content": [], "model": model, **common}
    else:
        body = {"object": "rungway.task", "choices": [], "model": model, **common}
    return json.dumps(body, separators=(",", ":")).encode()


def _rendered(status: int, headers: dict[str, str], body: bytes, task: DeferredTask) -> ProcessingResponse:
    return with_metadata(immediate(status, headers, body), META_DECISION, Refused(task.tenant, task.task).encode())


def _mark(tenant: str, response: ProcessingResponse) -> ProcessingResponse:
    # Envoy's local-reply mappers leave an answer Rungway rendered as it is.
    return with_metadata(response, META_DECISION, Refused(tenant, "").encode())
