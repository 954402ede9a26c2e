"""Client keys: issued once, stored as digests, resolved to the tenant that holds them."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import Dialect
from extproc.identity import (
    ID_BYTES,
    KEY_PREFIX,
    SECRET_BYTES,
    Credential,
    Identity,
    KeyStore,
    KeyStoreError,
    Unknown,
    issue,
    presented_credential,
)
from extproc.runtime.keyfile import KeyFile, read_store, write_store

RANDOM = bytes(range(ID_BYTES + SECRET_BYTES))


def test_a_key_is_shown_once_and_only_its_digest_is_stored() -> None:
    plaintext, key = issue("acme", 100.0, RANDOM, label="ci")
    assert plaintext.startswith(KEY_PREFIX + key.id + "_")
    store = KeyStore((key,))
    text = store.encode()
    assert plaintext not in text and plaintext[len(KEY_PREFIX) + 13 :] not in text
    assert KeyStore.parse(text) == store
    assert store.resolve(Credential(plaintext, Dialect.OPENAI), 200.0) == Identity("acme", key.id, Dialect.OPENAI)


def test_several_keys_per_tenant_rotate_independently() -> None:
    old, k1 = issue("acme", 0.0, RANDOM)
    new, k2 = issue("acme", 0.0, bytes(reversed(RANDOM)))
    store = KeyStore((k1, k2)).without(k1.id)
    assert store.resolve(Credential(old, Dialect.OPENAI), 1.0) is Unknown.UNKNOWN
    assert store.resolve(Credential(new, Dialect.ANTHROPIC), 1.0) == Identity("acme", k2.id, Dialect.ANTHROPIC)


def test_an_expiring_key_works_until_its_time() -> None:
    plaintext, key = issue("acme", 0.0, RANDOM, expires=60.0)
    store = KeyStore((key,))
    assert isinstance(store.resolve(Credential(plaintext, Dialect.OPENAI), 59.9), Identity)
    assert store.resolve(Credential(plaintext, Dialect.OPENAI), 60.0) is Unknown.EXPIRED


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer rwk_a", None, Credential("rwk_a", Dialect.OPENAI)),
        ("bearer  rwk_a ", None, Credential("rwk_a", Dialect.OPENAI)),
        (None, "rwk_b", Credential("rwk_b", Dialect.ANTHROPIC)),
        ("Bearer rwk_a", "rwk_a", Credential("rwk_a", Dialect.OPENAI)),
        ("Bearer rwk_a", "rwk_b", Unknown.AMBIGUOUS),
        ("Basic dXNlcg==", None, Unknown.UNKNOWN),
        ("Bearer ", None, Unknown.UNKNOWN),
        (None, None, Unknown.MISSING),
        (None, "  ", Unknown.MISSING),
    ],
)
def test_the_credential_is_read_the_way_each_sdk_sends_it(
    authorization: str | None, x_api_key: str | None, expected: object
) -> None:
    assert presented_credential(authorization, x_api_key) == expected


@given(st.text(max_size=300), st.sampled_from(list(Dialect)))
def test_no_guess_resolves_to_a_tenant(guess: str, dialect: Dialect) -> None:
    _, key = issue("acme", 0.0, RANDOM)
    assert isinstance(KeyStore((key,)).resolve(Credential(guess, dialect), 1.0), Unknown)


@given(st.binary(max_size=2000))
def test_any_store_text_parses_or_is_a_clear_error(raw: bytes) -> None:
    with contextlib.suppress(KeyStoreError):
        KeyStore.parse(raw.decode("utf-8", "replace"))


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["keys"][0].update(tenant="a b"), "keys.0.tenant"),
        (lambda d: d["keys"][0].update(sha256="00"), "keys.0.sha256"),
        (lambda d: d["keys"][0].update(created=-1), "keys.0.created"),
        (lambda d: d["keys"][0].update(expires="soon"), "keys.0.expires"),
        (lambda d: d["keys"][0].update(secret="x"), "unknown fields"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), "appears twice"),
    ],
)
def test_a_broken_store_names_the_problem(mutate: object, problem: str) -> None:
    _, key = issue("acme", 0.0, RANDOM)
    data = json.loads(KeyStore((key,)).encode())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(KeyStoreError, match=problem):
        KeyStore.parse(json.dumps(data))


def test_tenant_names_are_bounded_tokens() -> None:
    with pytest.raises(KeyStoreError):
        issue("a" * 65, 0.0, RANDOM)
    with pytest.raises(KeyStoreError):
        issue("team/blue", 0.0, RANDOM)


def test_the_store_file_is_written_atomically_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    assert read_store(path) == KeyStore()  # absent: nobody may call yet
    _, key = issue("acme", 0.0, RANDOM)
    write_store(path, KeyStore((key,)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_store(path) == KeyStore((key,))
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_a_changed_store_is_taken_and_a_broken_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _first, k1 = issue("acme", 0.0, RANDOM)
    write_store(path, KeyStore((k1,)))
    watched = KeyFile(path)
    assert watched.refresh() is False
    _second, k2 = issue("blue", 0.0, bytes(reversed(RANDOM)))
    write_store(path, KeyStore((k1, k2)))
    assert watched.refresh() is True and len(watched.value.keys) == 2
    path.write_text("{not json")
    assert watched.refresh() is False
    assert len(watched.value.keys) == 2  # the last good store stays
