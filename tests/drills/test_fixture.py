from __future__ import annotations

import pytest

from extproc.core import Failure
from extproc.drills import (
    Answer,
    FixtureError,
    fixture_from_cell,
    fixture_from_incident,
    parse_fixture,
    replay_case,
    score,
)

from .conftest import drill_policy, golden
from .test_score import TEXT, scenario_case, served

NOW = "2026-12-07T10:00:00Z"


def test_a_drill_cell_saved_as_a_fixture_replays_as_the_same_case() -> None:
    policy = drill_policy()
    case = scenario_case(policy, "json-schema", "schema_drift")
    cell = score(case, served(case, 2, Answer('{"answer": "a", "provider": "p"}')), policy)
    fixture = fixture_from_cell(case, cell, NOW)
    assert fixture.id == "schema_drift.json-schema.app"
    assert [(f.rung, f.mode) for f in fixture.faults] == [(0, "status:503"), (1, "invalid_json")]
    assert parse_fixture(fixture.to_text(), "f.json") == fixture
    replay = replay_case(policy, fixture)
    assert (replay.modes, replay.expected, replay.tenants) == (case.modes, case.expected, case.tenants)
    assert replay.scenario == "fixture:schema_drift.json-schema.app"


def test_a_failing_cell_keeps_what_was_expected_not_what_was_seen() -> None:
    policy = drill_policy()
    case = scenario_case(policy, "chat", "quality_drop")
    cell = score(case, served(case, 0, Answer("w1 w2")), policy)
    assert not cell.passed
    fixture = fixture_from_cell(case, cell, NOW)
    assert fixture.expect_rung == 1 and fixture.observed["served_by"] == "openai-primary/gpt-4o"


def test_an_incident_becomes_a_fixture_expecting_what_a_correct_ladder_does() -> None:
    policy = drill_policy()
    fixture = fixture_from_incident(
        policy, golden("chat"), [(0, Failure.TIMEOUT), (1, Failure.SCHEMA_ERROR)], incident="req-42", recorded_at=NOW
    )
    assert fixture.id == "incident.req-42" and fixture.source.kind == "incident"
    assert [(f.rung, f.mode) for f in fixture.faults] == [(0, "delay:3"), (1, "invalid_json")]
    assert fixture.expect_rung == 2
    case = replay_case(policy, fixture)
    assert dict(case.modes)["small-local"] == "ok"
    assert score(case, served(case, 2, Answer(TEXT)), policy).passed


def test_an_incident_on_a_rung_the_ladder_lacks_is_refused() -> None:
    with pytest.raises(FixtureError, match="rung 5 is not on ladder 'chat'"):
        fixture_from_incident(drill_policy(), golden("chat"), [(5, Failure.TIMEOUT)], incident="r", recorded_at=NOW)


def test_a_fixture_for_a_longer_ladder_does_not_replay_on_a_shorter_one() -> None:
    policy = drill_policy()
    case = scenario_case(policy, "chat", "schema_drift")
    fixture = fixture_from_cell(case, score(case, served(case, 2, Answer(TEXT)), policy), NOW)
    short = fixture.model_copy(update={"expect_rung": 7})
    with pytest.raises(FixtureError, match="rung 7 is not on ladder"):
        replay_case(policy, short)


@pytest.mark.parametrize("text", ["{", '{"fixture": 2}'])
def test_a_bad_fixture_is_refused_naming_its_file(text: str) -> None:
    with pytest.raises(FixtureError, match=r"^f\.json: "):
        parse_fixture(text, "f.json")


def test_every_shipped_fixture_parses_and_replays_on_the_drill_policy() -> None:
    from .conftest import EVALS

    policy = drill_policy()
    paths = sorted((EVALS / "fixtures").glob("*.json"))
    assert paths
    for path in paths:
        fixture = parse_fixture(path.read_text(), str(path))
        assert fixture.id == path.stem
        case = replay_case(policy, fixture)
        assert case.expected is not None and case.expected.index == fixture.expect_rung
