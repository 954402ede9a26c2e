"""The drill report: a Markdown page and an SVG matrix (scenario by task) a person reads at a
glance: green served as expected, red a regression, blue an honest refusal that was expected;
each cell names the tier that served and its latency against the task's limit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from typing import Final

from .score import Cell, Regression

_CELL_W: Final = 170
_CELL_H: Final = 46
_CHAR_W: Final = 7.5  # a bold 12 px Helvetica character, generously
_HEAD_H: Final = 44
_PASS: Final = "#2e9d5b"
_FAIL: Final = "#d64541"
_REFUSED: Final = "#3f7fbf"


# Characters XML 1.0 cannot carry at all (escaping does not help): C0 controls but tab/LF/CR,
# surrogates and the two non-characters.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", text))


def _group(cells: Sequence[Cell]) -> tuple[list[str], list[str], dict[tuple[str, str], list[Cell]]]:
    scenarios: list[str] = []
    tasks: list[str] = []
    grid: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        if cell.scenario not in scenarios:
            scenarios.append(cell.scenario)
        if cell.task not in tasks:
            tasks.append(cell.task)
        grid.setdefault((cell.scenario, cell.task), []).append(cell)
    return scenarios, tasks, grid


def _summary(group: list[Cell]) -> tuple[str, str, float]:
    """Colour, label and the worst latency share of its limit, over a cell's tenants."""
    failed = any(not c.passed for c in group)
    refused = all(c.trace.status >= 400 for c in group)
    colour = _FAIL if failed else _REFUSED if refused else _PASS
    tiers = sorted({"—" if c.trace.tier is None or c.trace.status >= 400 else str(c.trace.tier) for c in group})
    label = "refused" if refused else f"tier {'/'.join(tiers)}"
    if failed:
        label = f"FAIL · {label}"
    worst = max(c.trace.latency_s for c in group)
    return colour, f"{label} · {worst:.2f}s", min(1.0, worst / group[0].latency_limit_s)


def render_svg(cells: Sequence[Cell]) -> str:
    scenarios, tasks, grid = _group(cells)
    label_w = max(120, round(_CHAR_W * max((len(s) for s in scenarios), default=0)) + 16)
    width = label_w + _CELL_W * len(tasks) + 10
    height = _HEAD_H + _CELL_H * len(scenarios) + 34
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for j, task in enumerate(tasks):
        x = label_w + j * _CELL_W + _CELL_W / 2
        out.append(f'<text x="{x}" y="{_HEAD_H - 14}" text-anchor="middle" font-weight="bold">{_xml(task)}</text>')
    for i, scenario in enumerate(scenarios):
        y = _HEAD_H + i * _CELL_H
        out.append(f'<text x="8" y="{y + _CELL_H / 2 + 4}" font-weight="bold">{_xml(scenario)}</text>')
        for j, task in enumerate(tasks):
            x = label_w + j * _CELL_W
            group = grid.get((scenario, task))
            if not group:
                out.append(
                    f'<rect x="{x + 2}" y="{y + 2}" width="{_CELL_W - 4}" height="{_CELL_H - 4}" fill="#eeeeee"/>'
                )
                continue
            colour, label, share = _summary(group)
            bar = (_CELL_W - 16) * share
            title = "; ".join(f"{c.tenant}: {c.expected}" for c in group)
            out += [
                f"<g><title>{_xml(title)}</title>",
                f'<rect x="{x + 2}" y="{y + 2}" width="{_CELL_W - 4}" height="{_CELL_H - 4}" rx="4" fill="{colour}"/>',
                f'<text x="{x + _CELL_W / 2}" y="{y + 20}" text-anchor="middle" fill="#ffffff">{_xml(label)}</text>',
                f'<rect x="{x + 8}" y="{y + _CELL_H - 14}" width="{_CELL_W - 16}" height="5" fill="#ffffff" opacity="0.35"/>',
                f'<rect x="{x + 8}" y="{y + _CELL_H - 14}" width="{bar:.1f}" height="5" fill="#ffffff"/>',
                "</g>",
            ]
    legend_y = _HEAD_H + _CELL_H * len(scenarios) + 20
    for k, (colour, text) in enumerate(
        ((_PASS, "served as expected"), (_REFUSED, "honest refusal, as expected"), (_FAIL, "regression"))
    ):
        x = 8 + k * 220
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{legend_y}">{text}</text>')
    out.append(
        f'<text x="{width - 8}" y="{legend_y}" text-anchor="end" fill="#666666">bar: latency / the task\'s limit</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_markdown(
    cells: Sequence[Cell], found: Sequence[Regression], *, policy_version: str, chart: str, results: str
) -> str:
    scenarios, tasks, grid = _group(cells)
    passed = sum(c.passed for c in cells)
    verdict = "**no regression**" if not found else f"**{len(found)} regression{'s' * (len(found) != 1)}**"
    lines = [
        "# Failover drill",
        "",
        f"Policy `{policy_version}` · {len(scenarios)} scenarios x {len(tasks)} golden tasks · "
        f"{passed}/{len(cells)} cells pass · {verdict}",
        "",
        f"![drill matrix]({chart})",
        "",
        "| scenario | task | tenant | expected | served | tier | degraded | attempts | latency | cost | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        for task in tasks:
            for cell in grid.get((scenario, task), []):
                t = cell.trace
                served = "no answer" if t.status == 0 else f"HTTP {t.status}" if t.status >= 400 else f"`{t.served_by}`"
                degraded = {True: "yes", False: "no", None: "—"}[t.degraded]
                cost = "—" if cell.cost_usd is None else f"${cell.cost_usd:.6f}"
                result = "pass" if cell.passed else "**FAIL** " + ", ".join(f.name for f in cell.failures)
                lines.append(
                    f"| {scenario} | {task} | {cell.tenant} | {cell.expected} | {served} | {t.tier if t.tier is not None else '—'} "
                    f"| {degraded} | {t.attempts if t.attempts is not None else '—'} "
                    f"| {t.latency_s:.2f}s | {cost} | {result} |"
                )
    if found:
        lines += ["", "## Regressions", ""]
        lines += [f"- `{r.key}`: {r.why}" for r in found]
    lines += ["", f"Machine-readable results (a `--baseline` for the next drill): `{results}`", ""]
    return "\n".join(lines)
