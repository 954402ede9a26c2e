"""JSON Schemas a policy or a request supplies: checked once, compiled once, never fetched.

Only references inside the schema itself are allowed: a `$ref` to a URL would make the sidecar
fetch it.
"""

from __future__ import annotations

import json
from typing import Any

from cachetools import LRUCache
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

# Compiled validators by schema text: the same few schemas come back on every request.
_VALIDATORS: LRUCache[str, Draft202012Validator | None] = LRUCache(maxsize=256)
_BASE_URI = "urn:rungway:schema"


def schema_problem(schema: Any) -> str | None:
    """Why a JSON Schema cannot be used to check answers, or None."""
    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    resolver = _registry(schema).resolver(base_uri=_BASE_URI)
    for ref in _refs(schema):
        if not ref.startswith("#"):
            return f"$ref {ref!r} points outside the schema (only '#...' references are allowed)"
        try:
            resolver.lookup(ref)
        except Unresolvable:
            return f"$ref {ref!r} does not resolve inside the schema"
    return None


def _registry(schema: dict[str, Any]) -> Registry[Any]:
    # An empty registry that never retrieves: jsonschema's default would download remote refs.
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, DRAFT202012.create_resource(schema))
    return registry


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def compiled(schema: dict[str, Any]) -> Draft202012Validator | None:
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if key in _VALIDATORS:
            return _VALIDATORS[key]
        # A schema we cannot check answers against is not the answer's fault: skip it.
        validator = None if schema_problem(schema) else Draft202012Validator(schema, registry=_registry(schema))
    except RecursionError:
        return None
    _VALIDATORS[key] = validator
    return validator


# Keywords whose values are regular expressions: Python's `re` can take exponential time on a
# crafted pattern, and a client-supplied schema must be checked in bounded time.
_REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})
MAX_UNTRUSTED_SCHEMA_BYTES = 64 * 1024
MAX_UNTRUSTED_SCHEMA_DEPTH = 32


def untrusted(schema: Any) -> dict[str, Any] | None:
    """A schema a client sent (response_format), made safe to check answers against: regular
    expressions dropped (validation gets laxer, never slower), None when it is too large or too
    deep to be worth checking. Policy schemas are the platform team's and are used as written."""
    if not isinstance(schema, dict):
        return None
    try:
        size = len(json.dumps(schema))
    except (RecursionError, ValueError):
        return None
    if size > MAX_UNTRUSTED_SCHEMA_BYTES:
        return None
    return _strip_regexes(schema, MAX_UNTRUSTED_SCHEMA_DEPTH)


def _strip_regexes(node: dict[str, Any], depth: int) -> dict[str, Any] | None:
    if depth <= 0:
        return None
    out: dict[str, Any] = {}
    # Without its patternProperties, keys they matched would count as additional: drop the
    # rules about additional keys too, or a valid answer would be called invalid.
    drop = _REGEX_KEYWORDS | (
        {"additionalProperties", "unevaluatedProperties"} if "patternProperties" in node else set()
    )
    for key, value in node.items():
        if key in drop:
            continue
        if isinstance(value, dict):
            inner = _strip_regexes(value, depth - 1)
            if inner is None:
                return None
            out[key] = inner
        elif isinstance(value, list):
            items: list[Any] = []
            for item in value:
                if isinstance(item, dict):
                    stripped = _strip_regexes(item, depth - 1)
                    if stripped is None:
                        return None
                    items.append(stripped)
                else:
                    items.append(item)
            out[key] = items
        else:
            out[key] = value
    return out
