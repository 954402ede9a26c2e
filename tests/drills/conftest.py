from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.drills import GoldenTask, parse_task
from extproc.policy import Policy, parse_policy

EVALS = Path(__file__).resolve().parents[2] / "evals" / "failover"


def drill_policy(**tasks: Any) -> Policy:
    raw = yaml.safe_load((EVALS / "policy.yaml").read_text())
    raw["tasks"].update(tasks)
    return parse_policy(raw, "policy.yaml")


def golden(name: str) -> GoldenTask:
    path = EVALS / f"{name}.json"
    return parse_task(path.read_text(), str(path))


@pytest.fixture(scope="session")
def policy() -> Policy:
    return drill_policy()
