"""Reading a policy: a YAML file, or a directory of them, → validated, frozen Policy; provider
keys from env or files.

A policy directory is the shared `defaults.yaml` (everything a single-file policy holds) plus one
file per tenant, `tenants/<name>.yaml`, each holding exactly what `tenants.<name>` holds in a
single file. A problem names the file it is in and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from .schema import PROBLEM_MARK, CredentialError, Policy, TenantPolicy

DEFAULTS_FILE = "defaults.yaml"
TENANTS_DIR = "tenants"
_YAML = (".yaml", ".yml")


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
    """A policy file or directory (see the module docstring); raises PolicyError naming the
    file and the field of every problem."""
    source = _read_source(path)
    try:
        return Policy.model_validate(source.data)
    except ValidationError as exc:
        problems = _field_errors(exc)
    if source.in_directory:
        problems = [_located(p, source.tenant_files) for p in problems]
    raise PolicyError(str(path), problems)


@dataclass(frozen=True)
class _Source:
    data: dict[str, Any]  # the raw policy, tenants merged in
    in_directory: bool = False
    # Each tenant from its own file, and the file: a problem the whole policy finds in a tenant
    # (an unknown task class) names the tenant's file.
    tenant_files: dict[str, str] = field(default_factory=dict)


def _read_source(path: Path) -> _Source:
    if not path.is_dir():
        return _Source(_read_mapping(path, str(path)))
    defaults = path / DEFAULTS_FILE
    stray = sorted(p.name for p in _yaml_files(path) if p.name != DEFAULTS_FILE)
    if stray:
        raise PolicyError(
            str(path),
            [
                f"{name}: unexpected file (a policy directory holds {DEFAULTS_FILE} and {TENANTS_DIR}/<name>.yaml)"
                for name in stray
            ],
        )
    data = _read_in(path, defaults, DEFAULTS_FILE)
    tenants_dir = path / TENANTS_DIR
    files = _yaml_files(tenants_dir) if tenants_dir.is_dir() else []
    if not files:
        return _Source(data, in_directory=True)
    inline = data.get("tenants") or {}
    if not isinstance(inline, dict):
        raise PolicyError(str(path), [f"{DEFAULTS_FILE}: tenants: must be a mapping"])
    tenants: dict[str, Any] = dict(inline)
    problems: list[str] = []
    for file in files:
        where = f"{TENANTS_DIR}/{file.name}"
        name = file.stem
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            problems.append(f"{where}: a tenant file is named <tenant>.yaml (letters, digits, '-', '_', '.')")
            continue
        if name in tenants:
            problems.append(f"{where}: tenant {name!r} is also in {DEFAULTS_FILE} (keep one)")
            continue
        try:
            tenant = _read_mapping(file, where)
        except PolicyError as exc:
            problems.extend(f"{where}: {p}" for p in exc.problems)
            continue
        try:
            TenantPolicy.model_validate(tenant)
        except ValidationError as exc:
            problems.extend(f"{where}: {p}" for p in _field_errors(exc))
            continue
        tenants[name] = tenant
    if problems:
        raise PolicyError(str(path), problems)
    files_of = {name: f"{TENANTS_DIR}/{name}.yaml" for name in tenants if name not in inline}
    return _Source({**data, "tenants": tenants}, in_directory=True, tenant_files=files_of)


def _located(problem: str, tenant_files: dict[str, str]) -> str:
    """A problem of a directory's policy, prefixed with the file it is in."""
    for name, file in tenant_files.items():
        prefix = f"tenants.{name}."
        if problem.startswith(prefix):
            return f"{file}: {problem.removeprefix(prefix)}"
    return f"{DEFAULTS_FILE}: {problem}"


def _yaml_files(directory: Path) -> list[Path]:
    """The YAML files of a directory; hidden ones (an editor's or a deploy tool's) are not policy."""
    return sorted(p for p in directory.iterdir() if p.suffix in _YAML and not p.name.startswith("."))


def _read_in(directory: Path, path: Path, where: str) -> dict[str, Any]:
    """A file of a policy directory: a problem's source is the directory, its line the file."""
    try:
        return _read_mapping(path, where)
    except PolicyError as exc:
        raise PolicyError(str(directory), [f"{where}: {p}" for p in exc.problems]) from None


def _read_mapping(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(where, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyError(where, [f"{at}{problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError(where, ["the top level must be a mapping"])
    return data


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
