"""Context on hop (F6): fit a conversation into a smaller rung's window, in the client's dialect.

The estimate is a documented heuristic, no tokenizer and no network: a token is about four
characters of the request's compact JSON (the same ratio decide uses on the body's size). It
over-counts JSON punctuation, which errs on the side of fitting.

Trimming keeps the system prompt (OpenAI's system and developer messages, Anthropic's `system`)
and the longest run of latest turns that fits, and drops the middle. Turns are cut only where a
user turn begins, so a tool call is never separated from its result and the kept conversation
starts as a conversation must; the latest turn (from the last user message on) is always kept.
An optional placeholder — a user message of Rungway's own, marked `[rungway]` — says how many
messages were left out. Nothing else is added: no system text the request did not carry.

Runs before translation to the rung's dialect. May import: core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..core import Dialect
from .fields import dumps, is_int

CHARS_PER_TOKEN: Final = 4
_PINNED_ROLES: Final = ("system", "developer")


@dataclass(frozen=True, slots=True)
class ContextTrim:
    body: dict[str, Any]
    dropped: int  # messages left out (0: the body is unchanged)
    fits: bool  # the result fits the window by the estimate


def estimate_tokens(value: Any) -> int:
    """About how many tokens `value` (a request body or a part of one) costs."""
    return -(-len(dumps(value)) // CHARS_PER_TOKEN)


def output_reserve(body: dict[str, Any]) -> int:
    """The output tokens the request asks room for (either dialect's field)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and is_int(value) and value > 0:
            return value
    return 0


def placeholder_message(dropped: int) -> dict[str, Any]:
    return {
        "role": "user",
        "content": f"[rungway] {dropped} earlier messages of this conversation were left out to fit this "
        "model's context window.",
    }


def trim_context(dialect: Dialect, body: dict[str, Any], window: int, *, placeholder: bool) -> ContextTrim:
    """The body fitted into `window` tokens (prompt plus the output it asks room for)."""
    budget = (window - output_reserve(body)) * CHARS_PER_TOKEN  # in characters
    messages = body.get("messages")
    whole = len(dumps(body))
    if whole <= budget or not isinstance(messages, list):
        return ContextTrim(body, 0, whole <= budget)
    anthropic = dialect.wire is Dialect.ANTHROPIC
    pinned = [m for m in messages if not anthropic and _role(m) in _PINNED_ROLES]
    talk = [i for i, m in enumerate(messages) if anthropic or _role(m) not in _PINNED_ROLES]
    units = _units(messages, talk, anthropic)
    # Compact JSON is additive: the body's length is its length without the conversation, plus
    # each message's, plus a comma between two.
    base = len(dumps({**body, "messages": pinned})) - (0 if pinned else 1)
    sizes = [sum(len(dumps(messages[i])) + 1 for i in unit) for unit in units]
    starts = [n for n, unit in enumerate(units) if n > 0 and _role(messages[unit[0]]) == "user"]
    if not starts:
        return ContextTrim(body, 0, False)
    chosen = starts[-1]
    for start in starts:
        if _cost(base, sizes, units, start, placeholder=placeholder) <= budget:
            chosen = start
            break
    dropped = sum(len(unit) for unit in units[:chosen])
    # System prompts before the cut move up to it; those after it stay where they were.
    cut = units[chosen][0]
    head = [m for m in messages[:cut] if not anthropic and _role(m) in _PINNED_ROLES]
    marker = [placeholder_message(dropped)] if placeholder else []
    out = {**body, "messages": [*head, *marker, *messages[cut:]]}
    return ContextTrim(out, dropped, len(dumps(out)) <= budget)


def _cost(base: int, sizes: list[int], units: list[list[int]], start: int, *, placeholder: bool) -> int:
    """The body's length keeping units[start:] (each size counts its message's comma)."""
    cost = base + sum(sizes[start:])
    if placeholder:
        cost += len(dumps(placeholder_message(sum(len(u) for u in units[:start])))) + 1
    return cost


def _role(message: Any) -> object:
    return message.get("role") if isinstance(message, dict) else None


def _carries_tool_result(message: Any, anthropic: bool) -> bool:
    if not anthropic:
        return _role(message) in ("tool", "function")
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _units(messages: list[Any], talk: list[int], anthropic: bool) -> list[list[int]]:
    """The conversation's message indices grouped so that no group starts with a tool result:
    the unit of dropping."""
    units: list[list[int]] = []
    for i in talk:
        if units and _carries_tool_result(messages[i], anthropic):
            units[-1].append(i)
        else:
            units.append([i])
    return units
