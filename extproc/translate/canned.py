"""An answer Rungway writes itself, in the client's dialect (T6 product tiers): a policy's
message when no rung can serve — a handoff notice or a static answer — as a well-formed
completion (or a complete stream) that an SDK reads like any other, never an empty answer."""

from __future__ import annotations

from typing import Any

from ..core import Dialect
from .errors import dump_json
from .protocol import api_pair
from .stream import (
    AnthropicStreamWriter,
    Delta,
    Done,
    Finish,
    FinishReason,
    MessageStart,
    OpenAIStreamWriter,
    TextDelta,
    Usage,
)

SSE = "text/event-stream"
JSON = "application/json"


def canned_answer(
    client: Dialect, *, model: str, text: str, stream: bool, include_usage: bool, id_token: str, created: int
) -> tuple[str, bytes]:
    """(content type, body): `text` as the assistant's whole answer, finish "stop", no tokens."""
    pair = api_pair(client, Dialect.OPENAI)
    answer_id = pair.stream_id(id_token)
    if stream:
        deltas: list[Delta] = [MessageStart(answer_id, model), TextDelta(text), Finish(FinishReason.STOP),
                               Usage(0, 0), Done()]  # fmt: skip
        if client.wire is Dialect.ANTHROPIC:
            anthropic = AnthropicStreamWriter(id=answer_id, model=model)
            return SSE, b"".join(anthropic.write(d) for d in deltas)
        openai = OpenAIStreamWriter(id=answer_id, model=model, created=created, include_usage=include_usage)
        return SSE, b"".join(openai.write(d) for d in deltas)
    whole: dict[str, Any] = {
        "id": answer_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return JSON, dump_json(pair.answer(whole, model, created))
