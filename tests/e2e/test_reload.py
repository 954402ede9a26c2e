"""Policy hot reload through real Envoy (T1): a policy directory edited under load.

The stack serves a directory (defaults.yaml + tenants/<name>.yaml) with two workers. Edits are
written the way a deployment tool writes them (a temporary file renamed into place). Figures
(time from the file write to Envoy and every worker serving it, as the supervisor measured it,
and to the first answer that shows the new behaviour, as a client saw it) are printed, never
asserted: timing belongs in bench/.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import yaml

from extproc.core.names import POLICY_VERSION, REASON, SERVED_BY
from extproc.demo.mock_provider import MockProvider
from extproc.policy import load_policy
from tests.conftest import KEY_ENV, Fleet
from tests.stack import MockThread, Stack, provider_entry, running

pytestmark = pytest.mark.e2e
HI: Any = [{"role": "user", "content": "hi"}]
PRIMARY_FAILS = {"x-mock-mode-primary": "status:503"}
SECONDARY = "secondary/claude-fallback"
EXTRA = "extra/extra-model"


@pytest.fixture(scope="module")
def extra(mocks: MockThread) -> MockProvider:
    return mocks.provider("extra", "openai")


@pytest.fixture(scope="module")
def reloading(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    defaults = fleet.policy(tmp_path_factory.mktemp("keys"))
    tenants = {"hospital": {"lowest_tier": 0}, "agency": {"lowest_tier": 2}}
    with running(defaults, env=KEY_ENV, workers=2, tenant_files=tenants) as stack:
        yield stack


@dataclass(frozen=True)
class Keys:
    agency: str
    hospital: str


@pytest.fixture(scope="module")
def keys(reloading: Stack) -> Keys:
    """Two tenants' keys, once every worker knows them (the key store is re-read each second)."""
    issued = Keys(reloading.issue_key("agency"), reloading.issue_key("hospital"))
    for key in (issued.agency, issued.hospital):
        # Every worker: Envoy spreads requests over them round robin.
        first_time(lambda key=key: all(_works(reloading, key) for _ in range(6)))  # type: ignore[misc]
    return issued


def _works(stack: Stack, key: str) -> bool:
    with stack.openai_as(key) as client:
        try:
            client.chat.completions.create(model="gpt-4o", messages=HI)
        except openai.AuthenticationError:
            return False
    return True


@pytest.fixture
def policy(reloading: Stack, fleet: Fleet) -> Iterator[PolicyDir]:
    """The stack's policy directory; put back as it was after the test."""
    fleet.reset()
    directory = PolicyDir(reloading)
    saved = {path: path.read_text() for path in directory.root.rglob("*.yaml")}
    yield directory
    for path in directory.root.rglob("*.yaml"):
        if path not in saved:
            path.unlink()
    for path, text in saved.items():
        if path.read_text() != text:
            directory.write(path.relative_to(directory.root), text)
    directory.await_revision(load_policy(directory.root).stamp)
    fleet.reset()


