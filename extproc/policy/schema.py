"""Policy v1: the versioned YAML a platform team writes, validated eagerly.

A policy names providers, ladders of rungs over them, task classes with their health contract,
and a model map from the model a client asks for to a ladder (per task class). Everything is
frozen: a running sidecar swaps whole policies, never edits one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Mapping
from enum import Enum
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from ..core import Capability, Dialect, Impact, ToolMode
from .json_schema import schema_problem

REQUESTED_MODEL = "$requested"
PROBLEM_MARK = "\n@ "  # marks problem lines that carry their own location (see load._field_errors)
# The longest a request may be held waiting for an operator's approval (TenantPolicy.approval_wait_s):
# decide's Envoy filter allows message timeouts this long (xds/bootstrap.py), so it is start-only.
MAX_APPROVAL_WAIT_S = 240.0  # under Envoy's default 300 s stream idle timeout
MAX_LADDER_LENGTH = 6  # every subsequence of a ladder is rendered as an Envoy cluster: 2^n - 1


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


class Clients(_Frozen):
    """Who may spend the providers' keys. Every request is authenticated; the tenant is who
    holds the credential, never what a header claims."""

    # keys: each request carries a Rungway-issued key (`rungway keys new`) from key_store.
    # trusted_header: an authenticating mesh in front of Rungway names the tenant in
    # tenant_header, and only requests from trusted_peers' addresses are served at all.
    auth: Literal["keys", "trusted_header"] = "keys"
    key_store: Path | None = None
    trusted_peers: tuple[IPv4Network | IPv6Network, ...] = ()
    tenant_header: str = "x-rungway-tenant"

    @field_validator("tenant_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return _header_name(value)

    @model_validator(mode="after")
    def _mode_complete(self) -> Clients:
        if self.auth == "keys" and self.key_store is None:
            raise ValueError("auth 'keys' needs key_store: the file `rungway keys new` writes")
        if self.auth == "trusted_header" and not self.trusted_peers:
            raise ValueError("auth 'trusted_header' needs trusted_peers: the addresses of the mesh proxies")
        return self

    def trusts(self, peer: str) -> bool:
        """Whether a peer address ('ip:port', '[v6]:port' or a bare ip) is a trusted proxy."""
        host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
        try:
            address = ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self.trusted_peers)


class EscalationRule(_Frozen):
    """When a served answer is suspended for a person to decide on (E2): a request of `impact`
    or a more important one, when its signals say so. Signals: `tier` (the serving rung's tier
    at or beyond it), `score_below` (the ladder's primary's health score under it: 1.0 healthy),
    `contract` (the last rung's answer broke the task's contract), `min_logprob` (the answer's
    mean token logprob under it, when the provider returned logprobs). `require: any` escalates
    when one configured signal holds, `all` only when every one does."""

    impact: Impact = Impact.REVENUE_CRITICAL
    tier: int | None = Field(None, ge=1, le=3)
    score_below: float | None = Field(None, gt=0, le=1)
    contract: bool = False
    min_logprob: float | None = Field(None, lt=0)
    require: Literal["any", "all"] = "any"

    @model_validator(mode="after")
    def _some_signal(self) -> EscalationRule:
        if self.tier is None and self.score_below is None and not self.contract and self.min_logprob is None:
            raise ValueError("an escalation rule needs a signal: tier, score_below, contract or min_logprob")
        return self


class EscalationSettings(_Frozen):
    """Where the on-call hears of an escalation: a signed POST (HMAC-SHA256, x-rungway-signature,
    as deferral callbacks), retried with backoff. Escalated requests live in the deferral store
    (deferral.store) as tasks; one undecided for deferral.task_ttl_s expires."""

    webhook_url: str
    secret: Credential
    webhook_attempts: int = Field(6, ge=1, le=20)

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class TenantTask(_Frozen):
    """A tenant's rule for one task class, over its own (e.g. tier 2 for summarize, not codegen)."""

    lowest_tier: int | None = Field(None, ge=0, le=3)
    # How much this task class matters for the tenant (T3), over the tenant's own impact.
    impact: Impact | None = None
    # Over the tenant's own `rerun_on_recovery` for this task class (E3).
    rerun_on_recovery: bool | None = None
    # The tenant's escalation rule for this task class, over its own (E2).
    escalate: EscalationRule | None = None


class Budget(_Frozen):
    """A tenant's spend limits (T4), over a fixed window (aligned to the epoch: hourly windows
    start on the hour), counted from every try that reached a provider — retries, fallbacks and
    rescues included, each at its own rung's price — across the fleet when a bus is shared.
    Costs are in the providers' `cost_per_1k` units."""

    window_s: float = Field(3600.0, ge=60, le=31 * 86_400)
    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)
    # The cost-rate guardrail: spend in the last minute (a runaway loop trips it long before the
    # window's budget is gone).
    max_cost_per_minute: float | None = Field(None, gt=0)
    # Over budget: `refuse` (429 + Retry-After, in the client's dialect) or `cheaper` (only the
    # ladder's cheapest rung the tenant permits; flagged degraded, reason budget_exceeded).
    over: Literal["refuse", "cheaper"] = "refuse"


