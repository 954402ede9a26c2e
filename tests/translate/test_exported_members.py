from __future__ import annotations

import extproc.translate


def test_public_names_are_pinned() -> None:
    assert sorted(extproc.translate.__all__) == [
        "AnswerFacts",
        "AnthropicStreamReader",
        "AnthropicStreamWriter",
        "ApiPair",
        "Delivered",
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
        "StreamRelay",
        "TextDelta",
        "ToolCall",
        "ToolCallArgs",
        "ToolCallStart",
        "TranslationError",
        "Usage",
        "answer_facts",
        "anthropic_to_openai",
        "api_pair",
        "classify",
        "classify_stream_error",
        "dump_json",
        "load_json",
        "openai_to_anthropic",
        "output_tokens",
        "parse_provider_error",
        "redact_error_body",
        "redact_secrets",
        "render_error",
        "stream_failure",
    ]
    for name in extproc.translate.__all__:
        assert getattr(extproc.translate, name) is not None