class PolicyDir:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.root = stack.policy_path

    def read(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.root / name).read_text())
        return data

    def write(self, name: str | Path, text: str) -> float:
        """Replace a file the way a deployment does (write aside, rename); when it was written."""
        target = self.root / name
        tmp = self.root / f".{target.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
        return time.time()

    def change(self, name: str, change: Callable[[dict[str, Any]], None]) -> float:
        """Change a file's data; when it was written."""
        data = self.read(name)
        change(data)
        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> tuple[float, str]:
        """A valid change: when it was written and the stamp the directory has now."""
        return self.change(name, change), load_policy(self.root).stamp

    def serving(self) -> str:
        return str(self.stack.status()["policy"]["revision"])

    def await_revision(self, stamp: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.stack.status()
            if status["policy"]["revision"] == stamp:
                return status
            time.sleep(0.02)
        raise AssertionError(f"{stamp} did not take over: {self.stack.status()['policy']}")

    def await_reload(self, after: float, timeout: float = 20.0) -> dict[str, Any]:
        """The status once a reload attempt that started after `after` (a write) is recorded."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.stack.status()
            last = status["policy"]["last_reload"]
            if last is not None and last["at"] >= after:
                return status
            time.sleep(0.02)
        raise AssertionError(f"no reload after the write: {self.stack.status()['policy']}")


@dataclass
class Answer:
    stream: bool
    hop: bool
    ok: bool
    stamp: str | None
    served_by: str | None
    error: str | None = None


class Load:
    """Requests in a loop on a few threads, JSON and streams, some whose primary fails (so they
    hop to the next rung), as tenant agency: each one must be answered, stamped, and served by
    the rung its own revision names."""

    def __init__(self, stack: Stack, key: str, threads: int = 3) -> None:
        self._stack = stack
        self._key = key
        self._stop = threading.Event()
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, index: int) -> None:
        client = self._stack.openai_as(self._key)
        n = index
        while not self._stop.is_set():
            stream, hop = bool(n % 2), bool((n // 2) % 2)
            n += 1
            answer = self._one(client, stream, hop)
            with self._lock:
                self.answers.append(answer)
        client.close()

    @staticmethod
    def _one(client: openai.OpenAI, stream: bool, hop: bool) -> Answer:
        headers = PRIMARY_FAILS if hop else {}
        try:
            if stream:
                raw_stream = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=HI, stream=True, extra_headers=headers
                )
                text = "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices)
                status, h = raw_stream.http_response.status_code, raw_stream.headers
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=HI, extra_headers=headers
                )
                text = raw.parse().choices[0].message.content or ""
                status, h = raw.http_response.status_code, raw.headers
        except openai.APIError as exc:
            return Answer(stream, hop, False, None, None, f"{type(exc).__name__}: {exc}")
        ok = status == 200 and text.startswith("Hello from")
        return Answer(stream, hop, ok, h.get(POLICY_VERSION), h.get(SERVED_BY), None if ok else f"{status} {text!r}")


def first_time(check: Callable[[], bool], timeout: float = 20.0, every_s: float = 0.0) -> float:
    """When `check` first held (polled back to back unless `every_s`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return time.time()
        time.sleep(every_s)
    raise AssertionError("the behaviour did not follow the edit")


def served_by(stack: Stack, key: str, headers: dict[str, str]) -> tuple[int, str | None, str | None]:
    with stack.openai_as(key) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI, extra_headers=headers)
        return raw.http_response.status_code, raw.headers.get(SERVED_BY), raw.headers.get(POLICY_VERSION)


def refused_or_served(stack: Stack, key: str) -> str:
    """Tenant's answer when the primary fails: the rung that served it, or the failure's reason."""
    with stack.openai_as(key) as client:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=HI, extra_headers=PRIMARY_FAILS
            )
        except openai.APIStatusError as exc:
            return f"refused:{exc.response.headers.get(REASON)}"
        return str(raw.headers.get(SERVED_BY))


