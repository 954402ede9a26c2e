"""The package's public names are pinned (httpx's test_exported_members)."""

from __future__ import annotations

from pathlib import Path

import extproc
import extproc.translate


def test_extproc_exports_exactly_its_public_names() -> None:
    assert sorted(extproc.__all__) == [
        "Failure",
        "NeedBody",
        "Policy",
        "PolicyError",
        "Refusal",
        "RequestFeatures",
        "Route",
        "choose",
        "load_policy",
        "parse_policy",
    ]


def test_translate_exports_exactly_its_public_names() -> None:
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


def test_every_exported_name_resolves() -> None:
    for module in (extproc, extproc.translate):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_package_ships_its_type_marker() -> None:
    assert extproc.__file__ is not None
    assert (Path(extproc.__file__).parent / "py.typed").is_file()
