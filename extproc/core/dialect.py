"""The provider APIs Rungway speaks, and what a provider can do."""

from __future__ import annotations

from enum import StrEnum


class Dialect(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"

    @property
    def wire(self) -> Dialect:
        """The API shape on the wire: OpenAI-compatible servers speak OpenAI's."""
        return Dialect.OPENAI if self is Dialect.OPENAI_COMPATIBLE else self


class Capability(StrEnum):
    """What a provider can do, declared in the policy (`capabilities: [tools, streaming, ...]`)."""

    TOOLS = "tools"
    JSON_MODE = "json_mode"
    STREAMING = "streaming"
    VISION = "vision"
    # Continues a trailing assistant message instead of answering afresh (Anthropic's Messages API
    # does; OpenAI's Chat Completions is not documented to). A stream rescued by such a rung gets
    # the delivered text as that message; any other rung must regenerate and match the prefix.
    # Not a default: a rung that ignores the prefill would repeat what the client already has.
    PREFILL = "prefill"
