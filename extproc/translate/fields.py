"""Reading the loosely typed JSON both APIs send: the small checks every translator repeats."""

from __future__ import annotations

import json
from typing import Any

from .errors import TranslationError


def dumps(value: Any) -> str:
    """Compact JSON text, as providers send tool arguments."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def text_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def text_field(part: dict[str, Any], at: str) -> str:
    """A content part's required `text`; `at` names the part in the error."""
    text = part.get("text")
    if not isinstance(text, str):
        raise TranslationError(f"{at}.text must be a string")
    return text