def test_edits_under_load_fail_no_request_and_each_answer_follows_its_own_revision(
    reloading: Stack, policy: PolicyDir, extra: MockProvider, keys: Keys
) -> None:
    agency, hospital = keys.agency, keys.hospital
    initial = policy.serving()
    assert initial == load_policy(policy.root).stamp
    rung_for_hop: dict[str, str] = {initial: SECONDARY}  # what each revision serves a hop with
    figures: list[str] = []

    def note(what: str, written: float, effect: float, status: dict[str, Any]) -> None:
        last = status["policy"]["last_reload"]
        figures.append(
            f"{what}: write to Envoy + every worker serving {last['took_s'] * 1000:.0f} ms "
            f"(Envoy {last['envoy_s'] * 1000:.0f} ms, workers {last['workers_s'] * 1000:.0f} ms), "
            f"write to the first answer showing it {1000 * (effect - written):.0f} ms"
        )

    with Load(reloading, agency) as load:
        time.sleep(1.0)
        # 1. A tenant's lowest tier: the hospital may now be served one tier down.
        # Tier 0 only: the primary's failure is the hospital's answer.
        assert refused_or_served(reloading, hospital) == "refused:server_error"
        written, stamp = policy.edit("tenants/hospital.yaml", lambda t: t.update(lowest_tier=1))
        rung_for_hop[stamp] = SECONDARY
        effect = first_time(lambda: refused_or_served(reloading, hospital) == SECONDARY)
        note("tenant tier 0 -> 1", written, effect, policy.await_revision(stamp))

        # 2. A provider and a rung added: the ladder's rung 1 is now another provider, so a try
        # decided before the edit and one decided after name the same rung index differently.
        def add_extra(d: dict[str, Any]) -> None:
            d["providers"]["extra"] = provider_entry(extra)
            d["ladders"]["main"].insert(1, {"provider": "extra", "model": "extra-model"})

        time.sleep(1.0)
        written, stamp = policy.edit("defaults.yaml", add_extra)
        rung_for_hop[stamp] = EXTRA
        effect = first_time(lambda: served_by(reloading, agency, PRIMARY_FAILS)[1] == EXTRA)
        note("provider + rung added", written, effect, policy.await_revision(stamp))

        # 3. ...and removed again.
        def remove_extra(d: dict[str, Any]) -> None:
            del d["providers"]["extra"]
            d["ladders"]["main"].pop(1)

        time.sleep(1.0)
        written, stamp = policy.edit("defaults.yaml", remove_extra)
        rung_for_hop[stamp] = SECONDARY
        effect = first_time(lambda: served_by(reloading, agency, PRIMARY_FAILS)[1] == SECONDARY)
        note("provider + rung removed", written, effect, policy.await_revision(stamp))

        # 4. A broken file: nothing changes, and the status says where and why.
        time.sleep(1.0)
        before = policy.serving()
        written = policy.write("tenants/agency.yaml", "lowest_tier: 9\n")
        status = policy.await_reload(written)
        assert status["policy"]["revision"] == before
        assert status["policy"]["last_reload"]["outcome"] == "rejected"
        assert refused_or_served(reloading, agency) == SECONDARY  # its last good tier still holds
        written, stamp = policy.edit("tenants/agency.yaml", lambda t: t.update(lowest_tier=2))
        assert stamp == before  # the file as it was: the same revision
        time.sleep(1.0)

    answers = load.answers
    failed = [a for a in answers if not a.ok]
    print(f"\nhot reload under load: {len(answers)} requests, {len(failed)} failed")
    for line in figures:
        print("  " + line)
    assert failed == []
    assert {a.stamp for a in answers} <= set(rung_for_hop)  # every answer stamped, with a revision served
    assert len({a.stamp for a in answers}) >= 3  # the load spanned the edits
    assert {(a.stream, a.hop) for a in answers} == {(s, h) for s in (False, True) for h in (False, True)}
    # A try runs under its request's revision: a hop lands where that revision said, even when
    # the next revision had another provider at the same rung index.
    wrong = [a for a in answers if a.hop and a.stamp is not None and a.served_by != rung_for_hop[a.stamp]]
    assert wrong == []
    assert not any(a.served_by == "primary/gpt-4o" for a in answers if a.hop)
    assert 'rungway_tries_refused_total{reason="policy_mismatch"}' not in reloading.metrics()
    # Every applied reload is an audit record: the revision before, the one after.
    records = httpx.get(reloading.admin_url + "/audit", params={"since": "1h", "limit": 10000}, timeout=10).json()
    applied = [r for r in records["records"] if r["kind"] == "policy_reload" and r["trigger"] == "reload"]
    assert {r["policy"] for r in applied} >= {a.stamp for a in answers if a.stamp is not None} - {
        applied[0]["detail"]["previous"]
    }


def test_a_broken_edit_keeps_the_last_good_policy_and_says_why(reloading: Stack, policy: PolicyDir) -> None:
    good = policy.serving()
    metrics = reloading.metrics()
    rejected_before = _counter(metrics, 'rungway_policy_reloads_total{outcome="rejected"}')

    written = policy.write("defaults.yaml", policy.root.joinpath("defaults.yaml").read_text() + "ladders: [\n")
    status = policy.await_reload(written)["policy"]
    assert status["revision"] == good
    assert status["error"]["outcome"] == "rejected"
    assert any("defaults.yaml" in p and "line" in p for p in status["error"]["problems"]), status["error"]

    def unknown_provider(d: dict[str, Any]) -> None:
        d["ladders"]["main"][0]["provider"] = "nobody"

    policy.write("defaults.yaml", yaml.safe_dump(_original_defaults(policy), sort_keys=False))
    policy.await_revision(good)
    written = policy.change("defaults.yaml", unknown_provider)
    status = policy.await_reload(written)["policy"]
    assert status["revision"] == good
    assert status["error"]["problems"] == [
        f"{policy.root.name}: defaults.yaml: ladders.main.0.provider: 'nobody' is not a provider "
        "(known: dead, primary, secondary, small)"
    ]
    policy.change("defaults.yaml", lambda d: d["ladders"]["main"][0].update(provider="primary"))
    policy.await_reload(time.time())
    written = policy.change("defaults.yaml", lambda d: d.update(max_body_bytes=1024 * 1024))
    status = policy.await_reload(written)["policy"]
    assert status["revision"] == good
    assert any("max_body_bytes: read only at start" in p for p in status["error"]["problems"])

    # Still serving the last good revision, stamped with it (a passed-through answer too).
    assert served_by(reloading, reloading.app_key, {}) == (200, "primary/gpt-4o", good)
    with reloading.openai_as(reloading.app_key) as client:
        assert client.models.with_raw_response.list().headers[POLICY_VERSION] == good
    assert reloading.refresh_state()  # supervisor alive
    assert _counter(reloading.metrics(), 'rungway_policy_reloads_total{outcome="rejected"}') >= rejected_before + 3
    ready = reloading.status()
    assert ready["policy_version"] == good
    # Each reload, applied or rejected, is in the audit trail (the supervisor's own chain).
    deadline = time.monotonic() + 5
    while True:
        answer = httpx.get(reloading.admin_url + "/audit", params={"since": "1h", "limit": 1000}, timeout=10)
        reloads = [r for r in answer.json()["records"] if r["kind"] == "policy_reload"]
        if len([r for r in reloads if r["trigger"] == "rejected"]) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len([r for r in reloads if r["trigger"] == "rejected" and r["policy"] == good]) >= 3


