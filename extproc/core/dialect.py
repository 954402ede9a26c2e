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
    TOOLS = "tools"
    JSON_MODE = "json_mode"
    STREAMING = "streaming"
    VISION = "vision"
