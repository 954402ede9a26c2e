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


class ToolMode(StrEnum):
    """What of a request's tools a rung is offered (T5), set per rung in the policy."""

    FULL = "full"
    # No tools; the model is asked to answer with the calls it would make, as data.
    PLAN_ONLY = "plan_only"
    # The policy's write tools (a refund, an email) removed; the rest offered.
    READ_ONLY = "read_only"
    NO_TOOLS = "no_tools"
    # Product tier 2: only the policy's retrieval tools (search_kb); answers cite what they find.
    RETRIEVAL_ONLY = "retrieval_only"

    @property
    def sends_tools(self) -> bool:
        return self in (ToolMode.FULL, ToolMode.READ_ONLY, ToolMode.RETRIEVAL_ONLY)
