from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from extproc.drills import Answer, Trace, plan_case, regressions, render_markdown, render_svg, score
from extproc.drills.scenario import Scenario
from extproc.policy import Policy

from .test_score import TEXT, refused, scenario_case, served


def cells(policy: Policy) -> list:  # type: ignore[type-arg]
    chat = scenario_case(policy, "chat")
    clinic = scenario_case(policy, "clinic-summary")
    return [
        score(chat, served(chat, 1, Answer(TEXT)), policy),
        score(clinic, refused(), policy),
        score(scenario_case(policy, "chat", "quality_drop"), served(chat, 0, Answer("w1 w2"), latency=30), policy),
    ]


def test_the_chart_colours_each_cell_by_its_outcome(policy: Policy) -> None:
    svg = render_svg(cells(policy))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "primary_timeout" in texts and "quality_drop" in texts and "clinic-summary" in texts
    assert "tier 1 · 0.50s" in texts and "refused · 0.20s" in texts and "FAIL · tier 0 · 30.00s" in texts
    fills = svg.count('fill="#2e9d5b"'), svg.count('fill="#3f7fbf"'), svg.count('fill="#d64541"')
    assert fills == (2, 2, 2)  # one cell each, and the legend


def test_the_report_links_the_chart_lists_every_cell_and_the_regressions(policy: Policy) -> None:
    all_cells = cells(policy)
    text = render_markdown(all_cells, regressions(all_cells), policy_version="v1", chart="r.svg", results="r.json")
    assert "![drill matrix](r.svg)" in text and "`r.json`" in text
    assert "2/3 cells pass · **1 regression**" in text
    assert text.count("\n| ") == 1 + len(all_cells)  # the header and one row a cell
    assert "- `quality_drop/chat/app`: rung:" in text


@given(name=st.text(min_size=1, max_size=20), tenant=st.text(min_size=1, max_size=10))
def test_any_names_make_a_well_formed_chart(policy: Policy, name: str, tenant: str) -> None:
    case = plan_case(policy, scenario_case(policy, "chat").task, Scenario(name, name, ()))
    cell = score(case, Trace(200, {}, Answer("x"), 0.0, tenant), policy)
    ET.fromstring(render_svg([cell]))
