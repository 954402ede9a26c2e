"""The API-pair protocol: everything that depends on the client's and the provider's dialect."""

from __future__ import annotations

import pytest

from extproc.core import Dialect, Failure
from extproc.policy import Provider
from extproc.translate import api_pair

PAIRS = [(c, p) for c in (Dialect.OPENAI, Dialect.ANTHROPIC) for p in (Dialect.OPENAI, Dialect.ANTHROPIC)]


@pytest.mark.parametrize(
    ("base_url", "dialect", "path"),
    [
        ("https://api.openai.com", "openai", "/v1/chat/completions"),
        ("https://api.openai.com/", "openai", "/v1/chat/completions"),
        ("https://api.openai.com/v1", "openai", "/v1/chat/completions"),
        ("https://api.openai.com/v1/", "openai", "/v1/chat/completions"),
        ("https://api.anthropic.com", "anthropic", "/v1/messages"),
        ("https://api.anthropic.com/v1", "anthropic", "/v1/messages"),
        ("http://10.0.0.7:8000/v1", "openai_compatible", "/v1/chat/completions"),
        ("https://gw.test/openai", "openai", "/openai/v1/chat/completions"),
        ("https://gw.test/team/anthropic/v1", "anthropic", "/team/anthropic/v1/messages"),
        ("https://gw.test/v1x", "openai", "/v1x/v1/chat/completions"),
    ],
)
def test_chat_path_joins_prefix_and_endpoint_without_doubling_v1(base_url: str, dialect: str, path: str) -> None:
    provider = Provider.model_validate({"base_url": base_url, "dialect": dialect})
    assert api_pair(Dialect.OPENAI, provider.dialect).provider_path(provider.path_prefix) == path


def test_openai_compatible_providers_speak_openai() -> None:
    assert api_pair(Dialect.ANTHROPIC, Dialect.OPENAI_COMPATIBLE) is api_pair(Dialect.ANTHROPIC, Dialect.OPENAI)


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_each_pair_translates_only_across_dialects(client: Dialect, provider: Dialect) -> None:
    pair = api_pair(client, provider)
    assert (pair.client, pair.provider, pair.translates) == (client, provider, client is not provider)


def test_auth_headers_are_the_providers_own() -> None:
    assert api_pair(Dialect.ANTHROPIC, Dialect.OPENAI).auth_headers("sk-o") == {"authorization": "Bearer sk-o"}
    assert api_pair(Dialect.OPENAI, Dialect.ANTHROPIC).auth_headers("sk-a") == {
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-a",
    }
    assert api_pair(Dialect.ANTHROPIC, Dialect.ANTHROPIC).auth_headers(
        None, anthropic_version="2024-10-22", anthropic_beta="b1"
    ) == {"anthropic-version": "2024-10-22", "anthropic-beta": "b1"}


@pytest.mark.parametrize(("client", "provider"), PAIRS)
def test_errors_and_stream_ids_are_in_the_clients_style(client: Dialect, provider: Dialect) -> None:
    pair = api_pair(client, provider)
    body = pair.error(Failure.TIMEOUT, "slow")
    assert (b'"type":"error"' in body) is (client is Dialect.ANTHROPIC)
    assert pair.stream_id("ab").startswith("msg_" if client is Dialect.ANTHROPIC else "chatcmpl-")


def test_the_same_dialect_only_swaps_the_model() -> None:
    body = {"model": "gpt-4o", "messages": [], "temperature": 0.1}
    assert api_pair(Dialect.OPENAI, Dialect.OPENAI).request(body, "gpt-4o-mini") == {**body, "model": "gpt-4o-mini"}
    assert body["model"] == "gpt-4o"  # the client's body is not changed in place
