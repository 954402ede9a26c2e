"""Translation between the OpenAI Chat Completions and Anthropic Messages dialects.

Pure functions and small state machines: parsed JSON and SSE bytes in, parsed JSON and SSE bytes
out. A module `X_to_Y` serves a client speaking dialect X from a provider speaking dialect Y.
"""

from extproc.translate import anthropic_to_openai, openai_to_anthropic
from extproc.translate.errors import (
    ProviderError,
    TranslationError,
    classify,
    dump_json,
    parse_provider_error,
    render_error,
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

__all__ = [
    "AnthropicStreamReader",
    "AnthropicStreamWriter",
    "Delta",
    "Done",
    "Finish",
    "FinishReason",
    "MessageStart",
    "OpenAIStreamReader",
    "OpenAIStreamWriter",
    "ProviderError",
    "SseEvent",
    "SseParser",
    "StreamError",
    "TextDelta",
    "ToolCallArgs",
    "ToolCallStart",
    "TranslationError",
    "Usage",
    "anthropic_to_openai",
    "classify",
    "classify_stream_error",
    "dump_json",
    "openai_to_anthropic",
    "parse_provider_error",
    "render_error",
]
