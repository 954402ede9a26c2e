"""The shipped alert rules and dashboard (deploy/monitoring) query metrics that exist: every name
they select is on /metrics of a real stack (real Envoy, `rungway up`'s workers in multiprocess
mode) after the traffic they watch: a plain answer, a fallback, a stream, a rescued stream, a
request no rung could serve and an unauthenticated caller, every request shadowed to the other
rungs (continuous verification)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KEY_ENV, Fleet
from tests.monitoring.queries import PENDING, alert_exprs, dashboard_exprs, metric_names, variable_queries
from tests.stack import Stack, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def monitored(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policy = fleet.policy(
        tmp_path_factory.mktemp("monitoring"), tasks={"default": {"min_output_tokens": 1, "rescue": True}}
    )
    providers = policy["providers"]
    providers["secondary"]["capabilities"] = ["tools", "json_mode", "streaming", "prefill"]
    providers["primary"]["cost_per_1k"] = {"input": 0.0025, "output": 0.01}
    providers["secondary"]["cost_per_1k"] = {"input": 0.003, "output": 0.015}
    policy["shadow"] = {"share": 1.0, "timeout_s": 5, "max_in_flight": 8}
    with running(policy, env=KEY_ENV) as stack:
        yield stack


def stream_text(stack: Stack) -> str:
    text = ""
    with stack.openai().chat.completions.create(model="gpt-4o", messages=HI, stream=True) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    return text


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample on a /metrics page by its name (a histogram's _bucket, _sum, _count apart)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for have, v in found.get(name, []) if labels.items() <= have.items())


def test_every_metric_the_rules_and_the_dashboard_query_is_on_metrics(monitored: Stack, fleet: Fleet) -> None:
    fleet.reset()
    client = monitored.openai()
    assert client.chat.completions.create(model="gpt-4o", messages=HI).choices[0].message.content
    fleet.primary.set_mode("status:500")  # the secondary answers
    assert client.chat.completions.create(model="gpt-4o", messages=HI).choices[0].message.content
    fleet.primary.reset()
    assert stream_text(monitored)
    # Cut after 40 tokens: the secondary completes it (sticky: shadow calls reach it too).
    fleet.primary.set_mode("cut:40:60")
    fleet.secondary.set_mode("tokens:60")
    assert stream_text(monitored).endswith("w60")
    fleet.reset()
    for mock in (fleet.primary, fleet.secondary, fleet.small):
        mock.set_mode("status:500")  # no rung can answer
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    with monitored.openai_as("rwk_not_a_key") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="gpt-4o", messages=HI)
    assert eventually(lambda: "rungway_shadow_checks_total" in monitored.metrics())
    fleet.reset()

    found = samples(monitored.metrics())
    queried: dict[str, str] = {}
    for group, alert, expr in alert_exprs():
        queried.update((name, f"alert {alert} ({group})") for name in metric_names(expr))
    for title, expr in dashboard_exprs():
        queried.update((name, f"panel {title!r}") for name in metric_names(expr))
    queried.update((metric, f"variable ${variable}") for variable, metric in variable_queries())
    missing = {name: where for name, where in queried.items() if name not in found and name not in PENDING}
    assert not missing, f"queried but not on /metrics: {missing}"

    # The per-tenant series carry what the panels group by.
    app = {"tenant": "app", "task": "default", "ladder": "main"}
    assert total(found, "rungway_served_total", **app, rung="0") == 3  # answer, stream, rescued stream
    assert total(found, "rungway_served_total", **app, rung="1", degraded="true") == 1
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert total(found, ttft, **app, rung="0", gen_ai_provider_name="openai", gen_ai_request_model="gpt-4o") == 3
    assert total(found, ttft, **app, rung="1", gen_ai_provider_name="anthropic") == 1
    failed = "gen_ai_client_operation_duration_seconds_count"
    assert total(found, failed, **app, rung="0", error_type="server_error") >= 2  # the fallback's, the failure's
    assert total(found, failed, **app, rung="1", error_type="") == 2  # the fallback and the rescue
    assert total(found, failed, **app, rung="0", error_type="stream_interrupted") == 1
    assert total(found, "gen_ai_client_token_usage_sum", **app, gen_ai_token_type="output") > 60
    assert total(found, "rungway_cost_total", **app, rung="0", provider="primary") > 0
    assert total(found, "rungway_cost_total", **app, rung="1", provider="secondary") > 0  # fallback and rescue
    assert total(found, "rungway_stream_rescues_total", outcome="rescued") == 1
    assert total(found, "rungway_unauthenticated_total") == 1
    assert total(found, "rungway_shadow_checks_total", ladder="main", rung="1") > 0

    trouble = monitored.envoy_trouble()
    assert not trouble, f"Envoy reported bugs or crashed: {trouble}"
