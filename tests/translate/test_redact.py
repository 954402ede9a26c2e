"""Key-shaped text never survives redaction: examples from providers' real error messages, and
properties over arbitrary text with a key of every known shape embedded anywhere in it."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Failure
from extproc.translate import provider_header_scrub, redact_error_body, redact_secrets, render_error
from extproc.translate.redact import REDACTED

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Incorrect API key provided: sk-proj-****abcd. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "Incorrect API key provided: [redacted]. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        ("Incorrect API key provided: sk-abc1***********wxyz.", "Incorrect API key provided: [redacted]."),
        ("invalid x-api-key", "invalid x-api-key"),
        ("key ****f00d was revoked", "key [redacted] was revoked"),
        ("Authorization: Bearer abc", "Authorization: Bearer [redacted]"),
        ("bad header x-api-key: short1", "bad header x-api-key: [redacted]"),
        ("token=0123456789abcdef0123456789abcdef rejected", "token=[redacted] rejected"),
        ("sk-ant-api03-Zm9vYmFy_baz-QUJD is not valid", "[redacted] is not valid"),
        ("api_key='hunter2', retry", "api_key=[redacted], retry"),
        ('{"access_token": "eyJhbGciOi.x"}', '{"access_token": [redacted]}'),
    ],
)
def test_provider_messages_lose_their_keys_and_keep_their_words(text: str, expected: str) -> None:
    assert redact_secrets(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The model `claude-3-5-sonnet-20241022` does not exist",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130001 tokens.",
        "prompt is too long: 250000 tokens > 200000 maximum",
        "Rate limit reached for gpt-4o-mini-2024-07-18 in organization org-abc on tokens per min (TPM).",
        "insufficient_quota: You exceeded your current quota",
        "the provider did not answer within the rung's 2.5s budget",
    ],
)
def test_ordinary_error_messages_pass_unchanged(text: str) -> None:
    assert redact_secrets(text) == text


def _keys() -> st.SearchStrategy[str]:
    """Every shape of credential a provider may echo, real or masked."""
    prefix = st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "sk-svcacct-", "sk_live_", "gsk_", "xai-", "hf_"])
    prefixed = st.builds(lambda p, body: p + body, prefix, st.text(B64URL, min_size=8, max_size=120))
    masked = st.builds(
        lambda p, stars, tail: p + "*" * stars + tail,
        st.one_of(st.just(""), prefix),
        st.integers(3, 80),
        st.text(ALNUM, max_size=8),
    )
    hex_key = st.text("0123456789abcdef", min_size=24, max_size=64)
    base64_key = st.text(B64, min_size=24, max_size=88).map(lambda k: k + "==")
    mixed = st.text(ALNUM, min_size=16, max_size=23).filter(
        lambda k: any(c.isdigit() for c in k) and any(c.isalpha() for c in k)
    )
    return st.one_of(prefixed, masked, hex_key, base64_key, mixed)


def _survivors(key: str, out: str) -> list[str]:
    """Parts of the key (its last 4 characters, or the key itself) left in `out`."""
    visible = out.replace(REDACTED, "\0")
    return [part for part in (key, key[-4:]) if part.strip("*") and part in visible]


@given(before=st.text(), key=_keys(), after=st.text())
def test_a_key_anywhere_in_any_text_never_survives(before: str, key: str, after: str) -> None:
    out = redact_secrets(before + key + after)
    # The key's tail may of course appear where the surrounding text itself had it.
    assert [p for p in _survivors(key, out) if p not in before and p not in after] == []


@given(before=st.text(), key=_keys(), after=st.text())
def test_a_key_behind_a_scheme_or_a_name_never_survives(before: str, key: str, after: str) -> None:
    for lead in ("Bearer ", "bearer\t", "api_key=", "x-api-key: ", 'secret: "'):
        out = redact_secrets(before + lead + key + after)
        assert [p for p in _survivors(key, out) if p not in before and p not in after] == []


@given(st.text())
def test_redaction_is_idempotent(text: str) -> None:
    once = redact_secrets(text)
    assert redact_secrets(once) == once


@given(key=_keys(), status=st.sampled_from([401, 403, 429]))
def test_a_json_error_body_stays_json_with_its_key_gone(key: str, status: int) -> None:
    body = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error", "code": status}}
    ).encode()
    cleaned = redact_error_body(body)
    assert key not in cleaned.decode()
    parsed = json.loads(cleaned)
    assert parsed["error"]["type"] == "invalid_request_error" and parsed["error"]["code"] == status
    assert parsed["error"]["message"].startswith("Incorrect API key provided: [redacted]")


@given(st.binary())
def test_any_body_is_redacted_without_raising(body: bytes) -> None:
    assert isinstance(redact_error_body(body), bytes)


def test_a_text_error_body_is_redacted_as_text() -> None:
    assert redact_error_body(b"<html>401: Bearer sk-live-abcdefgh1234</html>") == b"<html>401: Bearer [redacted]"


def test_every_error_rungway_renders_is_redacted() -> None:
    for dialect in ("openai", "anthropic"):
        body = render_error(dialect, Failure.ACCESS_DENIED, "Incorrect API key provided: sk-proj-****abcd")
        assert b"abcd" not in body and b"[redacted]" in body


def test_a_providers_response_headers_lose_cookies_and_key_shaped_values_but_keep_ids() -> None:
    headers = {
        ":status": "401",
        "content-type": "application/json",
        "x-request-id": "req_0123456789abcdef0123456789abcdef",
        "x-ratelimit-remaining-requests": "99",
        "set-cookie": "session=abc",
        "www-authenticate": "Bearer realm=api",
        "x-echo-auth": "Bearer sk-proj-0123456789abcdefghij",
        "x-debug": "plain words",
    }
    scrub = provider_header_scrub(headers)
    assert set(scrub.remove) == {"set-cookie", "www-authenticate"}
    assert scrub.replace == {"x-echo-auth": "Bearer [redacted]"}
