"""Every case in tests/golden/translate: a client/provider exchange and its exact translation.

A case is one JSON file: {"kind": "request" | "response" | "stream", "direction": "X_to_Y",
"model": ..., "input": ..., "expected": ...} or, for a refused input, "error": <message part>.
Stream cases give the provider's SSE events as texts and the client's SSE events as texts
(joined, they are the client's byte stream); "writer" holds the writer's id/created/include_usage.
Response cases towards an OpenAI client give "created".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.translate import (
    AnthropicStreamReader,
    AnthropicStreamWriter,
    OpenAIStreamReader,
    OpenAIStreamWriter,
    SseParser,
    TranslationError,
    anthropic_to_openai,
    openai_to_anthropic,
)

GOLDEN = Path(__file__).parent.parent / "golden" / "translate"
CASES = sorted(GOLDEN.glob("*.json"))
DIRECTIONS = {"openai_to_anthropic", "anthropic_to_openai"}


def relay_stream(case: dict[str, Any]) -> str:
    writer_args = case["writer"]
    reader: OpenAIStreamReader | AnthropicStreamReader
    writer: OpenAIStreamWriter | AnthropicStreamWriter
    if case["direction"] == "openai_to_anthropic":
        reader = AnthropicStreamReader()
        writer = OpenAIStreamWriter(
            id=writer_args["id"],
            model=case["model"],
            created=writer_args["created"],
            include_usage=writer_args["include_usage"],
        )
    else:
        reader = OpenAIStreamReader()
        writer = AnthropicStreamWriter(id=writer_args["id"], model=case["model"])
    parser = SseParser()
    out = bytearray()
    for text in case["input"]:
        for event in parser.feed(text.encode()):
            for delta in reader.read(event):
                out += writer.write(delta)
    assert parser.pending == b""
    return out.decode()


def translate(case: dict[str, Any]) -> Any:
    module = openai_to_anthropic if case["direction"] == "openai_to_anthropic" else anthropic_to_openai
    if case["kind"] == "request":
        return module.request(case["input"], case["model"])
    if case["kind"] == "response":
        if module is openai_to_anthropic:
            return openai_to_anthropic.response(case["input"], case["model"], created=case["created"])
        return anthropic_to_openai.response(case["input"], case["model"])
    return relay_stream(case)


def test_there_are_golden_cases_for_every_kind_and_direction() -> None:
    cases = [json.loads(path.read_text()) for path in CASES]
    assert {(c["kind"], c["direction"]) for c in cases} == {
        (kind, direction) for kind in ("request", "response", "stream") for direction in DIRECTIONS
    }
    assert len(cases) >= 25


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_golden_case(path: Path) -> None:
    case = json.loads(path.read_text())
    assert case["direction"] in DIRECTIONS
    if "error" in case:
        with pytest.raises(TranslationError) as caught:
            translate(case)
        assert case["error"] in caught.value.message
        return
    expected = case["expected"]
    if case["kind"] == "stream":
        expected = "".join(expected)
    assert translate(case) == expected
