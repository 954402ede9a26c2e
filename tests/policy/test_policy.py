"""Policy v1: eager validation with 'location: message' problems, the model map, providers' paths,
tiers, the pass-through primary, client authentication, and credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.core import Dialect
from extproc.policy import (
    MAX_LADDER_LENGTH,
    Policy,
    PolicyError,
    Provider,
    load_policy,
    parse_policy,
    resolve_credentials,
)
from tests.builders import make_policy, policy_data


def problems_of(**overrides: Any) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_data(**overrides), "team.yaml")
    assert caught.value.source == "team.yaml"
    return caught.value.problems


def with_provider(name: str, **fields: Any) -> dict[str, Any]:
    providers: dict[str, Any] = policy_data()["providers"]
    providers[name] = {**providers.get(name, {}), **fields}
    return providers


# ---- field-level errors -------------------------------------------------------------------------


def test_the_shared_policy_is_valid() -> None:
    policy = make_policy()
    assert policy.version == "unit-2026.1"
    assert policy.model_config.get("frozen") is True


def test_unknown_top_level_field_is_named() -> None:
    assert problems_of(retries=3) == ["retries: unknown field"]


def test_unknown_nested_field_is_located() -> None:
    providers = with_provider("primary", colour="red")
    assert problems_of(providers=providers) == ["providers.primary.colour: unknown field"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://files.test", "base_url must be an http(s) URL with a host, but was 'ftp://files.test'"),
        ("http://", "base_url must be an http(s) URL with a host, but was 'http://'"),
        ("api.openai.com", "base_url must be an http(s) URL with a host, but was 'api.openai.com'"),
        ("https://h.test/v1?key=1", "base_url must not carry a query or fragment, but was 'https://h.test/v1?key=1'"),
        ("https://h.test/#frag", "base_url must not carry a query or fragment, but was 'https://h.test/#frag'"),
    ],
)
def test_bad_base_url_echoes_the_value(url: str, problem: str) -> None:
    assert problems_of(providers=with_provider("primary", base_url=url)) == [f"providers.primary.base_url: {problem}"]


def test_every_field_problem_is_listed_at_once() -> None:
    providers = with_provider("primary", base_url="ftp://x", dialect="grpc")
    assert problems_of(providers=providers, max_attempts=0) == [
        "max_attempts: Input should be greater than or equal to 1",
        "providers.primary.base_url: base_url must be an http(s) URL with a host, but was 'ftp://x'",
        "providers.primary.dialect: Input should be 'openai', 'anthropic' or 'openai_compatible'",
    ]


def test_ladder_longer_than_the_limit_is_refused() -> None:
    ladders = {**policy_data()["ladders"], "main": [{"provider": "primary"}] * (MAX_LADDER_LENGTH + 1)}
    assert problems_of(ladders=ladders) == [
        f"ladders.main: List should have at most {MAX_LADDER_LENGTH} items after validation, not {MAX_LADDER_LENGTH + 1}"
    ]


def test_empty_ladder_is_refused() -> None:
    ladders = {**policy_data()["ladders"], "main": []}
    assert problems_of(ladders=ladders) == ["ladders.main: List should have at least 1 item after validation, not 0"]


def test_ladder_name_outside_the_cluster_name_alphabet_is_refused() -> None:
    ladders = {**policy_data()["ladders"], "a.b": [{"provider": "primary"}]}
    assert problems_of(ladders=ladders) == ["ladders: ladder names use letters, digits, '-' and '_', but was 'a.b'"]


def test_rung_ranges_echo_the_bound() -> None:
    ladders = {**policy_data()["ladders"], "main": [{"provider": "primary", "attempts": 9, "tier": 4}]}
    assert problems_of(ladders=ladders) == [
        "ladders.main.0.tier: Input should be less than or equal to 3",
        "ladders.main.0.attempts: Input should be less than or equal to 5",
    ]


def test_probe_targets_default_to_twenty_client_named_models_and_echo_a_bad_bound() -> None:
    assert make_policy().health.max_probed_models == 20
    assert make_policy(health={"max_probed_models": 0}).health.max_probed_models == 0
    assert problems_of(health={"max_probed_models": -1}) == [
        "health.max_probed_models: Input should be greater than or equal to 0"
    ]


def test_header_names_must_be_lower_case_tokens() -> None:
    assert problems_of(clients={"key_store": "k.json", "tenant_header": "X-Tenant"}) == [
        "clients.tenant_header: header names must be lower-case tokens, but was 'X-Tenant'"
    ]


def test_credential_needs_exactly_one_source() -> None:
    both = with_provider("primary", credential={"env": "A", "file": "/k"})
    assert problems_of(providers=both) == [
        "providers.primary.credential: credential needs exactly one of 'env' or 'file'"
    ]


# Cross-field rules. Each names the field at fault as its location, like every other problem
# (PolicyError.problems are 'location: message' lines).
@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        pytest.param(
            {
                "ladders": {"main": [{"provider": "primary"}, {"provider": "nope"}]},
                "models": [{"match": "*", "ladder": "main"}],
            },
            "ladders.main.1.provider: 'nope' is not a provider (known: primary, secondary, small)",
            id="rung-provider",
        ),
        pytest.param(
            {"models": [{"match": "*", "ladder": "nope"}]}, "models.0.ladder: 'nope' is not a ladder", id="model-ladder"
        ),
        pytest.param(
            {"models": [{"match": "*", "ladder": "main", "tasks": {"coding": "main"}}]},
            "models.0.tasks: unknown task class 'coding'",
            id="model-task",
        ),
        pytest.param(
            {"passthrough": {"openai": "secondary"}},
            "passthrough.openai: 'secondary' does not speak openai",
            id="passthrough-dialect",
        ),
        pytest.param(
            {"passthrough": {"anthropic": "ghost"}},
            "passthrough.anthropic: 'ghost' is not a provider",
            id="passthrough-provider",
        ),
        pytest.param({"default_task": "coding"}, "default_task: 'coding' is not in tasks", id="default-task"),
    ],
)
def test_cross_field_problem_is_located_at_the_field(overrides: dict[str, Any], problem: str) -> None:
    assert problems_of(**overrides) == [problem]


def test_cross_field_problem_says_what_is_wrong() -> None:
    # Whatever the location, the line carries the bad value and the choices.
    (line,) = problems_of(ladders={"main": [{"provider": "nope"}]}, models=[{"match": "*", "ladder": "main"}])
    assert "'nope' is not a provider (known: primary, secondary, small)" in line


def test_passthrough_accepts_an_openai_compatible_provider_for_openai() -> None:
    policy = make_policy(passthrough={"openai": "small", "anthropic": "secondary"})
    assert policy.passthrough_provider(Dialect.OPENAI) == "small"
    assert policy.passthrough_provider(Dialect.ANTHROPIC) == "secondary"


def test_policy_error_message_joins_source_and_problems() -> None:
    error = PolicyError("p.yaml", ["a: one", "b: two"])
    assert str(error) == "p.yaml: a: one; b: two"


# ---- loading files ----------------------------------------------------------------------------


def test_load_policy_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_data()))
    assert load_policy(path) == make_policy()


def test_load_policy_reports_the_yaml_position(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: v1\nproviders: [unclosed\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.source == str(path)
    (problem,) = caught.value.problems
    assert problem.startswith("line 3, column 1: ")


def test_load_policy_refuses_a_top_level_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.problems == ["the top level must be a mapping"]


def test_load_policy_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")
    assert caught.value.problems == ["cannot read: No such file or directory"]


# ---- the model map ----------------------------------------------------------------------------


def test_exact_model_name_beats_an_earlier_glob() -> None:
    policy = make_policy(models=[{"match": "gpt-*", "ladder": "main"}, {"match": "gpt-4o", "ladder": "claude"}])
    assert policy.ladder_for("gpt-4o", "default") == "claude"
    assert policy.ladder_for("gpt-4o-mini", "default") == "main"


def test_first_listed_glob_wins() -> None:
    policy = make_policy(models=[{"match": "gpt-4*", "ladder": "claude"}, {"match": "gpt-*", "ladder": "main"}])
    assert policy.ladder_for("gpt-4o", "default") == "claude"
    assert policy.ladder_for("gpt-3.5", "default") == "main"


def test_first_listed_exact_entry_wins() -> None:
    policy = make_policy(models=[{"match": "m", "ladder": "claude"}, {"match": "m", "ladder": "main"}])
    assert policy.ladder_for("m", "default") == "claude"


def test_glob_matching_is_case_sensitive_and_supports_classes() -> None:
    policy = make_policy(models=[{"match": "model-[ab]?", "ladder": "main"}])
    assert policy.ladder_for("model-a1", "default") == "main"
    assert policy.ladder_for("model-c1", "default") is None
    assert policy.ladder_for("MODEL-a1", "default") is None


def test_task_override_picks_its_own_ladder() -> None:
    policy = make_policy()
    assert policy.ladder_for("gpt-4o", "summarizer") == "summary"
    assert policy.ladder_for("gpt-4o", "default") == "main"
    assert policy.ladder_for("gpt-4o", "unknown-task") == "main"


def test_unmatched_model_has_no_ladder() -> None:
    assert make_policy().ladder_for("llama-3", "default") is None


# ---- providers ----------------------------------------------------------------------------------


def test_provider_address_parts() -> None:
    tls = Provider.model_validate({"base_url": "https://api.test/v1", "dialect": "openai"})
    assert (tls.tls, tls.host, tls.port, tls.authority) == (True, "api.test", 443, "api.test")
    plain = Provider.model_validate({"base_url": "http://10.0.0.7:8000", "dialect": "openai"})
    assert (plain.tls, plain.host, plain.port, plain.authority) == (False, "10.0.0.7", 8000, "10.0.0.7:8000")
    default_port = Provider.model_validate({"base_url": "http://h.test", "dialect": "openai"})
    assert default_port.port == 80


PLAIN_KEY = {"env": "RW_UNIT_PRIMARY"}


@pytest.mark.parametrize(
    "url",
    [
        "http://primary.test:8001",
        "http://10.0.0.7:8000/v1",
        "http://[2001:db8::1]:8000",
        "http://localhost.evil.test",
        "http://127.0.0.1.nip.io",
    ],
)
def test_a_credential_over_plain_http_to_a_remote_host_is_refused_naming_the_provider(url: str) -> None:
    providers = with_provider("primary", base_url=url, credential=PLAIN_KEY, allow_plaintext_credential=False)
    (problem,) = problems_of(providers=providers)
    assert problem.startswith(f"providers.primary: base_url {url!r} would send the credential in clear text")
    assert "allow_plaintext_credential" in problem


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8001", "http://127.9.9.9", "http://[::1]:8001/v1", "http://localhost:8001", "http://LOCALHOST"],
)
def test_a_credential_over_plain_http_to_loopback_is_allowed(url: str) -> None:
    provider = Provider.model_validate({"base_url": url, "dialect": "openai", "credential": PLAIN_KEY})
    assert not provider.tls


def test_plain_http_is_allowed_with_the_explicit_opt_in_or_without_a_credential() -> None:
    opted = {"base_url": "http://vllm.internal:8000", "dialect": "openai", "credential": PLAIN_KEY}
    assert Provider.model_validate({**opted, "allow_plaintext_credential": True}).allow_plaintext_credential
    assert Provider.model_validate({"base_url": "http://vllm.internal:8000", "dialect": "openai"}).credential is None
    assert Provider.model_validate({**opted, "base_url": "https://vllm.internal:8443"}).tls


def test_openai_compatible_speaks_openai_on_the_wire() -> None:
    assert Dialect.OPENAI_COMPATIBLE.wire is Dialect.OPENAI
    assert Dialect.ANTHROPIC.wire is Dialect.ANTHROPIC


# ---- tiers and the pass-through primary --------------------------------------------------------


def test_tier_defaults_to_the_rung_index_capped_at_three() -> None:
    rungs = [{"provider": "primary"}] * 6
    policy = make_policy(ladders={"six": rungs}, models=[{"match": "*", "ladder": "six"}])
    assert [policy.tier_of("six", i) for i in range(6)] == [0, 1, 2, 3, 3, 3]


def test_explicit_tier_overrides_the_default() -> None:
    rungs = [{"provider": "primary"}, {"provider": "secondary", "tier": 0}, {"provider": "small", "tier": 3}]
    policy = make_policy(ladders={"l": rungs}, models=[{"match": "*", "ladder": "l"}])
    assert [policy.tier_of("l", i) for i in range(3)] == [0, 0, 3]


def test_passthrough_prefers_the_explicit_choice() -> None:
    policy = make_policy(passthrough={"openai": "small"})
    assert policy.passthrough_provider(Dialect.OPENAI) == "small"
    assert policy.passthrough_provider(Dialect.OPENAI_COMPATIBLE) == "small"


def test_passthrough_defaults_to_the_first_tier0_rung_speaking_the_dialect() -> None:
    policy = make_policy()
    # gpt-* → main, whose tier-0 rung is the OpenAI primary; claude-* → claude, tier 0 is Anthropic.
    assert policy.passthrough_provider(Dialect.OPENAI) == "primary"
    assert policy.passthrough_provider(Dialect.ANTHROPIC) == "secondary"


def test_passthrough_follows_model_map_order() -> None:
    policy = make_policy(
        ladders={"a": [{"provider": "small"}], "b": [{"provider": "primary"}]},
        models=[{"match": "x", "ladder": "a"}, {"match": "y", "ladder": "b"}],
    )
    assert policy.passthrough_provider(Dialect.OPENAI) == "small"


def test_passthrough_falls_back_to_any_provider_of_the_dialect() -> None:
    # No tier-0 rung speaks Anthropic: the first Anthropic provider listed serves.
    policy = make_policy(ladders={"a": [{"provider": "primary"}]}, models=[{"match": "*", "ladder": "a"}])
    assert policy.passthrough_provider(Dialect.ANTHROPIC) == "secondary"


def test_passthrough_is_none_without_a_provider_of_the_dialect() -> None:
    providers = {"primary": policy_data()["providers"]["primary"]}
    policy = make_policy(
        providers=providers, ladders={"a": [{"provider": "primary"}]}, models=[{"match": "*", "ladder": "a"}]
    )
    assert policy.passthrough_provider(Dialect.ANTHROPIC) is None


# ---- credentials --------------------------------------------------------------------------------


def credential_policy(tmp_path: Path, **credentials: dict[str, str]) -> Policy:
    providers = policy_data()["providers"]
    for name, provider in providers.items():
        provider.pop("credential", None)
        if name in credentials:
            provider["credential"] = credentials[name]
            if provider["base_url"].startswith("http://"):
                provider["allow_plaintext_credential"] = True  # these tests are about reading keys
    return make_policy(providers=providers)


def test_credentials_come_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_UNIT_A", " sk-from-env \n")
    key_file = tmp_path / "secondary.key"
    key_file.write_text("sk-from-file\n")
    policy = credential_policy(tmp_path, primary={"env": "RW_UNIT_A"}, secondary={"file": str(key_file)})
    keys = resolve_credentials(policy)
    assert set(keys) == {"primary", "secondary", "small"}
    assert keys["primary"] is not None and keys["primary"].get_secret_value() == "sk-from-env"
    assert keys["secondary"] is not None and keys["secondary"].get_secret_value() == "sk-from-file"
    assert keys["small"] is None
    assert "sk-from" not in repr(keys)


def test_one_error_lists_every_missing_key_without_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RW_UNIT_MISSING", raising=False)
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    policy = credential_policy(
        tmp_path,
        primary={"env": "RW_UNIT_MISSING"},
        secondary={"file": str(tmp_path / "absent.key")},
        small={"file": str(empty)},
    )
    with pytest.raises(PolicyError) as caught:
        resolve_credentials(policy)
    assert caught.value.source == "credentials"
    assert caught.value.problems == [
        "providers.primary.credential: environment variable RW_UNIT_MISSING is not set",
        f"providers.secondary.credential: cannot read credential file {tmp_path / 'absent.key'}: No such file or directory",
        f"providers.small.credential: credential file {empty} is empty",
    ]


def test_a_present_key_never_appears_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_UNIT_PRESENT", "sk-do-not-print-me")
    monkeypatch.delenv("RW_UNIT_MISSING", raising=False)
    policy = credential_policy(tmp_path, primary={"env": "RW_UNIT_PRESENT"}, secondary={"env": "RW_UNIT_MISSING"})
    with pytest.raises(PolicyError) as caught:
        resolve_credentials(policy)
    assert caught.value.problems == ["providers.secondary.credential: environment variable RW_UNIT_MISSING is not set"]
    assert "sk-do-not-print-me" not in str(caught.value)


def test_blank_env_key_is_missing_like_a_blank_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RW_UNIT_BLANK", "  \n")
    policy = credential_policy(tmp_path, primary={"env": "RW_UNIT_BLANK"})
    with pytest.raises(PolicyError) as caught:
        resolve_credentials(policy)
    assert caught.value.problems == ["providers.primary.credential: environment variable RW_UNIT_BLANK is not set"]


def test_key_values_are_secret_in_the_policy_repr(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("sk-file-value")
    policy = credential_policy(tmp_path, primary={"file": str(key_file)})
    assert "sk-file-value" not in repr(policy)


def test_a_clients_schema_loses_its_regular_expressions_and_the_rules_that_lean_on_them() -> None:
    from extproc.policy.json_schema import untrusted

    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}, "b": {"items": [{"pattern": "x"}]}},
        "patternProperties": {"^x_": {"type": "number"}},
        "additionalProperties": False,
    }
    assert untrusted(schema) == {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"items": [{}]}},
    }


def test_a_clients_schema_too_large_or_too_deep_is_not_checked() -> None:
    from extproc.policy.json_schema import MAX_UNTRUSTED_SCHEMA_BYTES, untrusted

    assert untrusted({"description": "x" * MAX_UNTRUSTED_SCHEMA_BYTES}) is None
    deep: dict[str, object] = {}
    for _ in range(100):
        deep = {"items": deep}
    assert untrusted(deep) is None
    assert untrusted("not a schema") is None


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/models", True),
        ("GET", "/v1/models?limit=2", True),
        ("GET", "/v1/models/gpt-4o", True),
        ("POST", "/v1/messages/count_tokens", True),
        ("POST", "/v1/models", False),
        ("GET", "/v1/files", False),
        ("DELETE", "/v1/files/f", False),
        ("GET", "/v1/models/../files", False),
        ("POST", "/v1/embeddings", False),
    ],
)
def test_only_listed_paths_pass_through(method: str, path: str, allowed: bool) -> None:
    assert make_policy().passthrough.allows(method, path) is allowed


def test_a_pass_through_path_is_opted_into_and_checked() -> None:
    policy = make_policy(passthrough={"paths": ["POST /v1/embeddings"]})
    assert policy.passthrough.allows("POST", "/v1/embeddings")
    assert not policy.passthrough.allows("GET", "/v1/models")
    assert problems_of(passthrough={"paths": ["/v1/models"]})[0].startswith("passthrough.paths:")
    assert problems_of(passthrough={"paths": ["GET /v1/../x"]})[0].startswith("passthrough.paths:")


def test_clients_need_a_key_store_or_trusted_peers() -> None:
    assert problems_of(clients={"auth": "keys"})[0].startswith("clients:")
    assert problems_of(clients={"auth": "trusted_header"})[0].startswith("clients:")
    mesh = make_policy(clients={"auth": "trusted_header", "trusted_peers": ["10.0.0.0/8", "fd00::/8"]}).clients
    assert mesh.trusts("10.1.2.3:80") and mesh.trusts("[fd00::1]:80") and mesh.trusts("10.0.0.1")
    assert not mesh.trusts("11.0.0.1:80") and not mesh.trusts("") and not mesh.trusts("garbage")


def test_deferral_is_off_unless_configured_and_a_callback_needs_a_signing_secret() -> None:
    assert make_policy().deferral is None
    tasks = {**policy_data()["tasks"], "default": {"deferrable": True}}
    policy = make_policy(deferral={"store": "/var/lib/rungway/tasks.db"}, tasks=tasks)
    assert policy.deferral is not None and policy.deferral.max_per_tenant == 1000
    assert policy.tasks["default"].deferrable
    with pytest.raises(PolicyError, match=r"tenants.acme.callback_url: needs deferral.callback_secret"):
        parse_policy(policy_data(deferral={"store": "t.db"}, tenants={"acme": {"callback_url": "https://a.test/cb"}}))
    with pytest.raises(PolicyError, match=r"is not an http\(s\) URL"):
        parse_policy(
            policy_data(
                deferral={"store": "t.db", "callback_secret": {"env": "X"}},
                tenants={"acme": {"callback_url": "file:///etc/passwd"}},
            )
        )
    with pytest.raises(PolicyError, match="max_per_tenant"):
        parse_policy(policy_data(deferral={"store": "t.db", "max_per_tenant": 0}))


def test_re_runs_on_recovery_need_a_review_store_and_a_task_class_may_override_its_tenant() -> None:
    assert problems_of(tenants={"clinic": {"tasks": {"default": {"rerun_on_recovery": True}}}}) == [
        "tenants.clinic.rerun_on_recovery: set `review:` (where re-runs are kept) too"
    ]
    policy = make_policy(
        tenants={"clinic": {"rerun_on_recovery": True, "tasks": {"summarizer": {"rerun_on_recovery": False}}}},
        review={"store": "reviews.db"},
    )
    rules = policy.tenant("clinic")
    assert rules.reruns("default") and not rules.reruns("summarizer")
    assert not policy.tenant("anyone").reruns("default")  # off unless a tenant asks


def test_deferral_keeps_tasks_in_one_place_an_sqlite_file_or_a_fleets_redis() -> None:
    fleet = make_policy(deferral={"redis": "rediss://rungway@redis.internal:6380/2"}).deferral
    assert fleet is not None and fleet.redis == "rediss://rungway@redis.internal:6380/2" and fleet.store is None
    for both_or_neither in ({"store": "t.db", "redis": "redis://r:6379/0"}, {}):
        with pytest.raises(PolicyError, match="store \\(an SQLite file\\) or redis \\(a URL\\)"):
            parse_policy(policy_data(deferral=both_or_neither))
    with pytest.raises(
        PolicyError, match="redis must be a redis:// or rediss:// URL, but its scheme was 'http'"
    ) as bad:
        parse_policy(policy_data(deferral={"redis": "http://user:hunter2@r:6379"}))
    assert "hunter2" not in str(bad.value)  # a URL can carry a password: never echoed
    with pytest.raises(PolicyError, match="redis_password needs a redis URL without a password"):
        parse_policy(policy_data(deferral={"redis": "redis://:pw@r:6379/0", "redis_password": {"env": "X"}}))


def test_escalations_need_the_sqlite_deferral_store_not_a_fleets_redis() -> None:
    with pytest.raises(PolicyError, match="escalations are kept in SQLite, not Redis"):
        parse_policy(
            policy_data(
                deferral={"redis": "redis://r:6379/0"},
                escalation={"webhook_url": "https://oncall.test/hook", "secret": {"env": "X"}},
                tenants={"bank": {"escalate": {"tier": 1}}},
            )
        )
