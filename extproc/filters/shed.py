"""Load shedding's answer: a worker at policy.max_in_flight answers a new request at once, before
any other work, with a 503, a Retry-After and an error body in the client's dialect; a request
no rung of its route has capacity for (routing/capacity.py) gets the same answer, a 429 when its
tenant holds its share."""

from __future__ import annotations

from ..core import CLIENT_STATUS, Dialect, Failure, Refused
from ..core.names import ANTHROPIC_MESSAGES_PATH, META_DECISION, UNAUTHENTICATED_TENANT
from ..policy import Policy
from ..translate import render_error
from .effects import Shed
from .flags import own_answer_headers
from .wire import ProcessingRequest, ProcessingResponse, header_map, immediate, with_metadata

_PATH = frozenset({":path"})


def shed(request: ProcessingRequest, policy: Policy) -> tuple[ProcessingResponse, Shed]:
    """The answer, and its effect (counted as a shed request)."""
    path = header_map(request.request_headers, _PATH).get(":path", "").split("?", 1)[0]
    dialect = Dialect.ANTHROPIC if path == ANTHROPIC_MESSAGES_PATH else Dialect.OPENAI
    # Shed before the caller is identified (the cheapest answer): no tenant yet.
    answer = over_capacity(policy, dialect, UNAUTHENTICATED_TENANT, policy.default_task, "Rungway is at capacity")
    return answer, Shed()


def over_capacity(
    policy: Policy, dialect: Dialect, tenant: str, task: str, why: str, *, tenant_share: bool = False
) -> ProcessingResponse:
    """503 (429 when the tenant's own share is what is used up) with a Retry-After."""
    # The 503 and the 429 of the taxonomy (CLIENT_STATUS).
    failure = Failure.RATE_LIMITED if tenant_share else Failure.SERVER_ERROR
    retry_after = policy.shed_retry_after_s
    headers = {**own_answer_headers(failure, policy.stamp), "retry-after": str(retry_after)}
    body = render_error(dialect.value, failure, f"{why}; retry after {retry_after}s")
    response = immediate(CLIENT_STATUS[failure], headers, body)
    # Marks the answer as already rendered, so Envoy's local-reply mappers leave it alone.
    return with_metadata(response, META_DECISION, Refused(tenant, task).encode())
