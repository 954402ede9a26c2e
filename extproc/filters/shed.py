"""Load shedding's answer: a worker at policy.max_in_flight answers a new request at once, before
any other work, with a 503, a Retry-After and an error body in the client's dialect."""

from __future__ import annotations

from ..core import Dialect, Failure, Refused
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
    failure = Failure.SERVER_ERROR  # the 503 of the taxonomy (CLIENT_STATUS)
    retry_after = policy.shed_retry_after_s
    headers = {**own_answer_headers(failure, policy.stamp), "retry-after": str(retry_after)}
    body = render_error(dialect.value, failure, f"Rungway is at capacity; retry after {retry_after}s")
    response = immediate(503, headers, body)
    # Shed before the caller is identified (the cheapest answer): no tenant yet. Marks the
    # answer as already rendered, so Envoy's local-reply mappers leave it alone.
    return with_metadata(response, META_DECISION, Refused(UNAUTHENTICATED_TENANT, policy.default_task).encode()), Shed()
