"""Policy v1: the versioned YAML a platform team writes, validated eagerly.

A policy names providers, ladders of rungs over them, task classes with their health contract,
and a model map from the model a client asks for to a ladder (per task class). Everything is
frozen: a running sidecar swaps whole policies, never edits one.
"""

from __future__ import annotations

import fnmatch
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

REQUESTED_MODEL = "$requested"
MAX_LADDER_LENGTH = 6  # every subsequence of a ladder is rendered as an Envoy cluster: 2^n - 1


class Dialect(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"

    @property
    def wire(self) -> Dialect:
        """The API shape on the wire: OpenAI-compatible servers speak OpenAI's."""
        return Dialect.OPENAI if self is Dialect.OPENAI_COMPATIBLE else self


class Impact(StrEnum):
    REVENUE_CRITICAL = "revenue_critical"
    CUSTOMER_FACING = "customer_facing"
    ASYNC_ACCEPTABLE = "async_acceptable"
    DEFERRABLE = "deferrable"


class Capability(StrEnum):
    TOOLS = "tools"
    JSON_MODE = "json_mode"
    STREAMING = "streaming"
    VISION = "vision"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Credential(_Frozen):
    """Where the sidecar reads a provider key: an environment variable or a file (k8s secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Credential:
        if (self.env is None) == (self.file is None):
            raise ValueError("credential needs exactly one of 'env' or 'file'")
        return self

    def resolve(self) -> SecretStr:
        """Read the key now; raises CredentialError naming the source, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise CredentialError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise CredentialError(f"cannot read credential file {self.file}: {exc.strerror}") from None
        if not value:
            raise CredentialError(f"credential file {self.file} is empty")
        return SecretStr(value)


class CredentialError(Exception):
    pass


class Cost(_Frozen):
    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class Provider(_Frozen):
    base_url: str
    dialect: Dialect
    credential: Credential | None = None
    capabilities: frozenset[Capability] = frozenset({Capability.TOOLS, Capability.JSON_MODE, Capability.STREAMING})
    context_window: int = Field(128_000, gt=0)
    cost_per_1k: Cost = Cost()
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    # Sent on every request to this provider, e.g. anthropic-version or an OpenAI project id.
    headers: dict[str, str] = Field(default_factory=dict)
    # CA bundle for an https provider with a private CA (default: the system bundle).
    ca_file: Path | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, but was {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not carry a query or fragment, but was {value!r}")
        return value.rstrip("/")

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def host(self) -> str:
        host = urlsplit(self.base_url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        """The Host header the provider expects (port only when not the scheme default)."""
        parts = urlsplit(self.base_url)
        return parts.netloc.rsplit("@", 1)[-1]

    @property
    def path_prefix(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    def chat_path(self) -> str:
        suffix = "/v1/messages" if self.dialect.wire is Dialect.ANTHROPIC else "/v1/chat/completions"
        prefix = self.path_prefix
        # A base URL that already ends in /v1 (common for OpenAI-compatible servers) is not doubled.
        if prefix.endswith("/v1"):
            prefix = prefix[: -len("/v1")]
        return prefix + suffix


class Rung(_Frozen):
    provider: str
    model: str = REQUESTED_MODEL
    tier: int | None = Field(None, ge=0, le=3)
    attempts: int = Field(1, ge=1, le=5)
    # Time to first byte: the whole answer for JSON, the first event for a stream.
    timeout_s: float = Field(30.0, gt=0, le=600)
    # Serve a request with tools on a provider without tool support by dropping the tools
    # (a degraded answer) instead of skipping the rung.
    strip_tools: bool = False

    def model_for(self, requested: str) -> str:
        return requested if self.model == REQUESTED_MODEL else self.model


class TaskClass(_Frozen):
    # Health contract v1: a 200 with fewer completion tokens than this is a partial outage.
    min_output_tokens: int = Field(1, ge=0)


class ModelRoute(_Frozen):
    match: str = Field(min_length=1)
    ladder: str
    tasks: dict[str, str] = Field(default_factory=dict)

    @property
    def is_glob(self) -> bool:
        return any(ch in self.match for ch in "*?[")

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.match) if self.is_glob else model == self.match


class Ejection(_Frozen):
    """Envoy's outlier detection: the fast, dumb first line. After this many 5xx in a row
    (flipped validation failures included) a rung's endpoint is skipped for a while."""

    consecutive_5xx: int = Field(5, ge=1, le=1000)
    base_ejection_s: float = Field(15.0, gt=0, le=3600)


class FailOpen(_Frozen):
    """Where a request goes untranslated when the sidecar is down and failure_mode_allow is on."""

    openai: str | None = None
    anthropic: str | None = None


Ladder = Annotated[list[Rung], Field(min_length=1, max_length=MAX_LADDER_LENGTH)]


class Policy(_Frozen):
    version: str = Field(min_length=1)
    tenant_header: str = "x-rungway-tenant"
    task_header: str = "x-rungway-task"
    impact_header: str = "x-rungway-impact"
    default_tenant: str = "default"
    default_task: str = "default"
    default_impact: Impact = Impact.CUSTOMER_FACING
    max_attempts: int = Field(3, ge=1, le=10)
    # A 429 whose Retry-After is at most this is waited out on the same rung when it has an
    # attempt left; otherwise the try hops at once (to the rung's next slot if it has one).
    retry_after_max_s: float = Field(2.0, ge=0, le=60)
    hop_on_safety_block: bool = False
    # After the first byte of a stream: silence this long ends it with an in-band error event.
    stream_stall_s: float = Field(15.0, gt=0, le=600)
    # After a finish event, how long to wait for the provider's terminal marker before
    # finalising the stream ourselves.
    stream_finish_grace_s: float = Field(1.0, gt=0, le=60)
    # The longest generation allowed end to end (Envoy's route timeout; 0 disables it).
    route_timeout_s: float = Field(600.0, ge=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=30 * 1024 * 1024)
    providers: dict[str, Provider] = Field(min_length=1)
    tasks: dict[str, TaskClass] = Field(default_factory=lambda: {"default": TaskClass()})
    ladders: dict[str, Ladder] = Field(min_length=1)
    models: list[ModelRoute] = Field(min_length=1)
    fail_open: FailOpen = FailOpen()
    # None turns Envoy's ejection off (Rungway's own circuits still apply).
    envoy_ejection: Ejection | None = Ejection()

    @field_validator("tenant_header", "task_header", "impact_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        if not value or value != value.lower() or not all(c.isalnum() or c == "-" for c in value):
            raise ValueError(f"header names must be lower-case tokens, but was {value!r}")
        return value

    @field_validator("ladders")
    @classmethod
    def _ladder_names(cls, value: dict[str, list[Rung]]) -> dict[str, list[Rung]]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"ladder names use letters, digits, '-' and '_', but was {name!r}")
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> Policy:
        # Every broken reference at once, each as a 'location: message' line (pydantic gives a
        # model-level error no location, so the lines carry their own; see _field_errors).
        problems = []
        known = ", ".join(sorted(self.providers))
        for ladder_name, rungs in self.ladders.items():
            for i, rung in enumerate(rungs):
                if rung.provider not in self.providers:
                    problems.append(
                        f"ladders.{ladder_name}.{i}.provider: {rung.provider!r} is not a provider (known: {known})"
                    )
        if self.default_task not in self.tasks:
            problems.append(f"default_task: {self.default_task!r} is not in tasks")
        for i, route in enumerate(self.models):
            if route.ladder not in self.ladders:
                problems.append(f"models.{i}.ladder: {route.ladder!r} is not a ladder")
            for task, ladder in route.tasks.items():
                if task not in self.tasks:
                    problems.append(f"models.{i}.tasks: unknown task class {task!r}")
                elif ladder not in self.ladders:
                    problems.append(f"models.{i}.tasks.{task}: {ladder!r} is not a ladder")
        for dialect in ("openai", "anthropic"):
            name = getattr(self.fail_open, dialect)
            if name is None:
                continue
            if name not in self.providers:
                problems.append(f"fail_open.{dialect}: {name!r} is not a provider")
            elif self.providers[name].dialect.wire.value != dialect:
                problems.append(f"fail_open.{dialect}: {name!r} does not speak {dialect}")
        if problems:
            raise ValueError(_LOCATED + _LOCATED.join(problems))
        return self

    def route_for(self, model: str) -> ModelRoute | None:
        """Exact names beat globs; among each kind the first listed wins."""
        for route in self.models:
            if not route.is_glob and route.matches(model):
                return route
        for route in self.models:
            if route.is_glob and route.matches(model):
                return route
        return None

    def ladder_for(self, model: str, task: str) -> str | None:
        route = self.route_for(model)
        if route is None:
            return None
        return route.tasks.get(task, route.ladder)

    def tier_of(self, ladder: str, index: int) -> int:
        rung = self.ladders[ladder][index]
        return rung.tier if rung.tier is not None else min(index, 3)

    def fail_open_provider(self, dialect: Dialect) -> str | None:
        """The client dialect's primary: explicit, else the first tier-0 rung speaking it."""
        explicit = getattr(self.fail_open, dialect.wire.value)
        if explicit is not None:
            return str(explicit)
        for route in self.models:
            for i, rung in enumerate(self.ladders[route.ladder]):
                provider = self.providers[rung.provider]
                if provider.dialect.wire is dialect.wire and self.tier_of(route.ladder, i) == 0:
                    return rung.provider
        for name, provider in self.providers.items():
            if provider.dialect.wire is dialect.wire:
                return name
        return None


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


_LOCATED = "\n@ "  # marks problem lines that carry their own location


def _field_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        location = ".".join(str(part) for part in err["loc"]) or "(policy)"
        message = err["msg"].removeprefix("Value error, ")
        if _LOCATED in message:
            problems.extend(message.split(_LOCATED)[1:])
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


ClientDialect = Literal["openai", "anthropic"]
