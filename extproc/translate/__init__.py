"""Translation between the OpenAI Chat Completions and Anthropic Messages dialects.

Pure functions and small state machines: parsed JSON and SSE bytes in, parsed JSON and SSE bytes
out. A module `X_to_Y` serves a client speaking dialect X from a provider speaking dialect Y;
`api_pair(client, provider)` is the one protocol the rest of Rungway uses (path, auth, request,
answer, stream relay, errors), so nothing outside this package branches on the dialect.
`tools` applies a rung's tool mode and `context` fits a conversation into a smaller window
(both on the client's body, before translation). `rescue` continues a stream cut after its first token from a fallback rung (`rescue_body`,
`Splice`), starting from what the relay says the client has (`StreamRelay.delivered`).
May import: core.
"""

from extproc.translate import anthropic_to_openai, openai_to_anthropic
from extproc.translate.answer import AnswerFacts, ToolCall, answer_facts, input_tokens, mean_logprob, output_tokens
from extproc.translate.canned import canned_answer
from extproc.translate.context import CHARS_PER_TOKEN, ContextTrim, estimate_tokens, trim_context
from extproc.translate.errors import (
    ProviderError,
    TranslationError,
    classify,
    dump_json,
    load_json,
    parse_provider_error,
    redact_error_body,
    render_error,
)
from extproc.translate.protocol import ApiPair, api_pair
from extproc.translate.redact import HeaderScrub, provider_header_scrub, redact_secrets
from extproc.translate.relay import Delivered, StreamRelay, stream_failure
from extproc.translate.rescue import (
    PrefixMatch,
    RescueOutcome,
    RescueStrategy,
    Splice,
    SpliceFailure,
    SpliceState,
    rescue_body,
    rescue_strategy,
)
from extproc.translate.sse import SseEvent, SseParser
from extproc.translate.stream import (
    AnthropicStreamReader,
    AnthropicStreamWriter,
    Delta,
    Done,
    Finish,
    FinishReason,
    MessageStart,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
    classify_stream_error,
)
from extproc.translate.tools import PLAN_KEY, ToolShaping, shape_tools, tool_name

__all__ = [
    "CHARS_PER_TOKEN",
    "PLAN_KEY",
    "AnswerFacts",
    "AnthropicStreamReader",
    "AnthropicStreamWriter",
    "ApiPair",
    "ContextTrim",
    "Delivered",
    "Delta",
    "Done",
    "Finish",
    "FinishReason",
    "HeaderScrub",
    "MessageStart",
    "OpenAIStreamReader",
    "OpenAIStreamWriter",
    "PrefixMatch",
    "ProviderError",
    "RescueOutcome",
    "RescueStrategy",
    "Splice",
    "SpliceFailure",
    "SpliceState",
    "SseEvent",
    "SseParser",
    "StreamError",
    "StreamRelay",
    "TextDelta",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallStart",
    "ToolShaping",
    "TranslationError",
    "Usage",
    "answer_facts",
    "anthropic_to_openai",
    "api_pair",
    "canned_answer",
    "classify",
    "classify_stream_error",
    "dump_json",
    "estimate_tokens",
    "input_tokens",
    "load_json",
    "mean_logprob",
    "openai_to_anthropic",
    "output_tokens",
    "parse_provider_error",
    "provider_header_scrub",
    "redact_error_body",
    "redact_secrets",
    "render_error",
    "rescue_body",
    "rescue_strategy",
    "shape_tools",
    "stream_failure",
    "tool_name",
    "trim_context",
]
