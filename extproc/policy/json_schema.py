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
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if key in _VALIDATORS:
        return _VALIDATORS[key]
    # A schema we cannot check answers against is not the answer's fault: skip it.
    validator = None if schema_problem(schema) else Draft202012Validator(schema, registry=_registry(schema))
    _VALIDATORS[key] = validator
    return validator
