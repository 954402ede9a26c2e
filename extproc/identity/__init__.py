"""Who is calling: Rungway-issued client keys (stored as hashes) and the tenant that holds each.

Pure: parsing a key store, issuing a key, and resolving a presented credential to a tenant take
their inputs (text, time, randomness) as arguments; reading and writing the store file is the
runtime's and the CLI's. May import core only.
"""

from .keys import (
    ID_BYTES,
    KEY_PREFIX,
    SECRET_BYTES,
    ClientKey,
    Credential,
    Identity,
    KeyStore,
    KeyStoreError,
    Unknown,
    issue,
    presented_credential,
)

__all__ = [
    "ID_BYTES",
    "KEY_PREFIX",
    "SECRET_BYTES",
    "ClientKey",
    "Credential",
    "Identity",
    "KeyStore",
    "KeyStoreError",
    "Unknown",
    "issue",
    "presented_credential",
]
