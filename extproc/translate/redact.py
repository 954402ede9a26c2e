"""Key-shaped text removed from what a provider says before a client reads it.

Providers echo credentials in their errors ("Incorrect API key provided: sk-proj-****abcd"), and
Rungway passes a provider's error message (or its whole body, when the client speaks the
provider's dialect) on to the client. A rung's key is Rungway's, not the client's: no part of it
may reach the client, masked or not. Redaction errs on the side of removing too much: a long
opaque token in an error message (a request id, say) is lost with the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

REDACTED: Final = "[redacted]"

# A scheme and its credential: "Bearer <anything>" (also Basic), whatever the token's shape.
_AUTH_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+")
# `name: value` or `name=value` for names that hold a secret.
_NAMED: Final = re.compile(r"(?i)(api[_-]?key|token|secret|password)([\"']?\s*[:=]\s*)[\"']?[^\s\"',;]+[\"']?")
# A word: a maximal run of the characters keys (plain, base64, base64url, hex, masked) are made of,
# less a sentence's closing dots.
_WORD: Final = re.compile(r"[A-Za-z0-9_+/=*.\u2026-]*[A-Za-z0-9_+/=*\u2026-]")
# Vendors' key prefixes: "sk-" (OpenAI's sk-proj-/sk-svcacct-, Anthropic's sk-ant-), Groq, xAI,
# Hugging Face, Perplexity, NVIDIA, Replicate, Google. Found anywhere in a word: a key glued to
# other text is still a key.
_PREFIXED: Final = re.compile(r"(sk[-_]|gsk_|xai-|hf_|pplx-|nvapi-|r8_|AIza)[A-Za-z0-9_*.\u2026-]{8,}")
# A masked key: three or more `*` (or an ellipsis between key characters).
_MASKED: Final = re.compile(r"\*{3,}|[A-Za-z0-9]\u2026|[A-Za-z0-9]\.\.\.[A-Za-z0-9]")
# A long opaque run (no `-` or `.` to break it into the short parts of a model name or a URL).
_OPAQUE: Final = re.compile(r"[A-Za-z0-9_+/=]{24,}")
# Shorter runs count when they mix letters and digits as random strings do ("claude-3-5" does not
# reach this length; hex and base64 keys of 16 and more characters do).
_MIXED: Final = re.compile(r"[A-Za-z0-9_+/=]{16,}")


def _is_key(word: str) -> bool:
    if _PREFIXED.search(word) or _MASKED.search(word) or _OPAQUE.search(word):
        return True
    return any(_random_looking(run) for run in _MIXED.findall(word))


def _random_looking(run: str) -> bool:
    """Letters and digits mixed, as in a random string (not a snake_case identifier)."""
    return any(c.isdigit() for c in run) and any(c.isalpha() for c in run)


def _redact_word(match: re.Match[str]) -> str:
    word = match.group()
    return REDACTED if _is_key(word) else word


def redact_secrets(text: str) -> str:
    """`text` without anything shaped like a credential: bearer tokens, `api_key=...` values,
    vendor-prefixed keys, masked keys (`sk-proj-****abcd`, `****abcd`) and long base64 or hex
    tokens. The whole word holding one goes, so no prefix or suffix of a key survives."""
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _NAMED.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _WORD.sub(_redact_word, text)


def redact_json(value: Any) -> Any:
    """Parsed JSON with every string in it (keys too) passed through `redact_secrets`."""
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    if isinstance(value, dict):
        return {redact_secrets(str(k)): redact_json(v) for k, v in value.items()}
    return value


# Response headers a provider sends whose values are ids, limits and formats: passed as they are.
_KNOWN_HEADERS: Final = frozenset(
    {"content-type", "content-length", "content-encoding", "date", "server", "via", "vary", "cache-control",
     "connection", "transfer-encoding", "retry-after", "request-id", "x-request-id", "cf-ray", "alt-svc"}
)  # fmt: skip
_KNOWN_PREFIXES: Final = ("x-ratelimit-", "openai-", "anthropic-", "x-envoy-", "x-rungway-", "access-control-")
# Never the client's: a provider's session cookies belong to Rungway's key, not the app.
_DROPPED: Final = frozenset({"set-cookie", "set-cookie2", "www-authenticate", "proxy-authenticate"})


@dataclass(frozen=True, slots=True)
class HeaderScrub:
    """What to change in a provider's response headers before a client sees them."""

    replace: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


def provider_header_scrub(headers: Mapping[str, str]) -> HeaderScrub:
    """Cookies and auth challenges dropped; any other unknown header's value redacted if it holds
    something shaped like a key (a provider may echo the rung's key anywhere)."""
    replace: dict[str, str] = {}
    remove: list[str] = []
    for name, value in headers.items():
        if name in _DROPPED:
            remove.append(name)
        elif name.startswith(":") or name in _KNOWN_HEADERS or name.startswith(_KNOWN_PREFIXES):
            continue
        elif (clean := redact_secrets(value)) != value:
            replace[name] = clean
    return HeaderScrub(replace, tuple(remove))
