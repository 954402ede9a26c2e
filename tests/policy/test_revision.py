"""Policy as code (T1): a directory of defaults and tenant files, the revision stamp, the
history a worker keeps for requests in flight, and what a reload may not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given

from extproc.policy import (
    KEEP_PREVIOUS,
    History,
    PolicyError,
    PolicyReloaded,
    ReloadOutcome,
    load_policy,
    parse_policy,
    start_only_changes,
)
from tests.builders import make_policy, policies, policy_data

# ---- a policy directory -------------------------------------------------------------------------


def write_dir(root: Path, defaults: dict[str, Any], tenants: dict[str, Any]) -> Path:
    (root / "tenants").mkdir(parents=True, exist_ok=True)
    (root / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    for name, tenant in tenants.items():
        text = tenant if isinstance(tenant, str) else yaml.safe_dump(tenant)
        (root / "tenants" / f"{name}.yaml").write_text(text)
    return root


def problems_in(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.source == str(path)
    return caught.value.problems


def test_a_directory_is_the_same_policy_as_the_single_file_it_splits(tmp_path: Path) -> None:
    tenants = {
        "hospital": {"lowest_tier": 0},
        "agency": {"lowest_tier": 2, "tasks": {"summarizer": {"lowest_tier": 1}}},
    }
    single = tmp_path / "policy.yaml"
    single.write_text(yaml.safe_dump(policy_data(tenants=tenants)))
    directory = write_dir(tmp_path / "policy", policy_data(), tenants)
    assert load_policy(directory) == load_policy(single)
    assert load_policy(directory).stamp == load_policy(single).stamp
    assert load_policy(directory).tenant("hospital").lowest_tier == 0


def test_a_directory_without_tenant_files_is_its_defaults(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    directory.mkdir()
    (directory / "defaults.yaml").write_text(yaml.safe_dump(policy_data()))
    assert load_policy(directory) == make_policy()


def test_a_tenant_files_problem_names_the_file_and_the_field(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(), {"hospital": {"lowest_tier": 9, "colour": "red"}})
    assert problems_in(directory) == [
        "tenants/hospital.yaml: lowest_tier: Input should be less than or equal to 3",
        "tenants/hospital.yaml: colour: unknown field",
    ]


def test_a_problem_the_whole_policy_finds_in_a_tenant_names_the_tenants_file(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(), {"agency": {"tasks": {"codegen": {"lowest_tier": 1}}}})
    assert problems_in(directory) == ["tenants/agency.yaml: tasks: unknown task class 'codegen'"]


def test_a_defaults_problem_names_defaults_yaml_and_the_field(tmp_path: Path) -> None:
    data = policy_data()
    data["ladders"]["main"][0]["provider"] = "nobody"
    directory = write_dir(tmp_path, data, {"agency": {"lowest_tier": 2}})
    assert problems_in(directory) == [
        "defaults.yaml: ladders.main.0.provider: 'nobody' is not a provider (known: primary, secondary, small)"
    ]


def test_a_directory_names_defaults_yaml_without_any_tenant_file_too(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(max_attempts=0), {})
    assert problems_in(directory) == ["defaults.yaml: max_attempts: Input should be greater than or equal to 1"]


def test_broken_yaml_in_a_tenant_file_names_the_file_and_line(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(), {"agency": "lowest_tier: [\n"})
    (problem,) = problems_in(directory)
    assert problem.startswith("tenants/agency.yaml: line 2, column 1: ")


def test_a_tenant_in_both_defaults_and_its_own_file_is_refused(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(tenants={"agency": {}}), {"agency": {"lowest_tier": 2}})
    assert problems_in(directory) == ["tenants/agency.yaml: tenant 'agency' is also in defaults.yaml (keep one)"]


def test_a_stray_yaml_file_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(), {})
    (directory / "hospital.yaml").write_text("lowest_tier: 0\n")
    assert problems_in(directory) == [
        "hospital.yaml: unexpected file (a policy directory holds defaults.yaml and tenants/<name>.yaml)"
    ]


def test_a_directory_without_defaults_says_so(tmp_path: Path) -> None:
    assert problems_in(tmp_path) == ["defaults.yaml: cannot read: No such file or directory"]


def test_editor_files_beside_the_tenants_are_not_policy(tmp_path: Path) -> None:
    directory = write_dir(tmp_path, policy_data(), {"agency": {"lowest_tier": 2}})
    (directory / "tenants" / ".agency.yaml.swp").write_text("\0binary")
    (directory / "tenants" / "agency.yaml~").write_text("lowest_tier: 9")
    (directory / "tenants" / ".agency.yaml").write_text("lowest_tier: 9")
    assert load_policy(directory).tenant("agency").lowest_tier == 2


# ---- the revision stamp -------------------------------------------------------------------------


def test_the_stamp_is_the_version_plus_a_hash_of_the_content() -> None:
    stamp = make_policy().stamp
    version, _, digest = stamp.partition("+")
    assert version == "unit-2026.1" and len(digest) == 12 and int(digest, 16) >= 0


def test_an_edit_that_keeps_the_version_still_changes_the_stamp() -> None:
    assert make_policy(max_attempts=4).stamp != make_policy().stamp
    assert make_policy(max_attempts=4).version == make_policy().version


def test_formatting_and_comments_do_not_change_the_stamp(tmp_path: Path) -> None:
    plain, commented = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plain.write_text(yaml.safe_dump(policy_data()))
    commented.write_text("# who owns this: the platform team\n" + yaml.safe_dump(policy_data(), indent=4))
    assert load_policy(plain).stamp == load_policy(commented).stamp


def test_the_stamp_does_not_depend_on_how_a_set_was_listed() -> None:
    providers = policy_data()["providers"]
    listed = {**providers, "small": {**providers["small"], "capabilities": ["json_mode", "streaming"]}}
    reversed_ = {**providers, "small": {**providers["small"], "capabilities": ["streaming", "json_mode"]}}
    assert make_policy(providers=listed).stamp == make_policy(providers=reversed_).stamp


def test_a_changed_copy_is_another_revision_with_its_own_routes() -> None:
    policy = make_policy()
    assert policy.stamp and policy.relay_routes  # computed (and kept) before the copy
    ladders = policy.ladders | {"main": [policy.ladders["main"][0].model_copy(update={"attempts": 3})]}
    copy = policy.model_copy(update={"ladders": ladders})
    assert copy.stamp != policy.stamp
    assert copy.relay_routes[("main", 0)] != policy.relay_routes[("main", 0)]


@given(policies())
def test_a_policy_handed_to_a_worker_is_the_same_revision(policy: Any) -> None:
    decoded = History.decode(History(policy).encode()).current
    assert decoded == policy and decoded.stamp == policy.stamp


def test_a_rungs_relay_route_changes_with_the_rung_or_its_provider_only() -> None:
    base = make_policy()
    ladders = policy_data()["ladders"]
    ladders["main"][1] = {"provider": "small", "model": "small-model"}
    swapped = make_policy(ladders=ladders)
    assert swapped.relay_routes[("main", 0)] == base.relay_routes[("main", 0)]
    assert swapped.relay_routes[("main", 1)] != base.relay_routes[("main", 1)]
    assert make_policy(max_attempts=4).relay_routes == base.relay_routes  # not a rung's content


# ---- the history a worker keeps -----------------------------------------------------------------


def revision(n: int) -> Any:
    return make_policy(version=f"unit-{n}")


def test_a_new_revision_keeps_the_previous_ones_newest_first_up_to_a_bound() -> None:
    history = History(revision(0))
    for n in range(1, KEEP_PREVIOUS + 3):
        history = history.advance(revision(n))
    last = KEEP_PREVIOUS + 2
    assert [p.version for p in history.all()] == [f"unit-{n}" for n in range(last, last - KEEP_PREVIOUS - 1, -1)]
    assert history.get(revision(last - 1).stamp) == revision(last - 1)
    assert history.get(revision(0).stamp) is None  # gone: a try decided under it is refused


def test_the_same_revision_again_changes_nothing_and_an_old_one_comes_back_to_the_front() -> None:
    history = History(revision(0)).advance(revision(1))
    assert history.advance(revision(1)) is history
    back = history.advance(revision(0))
    assert [p.version for p in back.all()] == ["unit-0", "unit-1"]


def test_a_history_whose_content_does_not_match_its_stamp_is_refused() -> None:
    text = History(make_policy()).encode().replace('"max_attempts": 5', '"max_attempts": 4')
    with pytest.raises(PolicyError, match="does not match its content"):
        History.decode(text)
    with pytest.raises(PolicyError, match="not a format 1 policy history"):
        History.decode('{"format": 2, "revisions": []}')
    with pytest.raises(PolicyError, match="not JSON"):
        History.decode("{")


# ---- what a reload may change -------------------------------------------------------------------


def test_ladders_providers_and_tenants_may_change_while_running() -> None:
    data = policy_data(tenants={"agency": {"lowest_tier": 1}}, max_attempts=3)
    data["providers"]["extra"] = {"base_url": "http://127.0.0.1:9", "dialect": "openai"}
    data["ladders"]["main"].insert(1, {"provider": "extra"})
    assert start_only_changes(make_policy(), parse_policy(data)) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_body_bytes": 1024 * 1024}, "max_body_bytes"),
        ({"clients": {"key_store": "other.json"}}, "clients.key_store"),
        ({"clients": {"auth": "trusted_header", "trusted_peers": ["127.0.0.1/32"]}}, "clients.auth"),
        ({"health": {"enabled": False}}, "health"),
        ({"approvals": "approvals.json"}, "approvals"),
        ({"shadow": {"share": 0.01}}, "shadow"),
        ({"review": {"store": "reviews.db"}}, "review"),
    ],
)
def test_a_start_only_field_is_named(change: dict[str, Any], named: str) -> None:
    assert named in start_only_changes(make_policy(), make_policy(**change))


def test_a_reload_event_carries_old_and_new_revision_for_the_audit_trail() -> None:
    event = PolicyReloaded(12.5, ReloadOutcome.REJECTED, "v1+abc", None, "/etc/rungway", ("x: y",))
    assert event.to_dict() == {
        "event": "policy_reloaded",
        "at": 12.5,
        "outcome": "rejected",
        "old": "v1+abc",
        "new": None,
        "source": "/etc/rungway",
        "problems": ["x: y"],
        "took_s": None,
        "envoy_s": None,
        "workers_s": None,
    }