def _original_defaults(policy: PolicyDir) -> dict[str, Any]:
    """defaults.yaml minus the broken tail this test appended."""
    text = (policy.root / "defaults.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text.rsplit("ladders: [\n", 1)[0])
    return data


def test_a_request_in_flight_across_a_reload_finishes_under_its_own_revision(
    reloading: Stack, policy: PolicyDir, keys: Keys
) -> None:
    agency = keys.agency
    before = policy.serving()
    # The primary answers after its rung's 2 s budget: the try times out and the request hops
    # to rung 1, after the reload below has given rung 1 to another provider.
    slow_primary = {"x-mock-mode-primary": "delay:4"}
    result: list[tuple[int, str | None, str | None]] = []
    thread = threading.Thread(target=lambda: result.append(served_by(reloading, agency, slow_primary)))
    thread.start()
    time.sleep(0.5)

    def swap_rung_one(d: dict[str, Any]) -> None:
        d["ladders"]["main"][1] = {"provider": "small", "model": "small-model"}

    _, after = policy.edit("defaults.yaml", swap_rung_one)
    policy.await_revision(after)
    assert thread.is_alive()  # the reload took effect while the request was in flight
    thread.join(timeout=30)
    assert result == [(200, SECONDARY, before)]
    assert served_by(reloading, agency, slow_primary) == (200, "small/small-model", after)


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_single_file_reloads_too_and_restarted_processes_serve_the_current_revision(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.reset()
    with running(fleet.policy(tmp_path), env=KEY_ENV, workers=2, envoy_trouble_expected=True) as stack:
        path = stack.policy_path
        data = yaml.safe_load(path.read_text())
        data["ladders"]["main"][1] = {"provider": "small", "model": "small-model"}
        tmp = path.with_name(".policy.yaml.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
        stamp = load_policy(path).stamp
        # Applied: Envoy and every worker serve it (the revision shows in /status a moment before
        # the workers have acknowledged it).
        first_time(lambda: (stack.status()["policy"]["last_reload"] or {}).get("new") == stamp, every_s=0.02)
        assert served_by(stack, stack.app_key, PRIMARY_FAILS) == (200, "small/small-model", stamp)

        # Envoy and the workers, restarted, start from the current revision, not the file
        # `rungway up` was started with.
        before = stack.refresh_state()
        os.kill(int(before["envoy_pid"]), signal.SIGKILL)
        stack.kill_workers()
        first_time(lambda: _restarted(stack, before), timeout=60, every_s=0.1)

        def serves_current() -> bool:
            try:
                return served_by(stack, stack.app_key, PRIMARY_FAILS) == (200, "small/small-model", stamp)
            except openai.APIError:
                return False

        first_time(serves_current, timeout=60, every_s=0.1)
        for _ in range(4):  # both workers
            assert serves_current()
    fleet.reset()


def _restarted(stack: Stack, before: dict[str, Any]) -> bool:
    state = stack.refresh_state()
    return state["envoy_pid"] != before["envoy_pid"] and set(state["worker_pids"]).isdisjoint(before["worker_pids"])
