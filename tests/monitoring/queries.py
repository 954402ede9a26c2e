"""What the shipped alert rules and Grafana dashboard (deploy/monitoring) query: their PromQL,
parsed by a real PromQL parser, and the metric names it selects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
# Metrics the rules use before the code that exposes them is merged: the name, and the one rule
# group that may use it. rungway_audit_backlog_records arrives with the audit trail (issue 13).
PENDING = {"rungway_audit_backlog_records": "rungway-audit"}
# Grafana's variables, as a query sees them once Grafana substituted them.
_VARIABLES = {"$__rate_interval": "5m", "$tenant": ".*"}
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*),\s*(?P<label>\w+)\)$")


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def alert_exprs() -> list[tuple[str, str, str]]:
    """(group, alert, expression) for every rule."""
    return [(g["name"], r["alert"], r["expr"]) for g in alert_groups() for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted) for every query."""
    return [(p["title"], substitute(t["expr"])) for p in panels() for t in p["targets"]]


def variable_queries() -> list[tuple[str, str]]:
    """(variable, metric) for the dashboard's label_values() variables."""
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match is not None, f"variable {variable['name']}: not a label_values() query"
        out.append((variable["name"], match["metric"]))
    return out


def substitute(expr: str) -> str:
    for name, value in _VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the tests do not know: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (raises ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {expr}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