class TenantPolicy(_Frozen):
    """What one tenant permits when its models degrade (T2). Tier 0 is the ladder's primary; a
    higher tier is a lower rung (another provider, a smaller model)."""

    # Never served below this tier: a hospital's clinical summaries `lowest_tier: 0`.
    lowest_tier: int = Field(3, ge=0, le=3)
    # Data residency: only providers whose `region` is listed (a provider without one is out).
    regions: tuple[str, ...] | None = None
    tasks: dict[str, TenantTask] = Field(default_factory=dict)
    # What the client reads when no permitted rung can serve (with the reason appended).
    message: str = "Your organisation's policy does not permit a fallback model for this request"
    # Where a deferred task's answer is POSTed (signed with deferral.callback_secret), if set.
    callback_url: str | None = None
    # Where a change of the tier serving this tenant is POSTed (T2: the x-rungway-tier header is
    # always there; this tells someone). Signed with the policy's notify_secret.
    notify_url: str | None = None
    # Tiers beyond this one need an operator's approval in force (`rungway approve`); until then
    # those rungs are skipped like a tier the tenant does not permit, and a request none of the
    # rest can serve is refused with how to approve. None: no approval needed.
    approval_beyond_tier: int | None = Field(None, ge=0, le=3)
    # With approval_beyond_tier: how long a request only an approval could serve is held waiting
    # for one (an approval during the wait lets it through; after it, the refusal). Never past
    # the request's route timeout. None: refused at once.
    approval_wait_s: float | None = Field(None, gt=0, le=MAX_APPROVAL_WAIT_S)
    # Requests of the tenant held at once in the pod (all its workers); past it the next is
    # refused at once.
    approval_max_held: int = Field(16, ge=1, le=10_000)
    budget: Budget | None = None
    # How much the tenant's requests matter (T3); None: the policy's default_impact. A task
    # class's own `impact` wins over it.
    impact: Impact | None = None
    # Impacts a request may claim in the policy's impact_header; None: any. Claiming
    # revenue_critical takes capacity reserved for it, so a tenant that must not gets a list.
    header_impacts: frozenset[Impact] | None = None
    # E3: an answer served below tier 0 is kept (request and answer, on the pod's local disk:
    # `review.store`) and re-run on the ladder's tier-0 rung once it is healthy again, and the two
    # answers' diff is kept for review (`rungway review list/show`). Needs a `review` section.
    rerun_on_recovery: bool = False

    # When a served answer waits for a person instead (E2); a task class's own rule wins.
    escalate: EscalationRule | None = None

    def escalation_for(self, task: str) -> EscalationRule | None:
        override = self.tasks.get(task)
        return override.escalate if override is not None and override.escalate is not None else self.escalate

    def lowest_tier_for(self, task: str) -> int:
        override = self.tasks.get(task)
        return override.lowest_tier if override is not None and override.lowest_tier is not None else self.lowest_tier

    def reruns(self, task: str) -> bool:
        """Whether an answer of this task class served below tier 0 is re-run on recovery (E3)."""
        override = self.tasks.get(task)
        if override is not None and override.rerun_on_recovery is not None:
            return override.rerun_on_recovery
        return self.rerun_on_recovery


