"""Reading typed fields out of a decoded message (metadata Struct or bus JSON): every value is
checked, and anything missing, mistyped or foreign raises ContractError, never a default."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


class ContractError(ValueError):
    """A message that crossed a boundary cannot be read: missing, mistyped or foreign."""


def version(message: Mapping[str, object], kind: str, expected: int) -> None:
    got = message.get("v")
    if got != expected or isinstance(got, bool):
        raise ContractError(f"{kind}: version {got!r}, expected {expected}")


def text(message: Mapping[str, object], key: str, kind: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise ContractError(f"{kind}.{key}: expected text, got {type(value).__name__}")
    return value


def optional_text(message: Mapping[str, object], key: str, kind: str) -> str | None:
    value = message.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ContractError(f"{kind}.{key}: expected text, got {type(value).__name__}")
    return value


def flag(message: Mapping[str, object], key: str, kind: str) -> bool:
    value = message.get(key)
    if not isinstance(value, bool):
        raise ContractError(f"{kind}.{key}: expected true or false, got {type(value).__name__}")
    return value


def number(message: Mapping[str, object], key: str, kind: str) -> float:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(f"{kind}.{key}: expected a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise ContractError(f"{kind}.{key}: not a finite number") from None
    if not math.isfinite(out):
        raise ContractError(f"{kind}.{key}: not a finite number")
    return out


def optional_number(message: Mapping[str, object], key: str, kind: str) -> float | None:
    return None if message.get(key) is None else number(message, key, kind)


def count(message: Mapping[str, object], key: str, kind: str, high: int = 1 << 53) -> int:
    """A non-negative integer (protobuf Struct carries every number as a double)."""
    value = number(message, key, kind)
    if value != int(value) or not 0 <= value <= high:
        raise ContractError(f"{kind}.{key}: expected an integer in [0, {high}], got {value!r}")
    return int(value)


def optional_count(message: Mapping[str, object], key: str, kind: str, high: int = 1 << 53) -> int | None:
    return None if message.get(key) is None else count(message, key, kind, high)


def member(message: Mapping[str, object], key: str, enum: type[E], kind: str) -> E:
    value = text(message, key, kind)
    try:
        return enum(value)
    except ValueError:
        raise ContractError(f"{kind}.{key}: {value!r} is not a {enum.__name__}") from None


def optional_member(message: Mapping[str, object], key: str, enum: type[E], kind: str) -> E | None:
    value = optional_text(message, key, kind)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        raise ContractError(f"{kind}.{key}: {value!r} is not a {enum.__name__}") from None
