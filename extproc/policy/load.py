"""Reading a policy: YAML file → validated, frozen Policy; provider keys from env or files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from .schema import PROBLEM_MARK, CredentialError, Policy


class PolicyError(Exception):
    """A policy file that cannot serve; `problems` are 'location: message' lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, _field_errors(exc)) from None


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyError(str(path), [f"{where}{problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError(str(path), ["the top level must be a mapping"])
    return parse_policy(data, str(path))


def _field_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        location = ".".join(str(part) for part in err["loc"]) or "(policy)"
        message = err["msg"].removeprefix("Value error, ")
        if PROBLEM_MARK in message:
            problems.extend(message.split(PROBLEM_MARK)[1:])
            continue
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{location}: {message}")
    return problems


def resolve_credentials(policy: Policy) -> dict[str, SecretStr | None]:
    """Every provider's key, read now; one error lists every missing key."""
    keys: dict[str, SecretStr | None] = {}
    missing = []
    for name, provider in policy.providers.items():
        if provider.credential is None:
            keys[name] = None
            continue
        try:
            keys[name] = provider.credential.resolve()
        except CredentialError as exc:
            missing.append(f"providers.{name}.credential: {exc}")
    if missing:
        raise PolicyError("credentials", missing)
    return keys
