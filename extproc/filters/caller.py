"""Who is calling (the tenant holding the credential) and what of the caller's never goes
upstream: every credential and every provider-specific header the client sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ..core import Dialect
from ..core.names import CLUSTER_HEADER
from ..identity import Identity, KeyStore, Unknown, presented_credential
from ..identity.keys import valid_tenant
from ..policy import Policy

# Headers that carry a credential for some API or service: the app's, never a provider's.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
    }
)
# Provider-specific headers (organisation, project, betas, AWS signing) and Rungway's own.
# Anthropic's version and betas survive in the decision and are set again per rung.
FOREIGN_PREFIXES = ("openai-", "anthropic-", "x-amz-", "x-rungway-")


def identify(
    policy: Policy, store: KeyStore, headers: Mapping[str, str], peer: str, now: float, *, repeated: bool = False
) -> Identity | Unknown:
    """The caller (`repeated`: a credential header came more than once), and the API its SDK speaks: Anthropic's SDKs send `anthropic-version` on
    every request (and their key as x-api-key or, in newer ones, as a Bearer token)."""
    clients = policy.clients
    anthropic = "x-api-key" in headers or "anthropic-version" in headers
    dialect = Dialect.ANTHROPIC if anthropic else Dialect.OPENAI
    if clients.auth == "keys":
        if repeated:
            return Unknown.AMBIGUOUS  # which copy would count is the proxy's choice, not ours
        credential = presented_credential(headers.get("authorization"), headers.get("x-api-key"))
        found = store.resolve(credential, now)
        return found if isinstance(found, Unknown) else replace(found, dialect=dialect)
    if not clients.trusts(peer):
        return Unknown.UNTRUSTED_PEER
    tenant = headers.get(clients.tenant_header, "")
    if not valid_tenant(tenant):
        return Unknown.NO_TENANT
    return Identity(tenant, "", dialect)


def foreign_headers(names: Iterable[str], policy: Policy) -> list[str]:
    """The client's headers to remove before anything goes upstream (names are lower-case)."""
    own = {policy.clients.tenant_header, policy.task_header, policy.impact_header}
    return [
        name
        for name in names
        if name != CLUSTER_HEADER and (name in CREDENTIAL_HEADERS or name in own or name.startswith(FOREIGN_PREFIXES))
    ]


def repeated_credential(names: Iterable[str]) -> bool:
    """Whether the authorization or x-api-key header appears more than once."""
    seen: set[str] = set()
    for name in names:
        if name in ("authorization", "x-api-key"):
            if name in seen:
                return True
            seen.add(name)
    return False
