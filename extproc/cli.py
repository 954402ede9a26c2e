"""The `rungway` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .core import Impact
from .core.names import ADMIN_TOKEN_ENV
from .policy import Policy, PolicyError, load_policy


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _address(value: str) -> tuple[str, int]:
    from .runtime.supervisor import split_address

    try:
        return split_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}") from None


def _loopback_address(value: str) -> tuple[str, int]:
    """Envoy's admin has no authentication and can stop Envoy: it never leaves loopback."""
    from .policy import is_loopback_host

    host, port = _address(value)
    if not is_loopback_host(host):
        raise argparse.ArgumentTypeError(f"Envoy's admin has no authentication: it binds loopback only, not {host!r}")
    return host, port


def _envoy_admin_gone(value: str) -> tuple[str, int]:
    """`up --envoy-admin` is refused rather than ignored: a script that set it learns why."""
    raise argparse.ArgumentTypeError(
        "is gone: under `rungway up` Envoy's admin (no authentication) binds no TCP port, only a "
        "0600 Unix socket in the run directory (the state file's envoy_admin_socket)"
    )


def _secret(what: str, path: Path | None, env: str, *, keep_in_env: bool) -> str | None:
    """A secret from its file, else its environment variable (None: neither gives one). Unless
    child processes need it (`keep_in_env`), it is taken out of the environment."""
    from_env = os.environ.get(env) if keep_in_env else os.environ.pop(env, None)
    if path is None:
        value = from_env
    else:
        try:
            value = path.read_text()
        except OSError as exc:
            raise SystemExit(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if value is None:
        return None
    if not value.strip():
        raise SystemExit(f"the {what} is empty")
    return value.strip()


def _admin_token(token_file: Path | None) -> str | None:
    """The admin bearer token (--admin-token-file or RUNGWAY_ADMIN_TOKEN), never inherited."""
    return _secret("admin token", token_file, ADMIN_TOKEN_ENV, keep_in_env=False)


def _load(path: Path) -> object:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"invalid policy {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    from .routing.ladder import orderings

    assert isinstance(policy, Policy)
    clusters = sum(1 for _ in orderings(policy)) * 2
    print(
        f"{args.file}: OK (version {policy.version}; {len(policy.providers)} providers, "
        f"{len(policy.ladders)} ladders, {len(policy.models)} model routes, {clusters} ladder clusters)"
    )
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    import json
    import urllib.request

    from .routing.explain import explain, features_for

    policy = _load(args.file)
    assert isinstance(policy, Policy)
    health = None
    in_flight = None
    if args.admin is not None:
        request = urllib.request.Request(f"http://{args.admin[0]}:{args.admin[1]}/status")
        token = _admin_token(args.admin_token_file)
        if token:
            request.add_header("authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.loads(response.read())
        health = {row["endpoint"]: row for row in status.get("rungs", [])}
        in_flight = status.get("capacity", {})
    impact = Impact(args.impact) if args.impact else None
    features = features_for(
        policy,
        tenant=args.tenant,
        task=args.task,
        model=args.model,
        stream=args.stream,
        tools=args.tools,
        impact=impact,
    )
    result = explain(policy, features, health, in_flight)
    print(f"tenant {args.tenant}, task {features.task}, model {args.model}: ladder {result.ladder or '-'}")
    for v in result.rungs:
        mark = "serves " if v.serves else "skipped"
        print(f"  {v.index}  tier {v.tier}  {v.endpoint:<40} {mark}  {v.reason}")
    print(f"→ {result.outcome}")
    return 0


def cmd_envoy_config(args: argparse.Namespace) -> int:
    from .xds.bootstrap import EnvoySettings, render

    policy = _load(args.policy)
    assert isinstance(policy, Policy)
    settings = EnvoySettings(
        listen_address=args.listen[0],
        listen_port=args.listen[1],
        admin_address=args.envoy_admin[0],
        admin_port=args.envoy_admin[1],
        extproc_sockets=tuple(args.extproc_socket or ["/run/rungway/worker-0.sock"]),
        channel_token=_channel_token(args.channel_token_file),
        access_log_path=args.access_log,
    )
    text = yaml.safe_dump(render(policy, settings), sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _channel_token(path: Path | None) -> str:
    """The secret Envoy sends on every ext_proc stream: from a file (shared by envoy-config and
    serve, e.g. a k8s secret) or $RUNGWAY_CHANNEL_TOKEN."""
    from .runtime.sidecar import CHANNEL_TOKEN_ENV

    token = _secret("channel token", path, CHANNEL_TOKEN_ENV, keep_in_env=True) or ""
    if len(token) < 16:
        raise SystemExit(
            f"rungway: a channel token of 16+ characters is needed (--channel-token-file or ${CHANNEL_TOKEN_ENV})"
        )
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from .runtime.metrics import Metrics
    from .runtime.server import serve
    from .runtime.sidecar import Sidecar

    policy = _load(args.policy)
    assert isinstance(policy, Policy)
    from .identity import KeyStoreError
    from .runtime.bus import BusConfigError, bus_from_settings
    from .runtime.sidecar import CHANNEL_TOKEN_ENV, HUB_ENV, HUB_SECRET_ENV, PROBE_TOKEN_ENV

    if CHANNEL_TOKEN_ENV not in os.environ:
        os.environ[CHANNEL_TOKEN_ENV] = _channel_token(args.channel_token_file)

    if PROBE_TOKEN_ENV not in os.environ:
        policy = _live_half_open(policy)

    _bus_secret_file(args)
    hub = os.environ.get(HUB_ENV)
    try:
        bus = bus_from_settings(
            policy.health, hub_path=Path(hub) if hub else None, hub_secret=os.environ.get(HUB_SECRET_ENV)
        )
        sidecar = Sidecar.start(policy, Metrics(), bus=bus)
    except BusConfigError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyStoreError as exc:
        print(f"rungway serve: {exc}", file=sys.stderr)
        return 1
    _install_uvloop()
    # Everything loaded so far lives as long as the process: keep it out of GC passes, and
    # collect young objects less often (each request allocates many short-lived protobufs).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    asyncio.run(serve(sidecar, args.socket))
    return 0


def _bus_secret_file(args: argparse.Namespace) -> None:
    """--bus-secret-file: read where the environment says, so `rungway up`'s workers inherit it."""
    if getattr(args, "bus_secret_file", None) is not None:
        from .runtime.bus import SECRET_FILE_ENV

        os.environ[SECRET_FILE_ENV] = str(args.bus_secret_file)


def _live_half_open(policy: Policy) -> Policy:
    """Alone (not under `rungway up`) nobody sends synthetic probes: a half-open circuit can
    only be tried by live requests, or it would stay half-open for good."""
    health = policy.health
    if not health.enabled or health.circuit.live_half_open:
        return policy
    logging.getLogger("rungway").info("no synthetic probes without `rungway up`: live requests try half-open rungs")
    circuit = health.circuit.model_copy(update={"live_half_open": True})
    return policy.model_copy(update={"health": health.model_copy(update={"circuit": circuit})})


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_up(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from .policy import Policy, is_loopback_host, resolve_credentials
    from .runtime.supervisor import UpOptions, run_up

    policy = _load(args.policy)
    assert isinstance(policy, Policy)
    try:
        resolve_credentials(policy)
    except PolicyError as exc:
        print("cannot start: provider credentials are missing:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if policy.clients.key_store is not None:
        from .identity import KeyStoreError
        from .runtime.keyfile import read_store

        try:
            read_store(policy.clients.key_store)
        except KeyStoreError as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
    _bus_secret_file(args)
    admin_token = _admin_token(args.admin_token_file)
    if admin_token is None and not is_loopback_host(args.admin[0]):
        logging.getLogger("rungway").warning(
            "the admin endpoint on %s has no token: /status and /metrics are open to that network "
            "(--admin-token-file or %s)",
            args.admin[0],
            ADMIN_TOKEN_ENV,
        )
    options = UpOptions(
        policy_path=args.policy,
        policy=policy,
        listen=args.listen,
        admin=args.admin,
        workers=args.workers,
        access_log=args.access_log,
        envoy_concurrency=args.envoy_concurrency,
        log_level=args.log_level,
        state_file=args.state_file,
        restart=not args.no_restart,
        admin_token=admin_token,
    )
    try:
        asyncio.run(run_up(options))
    except RuntimeError as exc:
        print(f"rungway up failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _key_store_path(args: argparse.Namespace) -> Path:
    if args.store is not None:
        return Path(args.store)
    policy = _load(args.policy)
    assert isinstance(policy, Policy)
    if policy.clients.key_store is None:
        raise SystemExit(f"rungway keys: {args.policy} names no clients.key_store")
    return policy.clients.key_store


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """'90d', '12h', '30m' or seconds."""
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration like 90d, 12h or 30m, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def cmd_keys(args: argparse.Namespace) -> int:
    """Client keys: issued once (printed, never stored), listed by id, revoked by id."""
    import time

    from .identity import KeyStoreError
    from .runtime.keyfile import add_key, read_store, revoke_key

    path = _key_store_path(args)
    try:
        store = read_store(path)
        if args.keys_command == "new":
            expires = time.time() + args.expires_in if args.expires_in is not None else None
            plaintext, key = add_key(path, args.tenant, expires=expires, label=args.label)
            print(plaintext)
            print(f"key {key.id} for tenant {key.tenant} stored in {path}; the key is shown only now", file=sys.stderr)
        elif args.keys_command == "revoke":
            revoke_key(path, args.id)
            print(f"key {args.id} revoked (running sidecars stop accepting it within a second)", file=sys.stderr)
        else:
            now = time.time()
            for k in store.keys:
                state = "expired" if k.expired(now) else "active"
                until = time.strftime("%Y-%m-%d", time.gmtime(k.expires)) if k.expires else "-"
                print(f"{k.id}  {k.tenant:<20} {state:<8} expires {until:<10} {k.label}")
    except KeyStoreError as exc:
        print(f"rungway keys: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    url = f"http://{args.admin[0]}:{args.admin[1]}/status"
    token = _admin_token(args.admin_token_file)
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    """The /status JSON as a table a person reads at 3 a.m."""
    import time as _time

    rows = [("ENDPOINT", "CIRCUIT", "SCORE", "P95", "BASELINE", "CALLS", "FAIL%", "LAST TRIP", "NOTE")]
    now = float(status.get("at", _time.time()))
    for rung in status.get("rungs", []):
        circuit = rung["circuit"]
        rate = circuit.get("failure_rate")
        base = rung["baseline_s"]["json"] or rung["baseline_s"]["stream"]
        trip = rung.get("last_trip")
        notes = []
        if rung.get("quota_until"):
            notes.append(f"quota until +{rung['quota_until'] - now:.0f}s")
        if rung.get("slo_degraded"):
            notes.append("latency SLO breached")
        if circuit.get("open_until"):
            notes.append(f"open for {circuit['open_until'] - now:.0f}s more")
        rows.append(
            (
                rung["endpoint"],
                str(circuit["state"]),
                f"{rung['score']:.2f}",
                f"{rung['p95_s']:.2f}s" if rung["p95_s"] is not None else "-",
                f"{base:.2f}s" if base else "-",
                str(circuit.get("calls", 0)),
                f"{rate:.0f}" if rate is not None else "-",
                f"{trip['reason']} {now - trip['at']:.0f}s ago" if trip else "-",
                ", ".join(notes),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    budget = status.get("retry_budget", {})
    bus = status.get("bus", {})
    lines.append("")
    lines.append(
        f"policy {status.get('policy_version')}   bus {bus.get('kind')} "
        f"({'connected' if bus.get('connected') else 'disconnected'})   "
        f"retries {budget.get('retries')}/{budget.get('allowed', 0):.0f} allowed in {budget.get('window_s')}s"
    )
    refused = {reason: n for reason, n in (bus.get("rejected") or {}).items() if n}
    if refused:
        lines.append("bus frames refused: " + ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items())))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    _configure_logging("warning")
    from .demo.show import run_demo

    return asyncio.run(
        run_demo(listen=args.listen, admin=args.admin, interactive=not args.no_wait, brownout=args.brownout)
    )


def cmd_mock_providers(args: argparse.Namespace) -> int:
    from .demo import mock_provider

    mock_provider.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rungway", description="LLM fallback ladders as an Envoy ext_proc sidecar")
    sub = parser.add_subparsers(dest="command", required=True)

    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file; field-level errors")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_policy_check)

    why = policy_sub.add_parser("explain", help="which rung would serve a tenant's request now, and why not the others")
    why.add_argument("file", type=Path)
    why.add_argument("--tenant", required=True)
    why.add_argument("--task", default="default")
    why.add_argument("--model", required=True)
    why.add_argument("--impact", choices=[i.value for i in Impact])
    why.add_argument("--stream", action="store_true")
    why.add_argument("--tools", action=argparse.BooleanOptionalAction, default=None)
    why.add_argument("--admin", type=_address, help="a running `rungway up`'s admin: include live health and capacity")
    why.add_argument("--admin-token-file", type=Path)
    why.set_defaults(func=cmd_policy_explain)

    cfg = sub.add_parser("envoy-config", help="render the Envoy bootstrap for a policy")
    cfg.add_argument("--policy", type=Path, required=True)
    cfg.add_argument("--listen", type=_address, default=("127.0.0.1", 10000), help="HOST:PORT for client traffic")
    cfg.add_argument("--envoy-admin", type=_loopback_address, default=("127.0.0.1", 9902))
    cfg.add_argument("--extproc-socket", action="append", help="a sidecar worker's Unix socket (repeat for several)")
    cfg.add_argument("--channel-token-file", type=Path, help="the secret Envoy shows the sidecar (shared with serve)")
    cfg.add_argument("--access-log", default="/dev/stdout")
    cfg.add_argument("-o", "--output")
    cfg.set_defaults(func=cmd_envoy_config)

    serve = sub.add_parser("serve", help="run one sidecar worker (the ext_proc gRPC server)")
    serve.add_argument("--policy", type=Path, required=True)
    serve.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve on (made 0600)")
    serve.add_argument("--channel-token-file", type=Path, help="the secret Envoy shows (or $RUNGWAY_CHANNEL_TOKEN)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--bus-secret-file", type=Path, help="file holding the fleet bus's signing secret")
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="start Envoy and the sidecar on a policy, supervise both")
    up.add_argument("--policy", type=Path, required=True)
    up.add_argument(
        "--listen", type=_address, default=("127.0.0.1", 10000), help="HOST:PORT apps call (default 127.0.0.1:10000)"
    )
    up.add_argument(
        "--admin",
        type=_address,
        default=("127.0.0.1", 9901),
        help="HOST:PORT of /metrics, /status, /healthz, /readyz (default loopback)",
    )
    up.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"require `Authorization: Bearer <token>` on the admin endpoint but /healthz and /readyz "
        f"(or set {ADMIN_TOKEN_ENV})",
    )
    up.add_argument("--envoy-admin", type=_envoy_admin_gone, help=argparse.SUPPRESS)
    up.add_argument("--workers", type=int, default=1, help="sidecar worker processes (about one per spare core)")
    up.add_argument("--access-log", default="/dev/stdout")
    up.add_argument("--envoy-concurrency", type=int, default=1)
    up.add_argument("--log-level", default="info")
    up.add_argument("--state-file", type=Path, help="write bound ports and pids here (JSON)")
    up.add_argument("--no-restart", action="store_true", help="do not restart a worker or Envoy that exits")
    up.add_argument(
        "--bus-secret-file",
        type=Path,
        help="file holding the fleet (Redis) bus's signing secret (or RUNGWAY_BUS_SECRET)",
    )
    up.set_defaults(func=cmd_up)

    keys = sub.add_parser("keys", help="client keys: who may call, as which tenant")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, text in (("new", "issue a key (printed once)"), ("list", "list keys"), ("revoke", "revoke a key")):
        cmd = keys_sub.add_parser(name, help=text)
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--policy", type=Path, help="the policy whose clients.key_store to use")
        where.add_argument("--store", type=Path, help="the key store file")
        cmd.set_defaults(func=cmd_keys)
        if name == "new":
            cmd.add_argument("--tenant", required=True)
            cmd.add_argument("--expires-in", type=_duration, help="e.g. 90d, 12h (default: never)")
            cmd.add_argument("--label", default="", help="a note, e.g. who holds it")
        elif name == "revoke":
            cmd.add_argument("id", help="the key id (`rungway keys list`)")

    status = sub.add_parser("status", help="circuits, scores and budgets of a running `rungway up`, as a table")
    status.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    status.add_argument("--json", action="store_true", help="the raw /status JSON")
    status.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"the admin bearer token, when `up` requires one (or set {ADMIN_TOKEN_ENV})",
    )
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="mock providers + demo policy + a fallback, live (what `make run` runs)")
    demo.add_argument("--listen", type=_address, default=("127.0.0.1", 10000))
    demo.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    demo.add_argument("--no-wait", action="store_true", help="exit after the scripted show")
    demo.add_argument("--brownout", action="store_true", help="also stage a provider brownout and its recovery")
    demo.set_defaults(func=cmd_demo)

    mocks = sub.add_parser("mock-providers", help="run mock OpenAI/Anthropic providers that fail on command")
    mocks.add_argument("rest", nargs=argparse.REMAINDER)
    mocks.set_defaults(func=cmd_mock_providers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
