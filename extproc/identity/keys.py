"""Rungway-issued client keys: issued once, stored only as a SHA-256 digest, resolved to a tenant.

A key is `rwk_<id>_<secret>`: the id is public (it names the key in lists, logs and audit
records), the secret is 32 random bytes. Keys are high-entropy, so a plain SHA-256 digest is as
good as a slow hash here and costs one microsecond per request. A tenant may hold several keys
(rotation); a key may expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from ..core import Dialect

KEY_PREFIX = "rwk_"
STORE_VERSION = 1
ID_BYTES = 6
SECRET_BYTES = 32
# Tenant names become metric labels and audit fields: short tokens only.
MAX_TENANT_LENGTH = 64
# A presented credential longer than this is not ours (and is not hashed).
MAX_CREDENTIAL_LENGTH = 256


class KeyStoreError(ValueError):
    """The key store file is not a valid store; the message says where, never a digest."""


def valid_tenant(name: str) -> bool:
    return 0 < len(name) <= MAX_TENANT_LENGTH and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ClientKey:
    id: str
    tenant: str
    sha256: str
    created: float
    expires: float | None = None
    label: str = ""

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "tenant": self.tenant, "sha256": self.sha256, "created": self.created}
        if self.expires is not None:
            out["expires"] = self.expires
        if self.label:
            out["label"] = self.label
        return out

    @classmethod
    def decode(cls, raw: object, where: str) -> ClientKey:
        if not isinstance(raw, dict):
            raise KeyStoreError(f"{where}: a key must be an object")
        unknown = set(raw) - {"id", "tenant", "sha256", "created", "expires", "label"}
        if unknown:
            raise KeyStoreError(f"{where}: unknown fields {sorted(unknown)}")
        key_id, tenant, sha256 = raw.get("id"), raw.get("tenant"), raw.get("sha256")
        created, expires, label = raw.get("created"), raw.get("expires"), raw.get("label", "")
        if not isinstance(key_id, str) or len(key_id) != 2 * ID_BYTES or not _is_hex(key_id):
            raise KeyStoreError(f"{where}.id: must be {2 * ID_BYTES} hex digits")
        if not isinstance(tenant, str) or not valid_tenant(tenant):
            raise KeyStoreError(f"{where}.tenant: must be 1-{MAX_TENANT_LENGTH} of letters, digits, '-', '_', '.'")
        if not isinstance(sha256, str) or len(sha256) != 64 or not _is_hex(sha256):
            raise KeyStoreError(f"{where}.sha256: must be 64 hex digits")
        if not _is_time(created):
            raise KeyStoreError(f"{where}.created: must be a time in seconds")
        if expires is not None and not _is_time(expires):
            raise KeyStoreError(f"{where}.expires: must be a time in seconds or absent")
        if not isinstance(label, str) or len(label) > 200:
            raise KeyStoreError(f"{where}.label: must be text of at most 200 characters")
        return cls(key_id, tenant, sha256, float(created), float(expires) if _is_time(expires) else None, label)


class Unknown(StrEnum):
    """Why a request is not served: each value is the message its client reads."""

    MISSING = "no API key: send your Rungway key as the SDK's API key (the authorization or x-api-key header)"
    AMBIGUOUS = "more than one API key was sent: send one"
    UNKNOWN = "the API key is not valid"
    EXPIRED = "the API key has expired"
    UNTRUSTED_PEER = "this caller may not name a tenant"
    NO_TENANT = "the trusted caller named no tenant"


@dataclass(frozen=True, slots=True)
class Credential:
    """A key as the client sent it, and the dialect of the header it came in."""

    secret: str
    dialect: Dialect


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, and which API their SDK speaks (where a pass-through request may go)."""

    tenant: str
    key_id: str  # "" when the tenant came from a trusted peer's header
    dialect: Dialect


def presented_credential(authorization: str | None, x_api_key: str | None) -> Credential | Unknown:
    """The credential a request carries: OpenAI SDKs send `Authorization: Bearer`, Anthropic
    SDKs `x-api-key`."""
    bearer = None
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        if bearer is None:
            return Unknown.UNKNOWN
    api_key = x_api_key.strip() if x_api_key is not None else None
    if bearer and api_key and bearer != api_key:
        return Unknown.AMBIGUOUS
    if bearer:
        return Credential(bearer, Dialect.OPENAI)
    if api_key:
        return Credential(api_key, Dialect.ANTHROPIC)
    return Unknown.MISSING


@dataclass(frozen=True)
class KeyStore:
    keys: tuple[ClientKey, ...] = ()
    _by_digest: dict[str, ClientKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_digest", {k.sha256: k for k in self.keys})

    def resolve(self, credential: Credential | Unknown, now: float) -> Identity | Unknown:
        if isinstance(credential, Unknown):
            return credential
        secret = credential.secret
        if len(secret) > MAX_CREDENTIAL_LENGTH or not secret.startswith(KEY_PREFIX):
            return Unknown.UNKNOWN
        # A dict lookup by digest: the digest of a guess says nothing about any stored key.
        key = self._by_digest.get(digest_of(secret))
        if key is None:
            return Unknown.UNKNOWN
        if key.expired(now):
            return Unknown.EXPIRED
        return Identity(key.tenant, key.id, credential.dialect)

    def tenants(self) -> frozenset[str]:
        return frozenset(k.tenant for k in self.keys)

    def with_key(self, key: ClientKey) -> KeyStore:
        return KeyStore((*self.keys, key))

    def without(self, key_id: str) -> KeyStore:
        if not any(k.id == key_id for k in self.keys):
            raise KeyStoreError(f"no key with id {key_id!r}")
        return KeyStore(tuple(k for k in self.keys if k.id != key_id))

    def encode(self) -> str:
        return json.dumps({"version": STORE_VERSION, "keys": [k.encode() for k in self.keys]}, indent=1) + "\n"

    @classmethod
    def parse(cls, text: str) -> KeyStore:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise KeyStoreError(f"the key store is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STORE_VERSION or not isinstance(data.get("keys"), list):
            raise KeyStoreError(f'the key store must be {{"version": {STORE_VERSION}, "keys": [...]}}')
        keys = tuple(ClientKey.decode(raw, f"keys.{i}") for i, raw in enumerate(data["keys"]))
        seen: set[str] = set()
        for key in keys:
            if key.id in seen:
                raise KeyStoreError(f"key id {key.id} appears twice")
            seen.add(key.id)
        if len({k.sha256 for k in keys}) != len(keys):
            raise KeyStoreError("two keys share a digest")
        return cls(keys)


def issue(
    tenant: str, now: float, randomness: bytes, *, expires: float | None = None, label: str = ""
) -> tuple[str, ClientKey]:
    """A new key for `tenant` from ID_BYTES + SECRET_BYTES of randomness: the key (shown once)
    and the record to store."""
    if not valid_tenant(tenant):
        raise KeyStoreError(f"tenant names are 1-{MAX_TENANT_LENGTH} of letters, digits, '-', '_', '.': {tenant!r}")
    if len(randomness) != ID_BYTES + SECRET_BYTES:
        raise ValueError(f"issue needs {ID_BYTES + SECRET_BYTES} random bytes")
    if expires is not None and expires <= now:
        raise KeyStoreError("a key must expire after it is created")
    key_id = randomness[:ID_BYTES].hex()
    secret = base64.urlsafe_b64encode(randomness[ID_BYTES:]).decode().rstrip("=")
    plaintext = f"{KEY_PREFIX}{key_id}_{secret}"
    return plaintext, ClientKey(key_id, tenant, digest_of(plaintext), now, expires, label)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _is_time(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
