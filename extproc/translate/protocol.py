"""One protocol per (client, provider) API pair: everything that depends on which API the client
speaks and which the rung's provider speaks — the provider's path and auth headers, request and
answer translation, the stream relay, stream ids and error bodies — lives behind `ApiPair`, so
no other module branches on the dialect.

Four pairs: an OpenAI or Anthropic client served by an OpenAI(-compatible) or Anthropic provider.
Each is a class composed of what its client side and its provider side know.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ..core import Dialect, Failure
from ..core.names import ANTHROPIC_MESSAGES_PATH, OPENAI_CHAT_PATH
from . import anthropic_to_openai, openai_to_anthropic
from .errors import render_error
from .relay import StreamRelay

# Anthropic requires a version header; used when the client did not send one of its own.
ANTHROPIC_VERSION = "2023-06-01"


class ApiPair(Protocol):
    @property
    def client(self) -> Dialect:
        """The client's wire dialect (OpenAI-compatible is OpenAI)."""
        ...

    @property
    def provider(self) -> Dialect:
        """The provider's wire dialect."""
        ...

    @property
    def translates(self) -> bool: ...

    def provider_path(self, prefix: str) -> str:
        """The provider's chat path under its base URL's path prefix."""
        ...

    def auth_headers(
        self, key: str | None, *, anthropic_version: str | None = None, anthropic_beta: str | None = None
    ) -> dict[str, str]:
        """The rung's credential (and, for Anthropic, API version and betas)."""
        ...

    def request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The client's request body for the provider; raises TranslationError."""
        ...

    def answer(self, parsed: Any, model: str, created: int) -> dict[str, Any]:
        """The provider's whole answer for the client; raises TranslationError."""
        ...

    def relay(
        self, *, model: str, stream_id: str, created: int, include_usage: bool, prompt_tokens: int
    ) -> StreamRelay:
        """A relay of the provider's SSE stream to the client."""
        ...

    def stream_id(self, token: str) -> str:
        """An id for a stream Rungway writes itself, in the client's style."""
        ...

    def error(self, failure: Failure, message: str) -> bytes:
        """An error body in the client's dialect."""
        ...


def api_pair(client: Dialect, provider: Dialect) -> ApiPair:
    return _PAIRS[(client.wire, provider.wire)]


class _Pair:
    client: ClassVar[Dialect]
    provider: ClassVar[Dialect]

    @property
    def translates(self) -> bool:
        return self.client is not self.provider

    def relay(
        self, *, model: str, stream_id: str, created: int, include_usage: bool, prompt_tokens: int
    ) -> StreamRelay:
        return StreamRelay(
            self.client,
            self.provider,
            model=model,
            stream_id=stream_id,
            created=created,
            include_usage=include_usage,
            prompt_tokens=prompt_tokens,
        )

    def error(self, failure: Failure, message: str) -> bytes:
        return render_error(self.client.value, failure, message)

    def __repr__(self) -> str:
        return f"<ApiPair {self.client.value} client → {self.provider.value} provider>"


class _OpenAIClient(_Pair):
    client = Dialect.OPENAI

    def stream_id(self, token: str) -> str:
        return "chatcmpl-rw" + token


class _AnthropicClient(_Pair):
    client = Dialect.ANTHROPIC

    def stream_id(self, token: str) -> str:
        return "msg_rw" + token


def _chat_path(prefix: str, suffix: str) -> str:
    # A base URL that already ends in /v1 (common for OpenAI-compatible servers) is not doubled.
    return prefix.removesuffix("/v1") + suffix


class _OpenAIProvider(_Pair):
    provider = Dialect.OPENAI

    def provider_path(self, prefix: str) -> str:
        return _chat_path(prefix, OPENAI_CHAT_PATH)

    def auth_headers(
        self, key: str | None, *, anthropic_version: str | None = None, anthropic_beta: str | None = None
    ) -> dict[str, str]:
        return {} if key is None else {"authorization": "Bearer " + key}


class _AnthropicProvider(_Pair):
    provider = Dialect.ANTHROPIC

    def provider_path(self, prefix: str) -> str:
        return _chat_path(prefix, ANTHROPIC_MESSAGES_PATH)

    def auth_headers(
        self, key: str | None, *, anthropic_version: str | None = None, anthropic_beta: str | None = None
    ) -> dict[str, str]:
        # An Anthropic client's own API version and betas carry over to Anthropic rungs.
        headers = {"anthropic-version": anthropic_version or ANTHROPIC_VERSION}
        if anthropic_beta:
            headers["anthropic-beta"] = anthropic_beta
        if key is not None:
            headers["x-api-key"] = key
        return headers


class OpenAIToOpenAI(_OpenAIClient, _OpenAIProvider):
    def request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return {**body, "model": model}

    def answer(self, parsed: Any, model: str, created: int) -> dict[str, Any]:
        return dict(parsed)


class OpenAIToAnthropic(_OpenAIClient, _AnthropicProvider):
    def request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return openai_to_anthropic.request(body, model)

    def answer(self, parsed: Any, model: str, created: int) -> dict[str, Any]:
        return openai_to_anthropic.response(parsed, model, created=created)


class AnthropicToOpenAI(_AnthropicClient, _OpenAIProvider):
    def request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return anthropic_to_openai.request(body, model)

    def answer(self, parsed: Any, model: str, created: int) -> dict[str, Any]:
        return anthropic_to_openai.response(parsed, model)


class AnthropicToAnthropic(_AnthropicClient, _AnthropicProvider):
    def request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return {**body, "model": model}

    def answer(self, parsed: Any, model: str, created: int) -> dict[str, Any]:
        return dict(parsed)


_PAIRS: dict[tuple[Dialect, Dialect], ApiPair] = {
    (Dialect.OPENAI, Dialect.OPENAI): OpenAIToOpenAI(),
    (Dialect.OPENAI, Dialect.ANTHROPIC): OpenAIToAnthropic(),
    (Dialect.ANTHROPIC, Dialect.OPENAI): AnthropicToOpenAI(),
    (Dialect.ANTHROPIC, Dialect.ANTHROPIC): AnthropicToAnthropic(),
}
