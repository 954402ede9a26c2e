from __future__ import annotations

import extproc.translate


def test_public_names_are_pinned() -> None:
    assert sorted(extproc.translate.__all__) == [
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
    for name in extproc.translate.__all__:
        assert getattr(extproc.translate, name) is not None