class Cost(_Frozen):
    """Prices per 1,000 tokens, in whatever currency the policy's author uses throughout."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)

    def of(self, input_tokens: int, output_tokens: int) -> float:
        """What a try's tokens cost at these prices."""
        return (input_tokens * self.input + output_tokens * self.output) / 1000


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
    # Where the provider processes data (e.g. "eu", "us"), for tenants' residency rules.
    region: str | None = None
    # A credential goes over plain http only to a loopback host, unless this says the network
    # between Envoy and the provider is trusted (e.g. a service mesh that adds mTLS).
    allow_plaintext_credential: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, but was {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not carry a query or fragment, but was {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _no_credential_in_clear(self) -> Provider:
        if self.credential is None or self.tls or self.allow_plaintext_credential or is_loopback_host(self.host):
            return self
        raise ValueError(
            f"base_url {self.base_url!r} would send the credential in clear text to a host that is not "
            "loopback; use https://, or set allow_plaintext_credential: true if the network is trusted"
        )

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


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class RungCapacity(_Frozen):
    """How many requests a rung serves at once (T3), for the pod: `rungway up`'s workers share
    one ledger (a standalone `rungway serve` keeps its own). A request over it is not routed to
    the rung (a later one may serve); with no rung left it is answered 503 (429 past the
    tenant's share) with a Retry-After of shed_retry_after_s."""

    max_in_flight: int = Field(ge=1, le=100_000)
    # Slots only this impact class or a more important one may take: {revenue_critical: 4}
    # keeps 4 for revenue-critical traffic, so lower impacts are refused first.
    reserved: dict[Impact, int] = Field(default_factory=dict)
    # The most of the rung's slots one tenant may hold at once. Whatever it is, a tenant with
    # demand is kept a slot while it holds less than its fair share (slots / tenants wanting).
    tenant_share: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _reservations_fit(self) -> RungCapacity:
        if any(n < 0 for n in self.reserved.values()):
            raise ValueError(f"reserved slots must be >= 0, but were {dict(self.reserved)}")
        if sum(self.reserved.values()) > self.max_in_flight:
            raise ValueError(
                f"reserved slots ({sum(self.reserved.values())}) must fit in max_in_flight ({self.max_in_flight})"
            )
        return self


class Rung(_Frozen):
    provider: str
    model: str = REQUESTED_MODEL
    tier: int | None = Field(None, ge=0, le=3)
    # Tries this rung may get for a failure that allows the same rung again (a single 5xx, a
    # reset, a 429 with a short Retry-After): 2 is "the same rung once". Other failures move on.
    attempts: int = Field(2, ge=1, le=5)
    # Time to first byte on this rung: the whole answer for JSON, the first event for a stream.
    timeout_s: float = Field(30.0, gt=0, le=600)
    # Serve a request with tools on a provider without tool support by dropping the tools
    # (a degraded answer) instead of skipping the rung.
    strip_tools: bool = False
    # What of a request's tools this rung is offered (T5): full, plan_only (no tools; the model
    # answers with the calls it would make, as data), read_only (the policy's write tools
    # removed) or no_tools. A rung below `tools.write_lowest_tier` never gets write tools.
    tool_mode: ToolMode = ToolMode.FULL
    # The rung's context window in tokens, when smaller or larger than its provider's (e.g. a
    # model with a smaller window at the same provider).
    context_window: int | None = Field(None, gt=0)
    # The p95 of a healthy answer's latency (JSON: whole answer; stream: first token); its median
    # is taken to be half of it (LLM latencies are roughly lognormal). Learned from healthy
    # traffic when not set.
    baseline_latency_s: float | None = Field(None, gt=0, le=600)
    # Concurrency limit with reservations by impact and per-tenant shares (T3); None: unlimited.
    capacity: RungCapacity | None = None

    def model_for(self, requested: str) -> str:
        return requested if self.model == REQUESTED_MODEL else self.model


class Exhausted(_Frozen):
    """What a task class answers when no rung can serve it (T6 product tiers): a human handoff
    notice (tier 3) or a static answer (tier 4), as a normal completion in the client's dialect
    flagged degraded with its tier — an honest message saying what still works and what does
    not, never an empty answer. A request's own fault (a bad request, a safety refusal, a prompt
    larger than every rung) still gets its error."""

    tier: Literal[3, 4] = 4
    message: str = Field(min_length=1, max_length=4000)


class TaskClass(_Frozen):
    """The health contract of a task class (H3): a 200 that breaks it is a partial outage."""

    min_output_tokens: int = Field(1, ge=0)
    max_output_tokens: int | None = Field(None, ge=1)
    # The answer's content must be JSON matching this schema (JSON Schema, draft 2020-12).
    json_schema: dict[str, Any] | None = None
    # Top-level keys the answer's JSON content must have.
    required_fields: list[str] = Field(default_factory=list)
    # Also hold the answer to the schema the request itself asked for (response_format).
    use_request_schema: bool = True
    # A stream cut or stalled after its first token is completed from the next healthy rung
    # (continuation where the rung supports prefill, else regenerate-and-match). Off (the
    # default): the client gets one in-band error event instead. A rescue costs the client's
    # request body kept per stream, and a second provider call when it happens.
    rescue: bool = False
    # Requests of this class that no permitted rung can serve now are accepted for later (202 +
    # task id) and replayed when one recovers, if the policy has a `deferral` section. A request
    # whose impact class is `deferrable` (x-rungway-impact) is deferrable in any task class.
    deferrable: bool = False
    # Answered by Rungway itself when no rung can serve (an outage): a handoff notice or a static
    # answer (T6). None: the client gets the outage as an error.
    when_exhausted: Exhausted | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TaskClass:
        if self.max_output_tokens is not None and self.max_output_tokens < self.min_output_tokens:
            raise ValueError(
                f"max_output_tokens must be at least min_output_tokens ({self.min_output_tokens}), "
                f"but was {self.max_output_tokens}"
            )
        if self.json_schema is not None:
            problem = schema_problem(self.json_schema)
            if problem is not None:
                raise ValueError(
                    f"json_schema is {problem}" if problem.startswith("not ") else f"json_schema: {problem}"
                )
        return self

    @property
    def wants_json(self) -> bool:
        return self.json_schema is not None or bool(self.required_fields)


class Deferral(_Frozen):
    """The deferral queue (E1): where accepted requests are stored, how many, for how long."""

    # An SQLite file on local disk (WAL, fsync on every commit), shared by the pod's workers
    # (which accept) and `rungway up` (which replays). Never on a network file system.
    store: Path | None = None
    # Or, for a fleet: a Redis every pod shares (redis:// or rediss://, often the health bus's),
    # so any pod's drainer replays any pod's tasks and any pod answers their status. One of the
    # two. Run it with `appendonly yes` and `appendfsync always` for a 202 to mean "on disk".
    redis: str | None = None
    # The Redis password (the ACL user goes in the URL), when it is not in the URL itself.
    redis_password: Credential | None = None
    # Tasks one tenant may have waiting; past it a deferrable request gets 429 at once.
    max_per_tenant: int = Field(1000, ge=1, le=1_000_000)
    # A task not answered this long after it was accepted expires (its client reads 410).
    task_ttl_s: float = Field(86_400.0, gt=0, le=30 * 86_400)
    # An answer (or an expiry) is kept this long for the client to fetch, then dropped.
    result_ttl_s: float = Field(3_600.0, gt=0, le=30 * 86_400)
    # Replays `rungway up` runs at once, and how often it looks for due tasks.
    replays_in_flight: int = Field(4, ge=1, le=256)
    replay_every_s: float = Field(0.5, gt=0, le=60)
    # A replay not finished this long after it started is replayed again (at-least-once; the
    # first answer wins). Keep it above route_timeout_s.
    lease_s: float = Field(900.0, gt=0, le=86_400)
    # Signs the result POSTed to a tenant's callback_url (HMAC-SHA256, x-rungway-signature).
    callback_secret: Credential | None = None
    callback_attempts: int = Field(6, ge=1, le=20)

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss"):
            # The scheme only: a URL can carry a password.
            raise ValueError(
                f"redis must be a redis:// or rediss:// URL, but its scheme was {urlsplit(value).scheme!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_store(self) -> Deferral:
        if (self.store is None) == (self.redis is None):
            raise ValueError("deferral needs one place to keep tasks: store (an SQLite file) or redis (a URL)")
        if self.redis_password is not None and (self.redis is None or urlsplit(self.redis).password is not None):
            raise ValueError("redis_password needs a redis URL without a password of its own")
        return self


class Review(_Frozen):
    """Re-runs on recovery (E3): where degraded answers wait for their tier-0 re-run, how many,
    for how long, and how often `rungway up` looks for ones it can re-run."""

    # An SQLite file on local disk (WAL, fsync on every commit), shared by the pod's workers
    # (which keep degraded answers) and `rungway up` (which re-runs them). It holds prompts and
    # answers in clear: local disk only, never a network file system (the audit trail keeps
    # only their hashes).
    store: Path
    # Reviews one tenant may have kept; past it a new degraded answer is not kept (counted).
    max_per_tenant: int = Field(1000, ge=1, le=1_000_000)
    # A review (re-run or not) is deleted this long after its degraded answer was kept.
    ttl_s: float = Field(7 * 86_400.0, gt=0, le=90 * 86_400)
    # Re-runs `rungway up` runs at once, and how often it looks for ones due.
    reruns_in_flight: int = Field(2, ge=1, le=64)
    rerun_every_s: float = Field(1.0, gt=0, le=600)
    # A re-run not finished this long after it started is run again (its answer is kept once).
    lease_s: float = Field(900.0, gt=0, le=86_400)
    # A degraded answer bigger than this (request or answer) is not kept.
    max_bytes: int = Field(1024 * 1024, ge=1024, le=30 * 1024 * 1024)


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


class CircuitSettings(_Frozen):
    """Rungway's own breaker per rung endpoint (provider x model), H1."""

    failure_rate_threshold: float = Field(50.0, gt=0, le=100)
    window_s: float = Field(60.0, gt=0, le=3600)
    minimum_calls: int = Field(5, ge=1, le=10_000)
    consecutive_failures: int = Field(5, ge=1, le=10_000)
    # Once traffic moved off a rung it stays off at least this long (hysteresis).
    open_s: float = Field(30.0, gt=0, le=3600)
    half_open_probes: int = Field(2, ge=1, le=100)
    # Half-open is tried by `rungway up`'s synthetic probes; with this on, also by up to
    # half_open_probes live requests (each still has the rest of its ladder behind it).
    live_half_open: bool = False
    half_open_successes: int = Field(2, ge=1, le=100)
    probe_bound_s: float = Field(30.0, gt=0, le=3600)
    # A call slower than this many times its endpoint's baseline (the healthy p95) counts as a
    # failure for the rate (a brownout shows as slowness before it shows as errors); at 4, a
    # healthy call about one in a million times. Counted while still in flight, so a brownout
    # moves the circuit before its slow calls reach their timeout.
    slow_call_factor: float = Field(4.0, gt=1, le=100)


class LeaveBelow(_Frozen):
    """Degradation score (1 = healthy) below which each impact class leaves a rung: low-stakes
    traffic moves first, revenue-critical traffic last."""

    revenue_critical: float = Field(0.2, ge=0, le=1)
    customer_facing: float = Field(0.5, ge=0, le=1)
    async_acceptable: float = Field(0.6, ge=0, le=1)
    deferrable: float = Field(0.7, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> LeaveBelow:
        if not self.revenue_critical <= self.customer_facing <= self.async_acceptable <= self.deferrable:
            raise ValueError("thresholds must not decrease from revenue_critical to deferrable")
        return self

    def for_impact(self, impact: Impact) -> float:
        return float(getattr(self, impact.value))


class BusSecurity(_Frozen):
    """Who may speak on a fleet (Redis) health bus. Secrets are read at start, never written here."""

    # The Redis password (the ACL user goes in the URL), when it is not in the URL itself.
    password: Credential | None = None
    # The fleet secret every frame is signed with (HMAC-SHA256). Unset: $RUNGWAY_BUS_SECRET, or
    # the file $RUNGWAY_BUS_SECRET_FILE names (`--bus-secret-file`).
    secret: Credential | None = None
    # The secret being rotated out: still accepted, never signed with. Unset:
    # $RUNGWAY_BUS_SECRET_PREVIOUS or $RUNGWAY_BUS_SECRET_PREVIOUS_FILE, if set.
    previous_secret: Credential | None = None
    # Frames older (or newer) than this are dropped as stale: members' clocks must agree this well.
    max_age_s: float = Field(30.0, gt=0, le=3600)
    # An unsigned fleet bus believes anyone who can publish to its channel: only on request.
    insecure: bool = False


class HealthSettings(_Frozen):
    """The health board: circuits, degradation scores, gates and the bus (H1-H5)."""

    # False: decide ignores the board (every request starts at its ladder's first rung).
    enabled: bool = True
    window_s: float = Field(60.0, gt=0, le=3600)  # the degradation score's rolling window
    min_samples: int = Field(5, ge=1, le=10_000)  # below this a rung's score is 1.0 (unknown)
    circuit: CircuitSettings = CircuitSettings()
    leave_below: LeaveBelow = LeaveBelow()
    # Latencies are judged against healthy latencies of at least latency_floor_s: an endpoint
    # answering in milliseconds is not "4x slower" because a busy proxy added a few more.
    latency_floor_s: float = Field(0.5, ge=0, le=600)
    # Latency SLO: a window's p95 over this many times the healthy p95 (the rung's baseline), or
    # the recent answers' median over this many times the healthy median (and over the healthy
    # p95), is a breach...
    latency_slo_factor: float = Field(2.0, gt=1, le=100)
    # ...and a breach that lasts this long marks the rung degraded.
    latency_slo_s: float = Field(300.0, gt=0, le=86_400)
    # Synthetic probes through Envoy, per rung endpoint; 0 turns them off. Endpoints some
    # traffic is avoiding (circuit open or half-open, or a score some class left) are probed
    # every `recovery_probe_s`, so recovery is noticed within seconds however long the outage.
    # Never while the provider's Retry-After or rate-limit reset runs.
    probe_interval_s: float = Field(60.0, ge=0, le=86_400)
    recovery_probe_s: float = Field(5.0, gt=0, le=3600)
    # Probe targets: every endpoint the policy names with a fixed model, plus at most this many
    # client-named models (`$requested` rungs), the most recently used by live traffic.
    max_probed_models: int = Field(20, ge=0, le=10_000)
    # Endpoints of client-named models (`$requested` rungs) the board remembers, least recently
    # used out; endpoints the policy names with a fixed model are never evicted. Every model name
    # a client sends could otherwise become an endpoint for good. A few hundred covers any real
    # catalogue of models, and bounds the board's memory and its per-tick walk.
    max_client_endpoints: int = Field(500, ge=1, le=100_000)
    # Share of live traffic (not revenue-critical) served by fallback rungs to keep them measured.
    canary_share: float = Field(0.0, ge=0, le=0.5)
    # Fleet-wide: extra tries at most this share of requests, plus a floor, per window.
    retry_budget_ratio: float = Field(0.2, ge=0, le=10)
    retry_budget_floor: int = Field(10, ge=0, le=1_000_000)
    retry_budget_window_s: float = Field(10.0, gt=0, le=3600)
    # A rung whose provider says it has at most this many requests left is skipped until its
    # rate limit resets (hop before the 429 comes).
    quota_floor_requests: int = Field(1, ge=0)
    # None: in-process (a pod-local hub under `rungway up`); "redis://host:6379/0" for a fleet.
    bus: str | None = None
    bus_security: BusSecurity = BusSecurity()

    @field_validator("bus")
    @classmethod
    def _bus_url(cls, value: str | None) -> str | None:
        if value is not None and value != "local" and urlsplit(value).scheme not in ("redis", "rediss"):
            # The scheme only: a URL can carry a password.
            scheme = urlsplit(value).scheme
            raise ValueError(f"bus must be 'local' or a redis:// or rediss:// URL, but its scheme was {scheme!r}")
        return value

    @model_validator(mode="after")
    def _one_bus_password(self) -> HealthSettings:
        if self.bus_security.password is not None and self.bus and urlsplit(self.bus).password is not None:
            raise ValueError("the bus password is in both the bus URL and bus_security.password: keep one")
        return self


class Passthrough(_Frozen):
    """Where an authenticated request for another path (a model list, token counting) goes,
    untranslated, by the dialect of the caller's SDK: never the other dialect's.

    Only the listed `METHOD /path` globs pass: a pass-through spends the organisation's key with
    no ladder and no tenant rule, and most other paths (files, batches, fine-tunes) reach objects
    every tenant shares under that key. Add one (e.g. "POST /v1/embeddings") deliberately."""

    openai: str | None = None
    anthropic: str | None = None
    paths: tuple[str, ...] = ("GET /v1/models", "GET /v1/models/*", "POST /v1/messages/count_tokens")

    @field_validator("paths")
    @classmethod
    def _method_and_path(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            method, _, path = entry.partition(" ")
            if not method.isupper() or not method.isalpha() or not path.startswith("/") or ".." in path:
                raise ValueError(f"pass-through paths are 'METHOD /path-glob', but one was {entry!r}")
        return value

    def allows(self, method: str, path: str) -> bool:
        """Whether `METHOD /path` (query ignored) may pass through."""
        path = path.split("?", 1)[0]
        if ".." in path:
            return False
        for entry in self.paths:
            allowed_method, _, pattern = entry.partition(" ")
            if method == allowed_method and fnmatch.fnmatchcase(path, pattern):
                return True
        return False


class Shadow(_Frozen):
    """Continuous verification (D2): a share of live requests is also sent, non-streamed, to each
    other rung of its ladder the tenant permits, through the sidecar; the answer is judged by the
    task's health contract and the rung's latency baseline and never reaches the client.

    `share` is per request (0.001-0.005 is a production setting; 0 turns it off). A tenant's
    shadow spend per hour is capped by `max_cost_per_tenant_hour` (in the providers' cost_per_1k
    units; each worker process keeps its own ledger, so a pod's cap is that times its workers)."""

    share: float = Field(0.0, ge=0, le=1)
    timeout_s: float = Field(30.0, gt=0, le=600)
    # An answer slower than this many times the rung's latency baseline is a regression.
    slow_factor: float = Field(3.0, ge=1, le=100)
    max_cost_per_tenant_hour: float = Field(1.0, ge=0)
    # Shadow calls in flight per worker process: past it a sampled request is not shadowed.
    max_in_flight: int = Field(4, ge=1, le=256)


# The capability matrix (T5): what a task class may get from a model.
Allowance = Literal["allowed", "forbidden", "degraded_only"]


class ToolRules(_Frozen):
    """Tools that act on the world (issue_refund, send_email): a policy list, never offered to a
    rung below `write_lowest_tier` (a higher tier number is a lower rung)."""

    write: tuple[str, ...] = ()
    write_lowest_tier: int = Field(0, ge=0, le=3)
    # The tools a `retrieval_only` rung keeps (search_kb): product tier 2, answers from retrieval.
    retrieval: tuple[str, ...] = ()


class ContextRules(_Frozen):
    """Context on hop (F6): a try on a rung whose window is smaller than the request keeps the
    system prompt and the latest turns and drops the middle (a tool call never without its
    result). Off: such a rung is skipped for the request."""

    trim: bool = False
    # A marked user message where the middle was ("[rungway: N earlier messages omitted ...]").
    placeholder: bool = True


class AuditSettings(_Frozen):
    """The audit trail (A1): hash-chained JSON-lines segments, one chain per worker process.

    `dir` unset: `rungway up` keeps it in its state directory (`--audit-dir` to choose); a lone
    `rungway serve` writes none. Records go through a bounded queue to a writer thread: past
    `queue_records` waiting, the worker waits for the writer (backpressure) rather than drop one;
    `/status` raises an alarm from `alarm_records` waiting."""

    enabled: bool = True
    dir: Path | None = None
    # Records carry the SHA-256 of the request body: decide then reads every body (one more
    # ext_proc message per request; bench/AUDIT.md). False: no body is read for the trail.
    prompt_hash: bool = True
    fsync_interval_s: float = Field(0.05, ge=0, le=10)
    queue_records: int = Field(10_000, ge=1, le=10_000_000)
    alarm_records: int = Field(1_000, ge=1)
    segment_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    # Retention: segments older than this, or past this many bytes per chain, are deleted (the
    # chain records that it did, so verify still passes). None keeps everything.
    max_age_s: float | None = Field(None, gt=0)
    max_bytes: int | None = Field(None, ge=4096)
    # Fleet mode: `rungway up` also ships every record, line for line, to one Redis stream on
    # the health bus's Redis (health.bus must be a redis:// URL), where the fleet's trail verifies.
    export: Literal["bus"] | None = None


Ladder = Annotated[list[Rung], Field(min_length=1, max_length=MAX_LADDER_LENGTH)]


class Policy(_Frozen):
    version: str = Field(min_length=1)
    clients: Clients
    task_header: str = "x-rungway-task"
    impact_header: str = "x-rungway-impact"
    default_task: str = "default"
    default_impact: Impact = Impact.CUSTOMER_FACING
    # Tries that reach a provider, per request (skipped slots are free): room for the same rung
    # once on the first two rungs and one more rung.
    max_attempts: int = Field(5, ge=1, le=10)
    # A 429 whose Retry-After is at most this is waited out on the same rung when it has an
    # attempt left; otherwise the try hops at once (to the rung's next slot if it has one).
    retry_after_max_s: float = Field(2.0, ge=0, le=60)
    hop_on_safety_block: bool = False
    # After the first byte of a stream: silence this long ends it with an in-band error event.
    stream_stall_s: float = Field(15.0, gt=0, le=600)
    # After a finish event, how long to wait for the provider's terminal marker before
    # finalising the stream ourselves.
    stream_finish_grace_s: float = Field(1.0, gt=0, le=60)
    # Once Rungway has sent the client the end of a stream (an error event or the finalised
    # tail) the provider's side must still end before the HTTP response may end (Envoy 1.40
    # crashes otherwise). A provider that does not end within this is reset through Envoy.
    stream_abandon_s: float = Field(5.0, gt=0, le=600)
    # A stream rescue's whole budget (the rescue rung's first token and the rest of the answer);
    # it never outlives the request's own route timeout.
    stream_rescue_s: float = Field(60.0, gt=0, le=600)
    # How a regenerated answer must match what the client already has: "whitespace" ignores
    # differences in whitespace, "exact" compares characters.
    stream_rescue_match: Literal["whitespace", "exact"] = "whitespace"
    # The longest generation allowed end to end (Envoy's route timeout; 0 disables it).
    route_timeout_s: float = Field(600.0, ge=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=30 * 1024 * 1024)
    # Load shedding: requests one sidecar worker has in flight (its tries, and requests it routed
    # whose try has not started). Past it, decide answers at once: 503 with a Retry-After of
    # shed_retry_after_s, in the client's dialect. Without a cap, overload shows as ext_proc
    # message timeouts and mass fail-open. A worker relays a few thousand stream events a second:
    # 256 streams at ~20 tokens/s is about all one core can carry.
    max_in_flight: int = Field(256, ge=1, le=100_000)
    shed_retry_after_s: int = Field(1, ge=1, le=300)
    providers: dict[str, Provider] = Field(min_length=1)
    tasks: dict[str, TaskClass] = Field(default_factory=lambda: {"default": TaskClass()})
    ladders: dict[str, Ladder] = Field(min_length=1)
    models: list[ModelRoute] = Field(min_length=1)
    passthrough: Passthrough = Passthrough()
    # None turns Envoy's ejection off (Rungway's own circuits still apply).
    envoy_ejection: Ejection | None = Ejection()
    health: HealthSettings = HealthSettings()
    # Per-tenant degradation rules, by tenant name (the key holder); `tenant_defaults` for the rest.
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    tenant_defaults: TenantPolicy = TenantPolicy()
    deferral: Deferral | None = None
    review: Review | None = None
    # Human escalation (E2): the on-call's webhook; tenants' `escalate:` rules say when.
    escalation: EscalationSettings | None = None
    # The approvals file (`rungway approve` edits it, every worker follows it within a second);
    # required when a tenant's policy asks for approvals. Keep it on durable storage.
    approvals: Path | None = None
    shadow: Shadow = Shadow()
    # Product tiers (T6): what an answer served at a tier says to the client about what still
    # works and what is limited (x-rungway-notice), e.g. {2: "Some account actions are
    # temporarily unavailable."}.
    tier_notices: dict[int, str] = Field(default_factory=dict)
    # Signs tier-change notices POSTed to tenants' notify_url (HMAC-SHA256, x-rungway-signature).
    notify_secret: Credential | None = None
    # Task class -> model (exact name or glob; exact first, then globs in order) -> allowance.
    # A model a task class's map does not name is allowed. degraded_only: only as a fallback
    # (never the ladder's first rung), so its answer is always flagged degraded.
    capability_matrix: dict[str, dict[str, Allowance]] = Field(default_factory=dict)
    tools: ToolRules = ToolRules()
    context: ContextRules = ContextRules()
    audit: AuditSettings = AuditSettings()

    @field_validator("task_header", "impact_header")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("tier_notices")
    @classmethod
    def _notices(cls, value: dict[int, str]) -> dict[int, str]:
        for tier, text in value.items():
            if not 1 <= tier <= 4:
                raise ValueError(f"tier_notices: tiers are 1-4, not {tier}")
            if not text or len(text) > 300 or not all(" " <= c <= "~" for c in text):
                raise ValueError(f"tier_notices.{tier}: 1-300 printable ASCII characters (it is a header)")
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
                if rung.tool_mode is ToolMode.RETRIEVAL_ONLY and not self.tools.retrieval:
                    problems.append(f"ladders.{ladder_name}.{i}.tool_mode: retrieval_only needs tools.retrieval")
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
            name = getattr(self.passthrough, dialect)
            if name is None:
                continue
            if name not in self.providers:
                problems.append(f"passthrough.{dialect}: {name!r} is not a provider")
            elif self.providers[name].dialect.wire.value != dialect:
                problems.append(f"passthrough.{dialect}: {name!r} does not speak {dialect}")
        for name, tenant in [*self.tenants.items(), ("", self.tenant_defaults)]:
            where = f"tenants.{name}" if name else "tenant_defaults"
            if tenant.approval_beyond_tier is not None and self.approvals is None:
                problems.append(f"{where}.approval_beyond_tier: set `approvals:` (the approvals file) too")
            if tenant.approval_wait_s is not None and tenant.approval_beyond_tier is None:
                problems.append(f"{where}.approval_wait_s: holds for an approval only with approval_beyond_tier")
            for task in tenant.tasks:
                if task not in self.tasks:
                    problems.append(f"{where}.tasks: unknown task class {task!r}")
            if self.review is None and (
                tenant.rerun_on_recovery or any(t.rerun_on_recovery for t in tenant.tasks.values())
            ):
                problems.append(f"{where}.rerun_on_recovery: set `review:` (where re-runs are kept) too")
            if tenant.notify_url is not None:
                if self.notify_secret is None:
                    problems.append(f"{where}.notify_url: needs notify_secret to sign its POSTs")
                if urlsplit(tenant.notify_url).scheme not in ("http", "https"):
                    problems.append(f"{where}.notify_url: {tenant.notify_url!r} is not an http(s) URL")
            if any(rule is not None for rule in (tenant.escalate, *(t.escalate for t in tenant.tasks.values()))):
                if self.escalation is None:
                    problems.append(f"{where}.escalate: set `escalation:` (the on-call's webhook) too")
                if self.deferral is None:
                    problems.append(f"{where}.escalate: set `deferral:` too (escalated requests are stored there)")
                elif self.deferral.store is None:
                    problems.append(
                        f"{where}.escalate: needs deferral.store (escalations are kept in SQLite, not Redis)"
                    )
            if tenant.callback_url is not None:
                if self.deferral is None or self.deferral.callback_secret is None:
                    problems.append(f"{where}.callback_url: needs deferral.callback_secret to sign its POSTs")
                if urlsplit(tenant.callback_url).scheme not in ("http", "https"):
                    problems.append(f"{where}.callback_url: {tenant.callback_url!r} is not an http(s) URL")
        for task in self.capability_matrix:
            if task not in self.tasks:
                problems.append(f"capability_matrix: unknown task class {task!r}")
        if problems:
            raise ValueError(PROBLEM_MARK + PROBLEM_MARK.join(problems))
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Policy:
        """A copy whose derived values (stamp, relay routes) are its own, not the original's."""
        copied = super().model_copy(update=update, deep=deep)
        for derived in ("stamp", "relay_routes"):
            copied.__dict__.pop(derived, None)
        return copied

    @cached_property
    def stamp(self) -> str:
        """`<version>+<12 hex digits of the content's SHA-256>`: the revision stamped on every
        answer (x-rungway-policy-version) and decision. An edit that forgets to bump `version`
        still shows; a comment-only edit changes nothing."""
        content = json.dumps(_canonical(self.model_dump(mode="python")), sort_keys=True, separators=(",", ":"))
        return f"{self.version}+{hashlib.sha256(content.encode()).hexdigest()[:12]}"

    @cached_property
    def relay_routes(self) -> dict[tuple[str, int], str]:
        """Each rung's relay route key, `<ladder>/<index>~<content hash>` (x-rungway-rung): a
        rung whose provider or settings change gets a new key, so a try decided under the
        previous revision still reaches the rung it was decided for while both are served."""
        out = {}
        for ladder, rungs in self.ladders.items():
            for i, rung in enumerate(rungs):
                content = {
                    "rung": rung.model_dump(mode="python"),
                    "provider": self.providers[rung.provider].model_dump(),
                }
                digest = hashlib.sha256(json.dumps(_canonical(content), sort_keys=True).encode()).hexdigest()[:10]
                out[(ladder, i)] = f"{ladder}/{i}~{digest}"
        return out

    def tenant(self, name: str) -> TenantPolicy:
        return self.tenants.get(name, self.tenant_defaults)

    def task_class(self, name: str) -> TaskClass:
        """The task class a request of `name` is held to (an unknown name: the default's)."""
        return self.tasks.get(name) or self.tasks[self.default_task]

    def impact_for(self, tenant: str, task: str, claimed: str | None) -> Impact:
        """A request's impact (T3): what its header claims, if the tenant may claim it; else the
        tenant's task class's, the tenant's, or the policy's default."""
        rules = self.tenant(tenant)
        if claimed in _IMPACTS and (rules.header_impacts is None or _IMPACTS[claimed] in rules.header_impacts):
            return _IMPACTS[claimed]
        override = rules.tasks.get(task)
        if override is not None and override.impact is not None:
            return override.impact
        return rules.impact or self.default_impact

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

    def context_window_of(self, ladder: str, index: int) -> int:
        """A rung's context window: its own, else its provider's."""
        rung = self.ladders[ladder][index]
        return rung.context_window or self.providers[rung.provider].context_window

    def allowance(self, task: str, model: str) -> Allowance:
        """The capability matrix's word on a task class served by a model."""
        row = self.capability_matrix.get(task, {})
        if model in row:
            return row[model]
        for pattern, allowance in row.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(model, pattern):
                return allowance
        return "allowed"

    def tier_of(self, ladder: str, index: int) -> int:
        rung = self.ladders[ladder][index]
        return rung.tier if rung.tier is not None else min(index, 3)

    def passthrough_provider(self, dialect: Dialect) -> str | None:
        """The dialect's primary: explicit, else the first tier-0 rung speaking it."""
        explicit = getattr(self.passthrough, dialect.wire.value)
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


def _canonical(value: Any) -> Any:
    """Plain JSON values every process orders alike (a set's own order follows the process's
    string hashing)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # paths, addresses, networks


_IMPACTS = {i.value: i for i in Impact}


def _header_name(value: str) -> str:
    if not value or value != value.lower() or not all(c.isalnum() or c == "-" for c in value):
        raise ValueError(f"header names must be lower-case tokens, but was {value!r}")
    return value
