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


def _label(value: str) -> tuple[str, str]:
    key, sep, label = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {value!r}")
    return key, label


def _socket_mode(value: str) -> int:
    from .runtime.server import SOCKET_MODES

    modes = {f"{m:o}": m for m in SOCKET_MODES}
    if value.removeprefix("0o").removeprefix("0") not in modes:
        raise argparse.ArgumentTypeError(f"one of {', '.join(modes)}, not {value!r}")
    return modes[value.removeprefix("0o").removeprefix("0")]


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
        f"{args.file}: OK (revision {policy.stamp}; {len(policy.providers)} providers, "
        f"{len(policy.tenants)} tenants, "
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
        prompt_tokens=args.prompt_tokens,
    )
    if policy.approvals is not None:  # the operators' approvals in force, as the workers read them
        import dataclasses
        import time

        from .routing.approval import ApprovalError
        from .runtime.approvals import read_approvals

        try:
            approved = read_approvals(policy.approvals).approved_tier(features.tenant, features.task, time.time())
        except ApprovalError as exc:
            raise SystemExit(f"rungway policy explain: {exc}") from None
        features = dataclasses.replace(features, approved_tier=approved)
    result = explain(policy, features, health, in_flight)
    print(f"tenant {args.tenant}, task {features.task}, model {args.model}: ladder {result.ladder or '-'}")
    for v in result.rungs:
        mark = "serves " if v.serves else "skipped"
        print(f"  {v.index}  tier {v.tier}  {v.endpoint:<40} {mark}  tools {v.tool_mode:<9}  {v.reason}")
        for note in v.notes:
            print(f"       {note}")
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
    config = render(policy, settings)
    if args.istio_selector:
        from .xds.istio import envoy_filter

        config = envoy_filter(config, name=args.istio_name, selector=dict(args.istio_selector))
    text = yaml.safe_dump(config, sort_keys=False)
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

    history = None
    if args.policy_history is not None:
        from .policy import History

        try:
            history = History.decode(args.policy_history.read_text())
        except (OSError, PolicyError) as exc:
            print(f"cannot start: policy history {args.policy_history}: {exc}", file=sys.stderr)
            return 1
        policy = history.current
    else:
        loaded = _load(args.policy)
        assert isinstance(loaded, Policy)
        policy = loaded
    from .identity import KeyStoreError
    from .routing.approval import ApprovalError
    from .runtime.bus import BusConfigError, bus_from_settings
    from .runtime.sidecar import CHANNEL_TOKEN_ENV, HUB_ENV, HUB_SECRET_ENV, PROBE_TOKEN_ENV

    if CHANNEL_TOKEN_ENV not in os.environ:
        os.environ[CHANNEL_TOKEN_ENV] = _channel_token(args.channel_token_file)

    if PROBE_TOKEN_ENV not in os.environ:
        policy = _live_half_open(policy)

    _bus_secret_file(args)
    from .runtime.auditlog import AUDIT_CHAIN_ENV, AUDIT_DIR_ENV, AuditLog, AuditLogError, AuditMetrics

    # The directory comes with the policy or from `rungway up`: never written into the policy,
    # whose content is its revision stamp (hot reload hands workers the supervisor's).
    from_up = os.environ.get(AUDIT_DIR_ENV)
    audit_dir = policy.audit.dir or (Path(from_up) if from_up else None)
    audit: AuditLog | None = None
    if policy.audit.enabled and audit_dir is not None:
        chain = os.environ.get(AUDIT_CHAIN_ENV, "serve")
        try:
            audit = AuditLog(audit_dir, chain, policy.audit, AuditMetrics()).open()
        except (AuditLogError, OSError) as exc:
            print(f"rungway serve: cannot open the audit log: {exc}", file=sys.stderr)
            return 1
    hub = os.environ.get(HUB_ENV)
    try:
        bus = bus_from_settings(
            policy.health, hub_path=Path(hub) if hub else None, hub_secret=os.environ.get(HUB_SECRET_ENV)
        )
        sidecar = Sidecar.start(policy, Metrics(), bus=bus)
        sidecar.audit = audit
    except BusConfigError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except (KeyStoreError, ApprovalError) as exc:
        print(f"rungway serve: {exc}", file=sys.stderr)
        return 1
    _install_uvloop()
    # Everything loaded so far lives as long as the process: keep it out of GC passes, and
    # collect young objects less often (each request allocates many short-lived protobufs).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    if history is not None:
        from .runtime.reload import HandedPolicy

        sidecar.handed = HandedPolicy(args.policy_history, args.socket)
        sidecar.reload(history)
    try:
        asyncio.run(serve(sidecar, args.socket, socket_mode=args.socket_mode))
    finally:
        if audit is not None:
            audit.close()  # what is queued is written and fsynced
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
    from .runtime.auditlog import default_dir
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
    if policy.approvals is not None:
        from .routing.approval import ApprovalError
        from .runtime.approvals import read_approvals

        try:
            read_approvals(policy.approvals)
        except ApprovalError as exc:
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
        audit_dir=args.audit_dir or default_dir(args.state_file),
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


def cmd_approve(args: argparse.Namespace) -> int:
    """Operators' approvals (T2): serve a tenant beyond its approval_beyond_tier for a while."""
    import getpass
    import time

    from .routing.approval import ApprovalError, approval
    from .runtime.approvals import grant, read_approvals, revoke

    if args.store is not None:
        path = Path(args.store)
    else:
        policy = _load(args.policy)
        assert isinstance(policy, Policy)
        if policy.approvals is None:
            raise SystemExit(f"rungway approve: {args.policy} names no approvals file")
        path = policy.approvals
    now = time.time()
    try:
        if args.list:
            for a in read_approvals(path).active(now):
                until = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(a.until))
                print(f"{a.tenant:<20} {a.task or '*':<14} tier {a.tier}  until {until}  by {a.by}  {a.reason}")
            return 0
        if args.tenant is None:
            raise SystemExit("rungway approve: --tenant is required")
        if args.revoke:
            revoke(path, args.tenant, args.task)
            print(f"approval for {args.tenant} revoked (running sidecars follow within a second)", file=sys.stderr)
            return 0
        if args.tier is None or args.for_s is None:
            raise SystemExit("rungway approve: --tier and --for are required to approve")
        who = args.by or getpass.getuser()
        grant(path, approval(args.tenant, args.tier, args.for_s, now, task=args.task, by=who, reason=args.reason))
        print(
            f"{args.tenant} may be served down to tier {args.tier} for {args.for_s:g}s "
            f"({args.task or 'every task'}); running sidecars follow within a second",
            file=sys.stderr,
        )
    except ApprovalError as exc:
        print(f"rungway approve: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_escalation(args: argparse.Namespace) -> int:
    """`rungway escalation list|show|approve|redirect|reject` against `rungway up`'s admin API."""
    import getpass
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    base = f"http://{args.admin[0]}:{args.admin[1]}/escalations"
    token = _admin_token(args.admin_token_file)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    data = None
    if args.escalation_command == "list":
        query = {"state": "all" if args.all else "open", **({"tenant": args.tenant} if args.tenant else {})}
        url = f"{base}?{urllib.parse.urlencode(query)}"
    elif args.escalation_command == "show":
        url = f"{base}/{urllib.parse.quote(args.id, safe='')}"
    else:
        url = f"{base}/{urllib.parse.quote(args.id, safe='')}/{args.escalation_command}"
        decision: dict[str, object] = {"by": args.by or getpass.getuser(), "reason": args.reason}
        if args.escalation_command == "redirect":
            decision["rung"] = int(args.rung) if args.rung.isdigit() else args.rung
        data = json.dumps(decision).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            error = exc.reason
        print(f"{exc.code}: {error}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    if args.json or args.escalation_command == "show":
        print(json.dumps(body, indent=2))
        return 0
    rows = body["escalations"] if "escalations" in body else [body["escalation"]]
    for e in rows:
        decided = e.get("resolution") or {}
        by = f" by {decided['by']}" if decided else ""
        print(
            f"{e['id']}  {e['state']:<10}{by}  {e['tenant']}/{e['task']}  {e['impact']}  "
            f"{e['served_by']} (tier {e['tier']})  reasons={','.join(e['reasons'])}  "
            f"candidate={'yes' if e['has_candidate'] else 'no'}"
        )
    if not rows:
        print("no escalations")
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


def _admin_get(args: argparse.Namespace, path: str) -> Any:
    """GET a JSON document from a running `rungway up`'s admin API (with its bearer token)."""
    import json
    import urllib.error
    import urllib.request

    url = f"http://{args.admin[0]}:{args.admin[1]}{path}"
    token = _admin_token(args.admin_token_file)
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise SystemExit(f"rungway: {path.split('?')[0]}: HTTP {exc.code} {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SystemExit(f"rungway: cannot read {url.split('?')[0]}: {exc}") from None


def cmd_review_list(args: argparse.Namespace) -> int:
    """Degraded answers kept for their tier-0 re-run (E3), and how the re-run differed."""
    import json
    import urllib.parse

    query = urllib.parse.urlencode(
        {k: v for k, v in (("tenant", args.tenant), ("since", args.since), ("limit", args.limit)) if v is not None}
    )
    reviews = _admin_get(args, f"/reviews?{query}")["reviews"]
    if args.json:
        print(json.dumps(reviews, indent=2))
        return 0
    print(format_reviews(reviews))
    return 0


def format_reviews(reviews: list[dict[str, Any]]) -> str:
    import time as _time

    rows = [("ID", "KEPT", "TENANT/TASK", "STATE", "SERVED BY (TIER)", "RE-RUN BY", "TEXT", "CHANGED")]
    for r in reviews:
        kept = _time.strftime("%Y-%m-%d %H:%M:%SZ", _time.gmtime(r["kept_at"]))
        text = "-" if r["same_text"] is None else "same" if r["same_text"] else f"differs ({r['similarity']:.2f})"
        changed = ",".join(r["changes"]) if r["changes"] else "-"
        rows.append(
            (r["id"], kept, f"{r['tenant']}/{r['task']}", r["state"], f"{r['served_by']} ({r['tier']})",
             r["rerun_by"] or "-", text, changed)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_review_show(args: argparse.Namespace) -> int:
    """One review: the request, the degraded answer, the tier-0 answer and their diff."""
    import json
    import urllib.parse

    review = _admin_get(args, f"/reviews/{urllib.parse.quote(args.id, safe='')}")
    if args.json:
        print(json.dumps(review, indent=2))
        return 0
    print(format_review(review))
    return 0


def format_review(r: dict[str, Any]) -> str:
    import json
    import time as _time

    def shown(value: object) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False) if not isinstance(value, str) else value

    kept = _time.strftime("%Y-%m-%d %H:%M:%SZ", _time.gmtime(r["kept_at"]))
    out = [
        f"review {r['id']}  {r['tenant']}/{r['task']}  {r['state']}  kept {kept}",
        f"request {r['request_id'] or '-'}  prompt sha256 {r['prompt_hash']}  policy {r['policy']}",
        f"served by {r['served_by']} (tier {r['tier']}, {r['reason']}); re-run by {r['rerun_by'] or '-'}",
        "",
        "── request",
        shown(r["request"]),
        f"── degraded answer ({r['served_by']})",
        shown(r["degraded_answer"]),
    ]
    if r["rerun_answer"] is None:
        out += ["── tier-0 answer", f"(not re-run yet: {r['attempts']} attempt(s))"]
        return "\n".join(out)
    diff = r["diff"]
    out += [f"── tier-0 answer ({r['rerun_by']})", shown(r["rerun_answer"]), "── diff"]
    out.append(diff["unified"].rstrip("\n") if diff["unified"] else "(the same text)")
    for change in diff["changes"]:
        out.append(f"{change['field']}: {change['degraded']} → {change['original']}")
    out.append(f"similarity {diff['similarity']:.3f}")
    return "\n".join(out)


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
    error = (status.get("policy") or {}).get("error")
    if error:
        # The files on disk are not what serves: say so loudly, with every problem.
        lines.append(f"policy edit REJECTED ({error['source']}); {error['old']} still serves:")
        lines.extend(f"  {problem}" for problem in error["problems"])
    return "\n".join(lines)


def _audit_dir(args: argparse.Namespace) -> Path:
    from .runtime.auditlog import default_dir

    return Path(args.dir) if args.dir is not None else default_dir(None)


def _anchor(text: str) -> tuple[str, Any]:
    from .audit import Anchor

    chain, _, rest = text.partition(":")
    seq, _, digest = rest.partition(":")
    if not chain or not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError(f"expected CHAIN:SEQ:HASH (a 64-digit hash), not {text!r}")
    return chain, Anchor(int(seq), digest)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Every chain in the directory: intact, or the first bad record and how it was tampered with."""
    from .audit import Broken
    from .runtime.auditlog import verify_dir

    directory = _audit_dir(args)
    verdicts = verify_dir(directory, dict(args.anchor or ()))
    if not verdicts:
        print(f"no audit chains in {directory}", file=sys.stderr)
        return 1
    for chain, verdict in verdicts.items():
        if isinstance(verdict, Broken):
            print(f"{chain}: BROKEN at {verdict}")
        else:
            span = f"seq {verdict.first_seq}..{verdict.last_seq}" if verdict.last_seq is not None else "empty"
            anchor = f"{chain}:{verdict.last_seq}:{verdict.head}" if verdict.last_seq is not None else "none"
            print(f"{chain}: intact, {verdict.records} records ({span}); anchor {anchor}")
    return 1 if any(isinstance(v, Broken) for v in verdicts.values()) else 0


def _audit_selection(args: argparse.Namespace) -> list[tuple[str, Any]]:
    import time

    from .audit import selected
    from .runtime.auditlog import read_records

    since = time.time() - args.since if args.since is not None else None
    return selected(read_records(_audit_dir(args)), tenant=args.tenant, since=since)


def cmd_audit_show(args: argparse.Namespace) -> int:
    """The story: what left tier 0, for whom, when, and why."""
    import json

    from .audit import line

    chosen = _audit_selection(args)
    for chain, record in chosen:
        if args.json:
            print(json.dumps({"chain": chain, "seq": record.seq, "hash": record.hash, **record.entry.encode()}))
        else:
            print(line(record))
    if not chosen and not args.json:
        print("no audit records match", file=sys.stderr)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Verified records as JSON lines (chain, seq and hash kept: a receiver can verify again)."""
    import json

    from .audit import Broken
    from .runtime.auditlog import verify_dir

    broken = {c: v for c, v in verify_dir(_audit_dir(args)).items() if isinstance(v, Broken)}
    for chain, verdict in broken.items():
        print(f"{chain}: BROKEN at {verdict}; not exported", file=sys.stderr)
    if broken:
        return 1
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115 - stdout is not ours to close
    try:
        for chain, record in _audit_selection(args):
            out.write(json.dumps({"chain": chain, "seq": record.seq, "hash": record.hash, **record.entry.encode()}))
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


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


def _tenant_key(value: str) -> tuple[str, str]:
    tenant, sep, key = value.partition("=")
    if not sep or not tenant or not key:
        raise argparse.ArgumentTypeError(f"expected TENANT=KEY, got {value.split('=')[0]!r}=…")
    return tenant, key


def cmd_incident(args: argparse.Namespace) -> int:
    """An incident from the audit trail (one request's failed tries) as a drill fixture: the
    golden task `--task` replayed with the same rungs failing the same way (D3)."""
    import datetime

    from .audit import incident_trips
    from .drills import FixtureError, GoldenTaskError, fixture_from_incident, parse_task
    from .runtime.auditlog import read_records

    policy = _load(args.policy)
    assert isinstance(policy, Policy)
    trips = incident_trips((r.entry for _, r in read_records(args.audit_dir)), args.request_id)
    if not trips:
        print(f"rungway incident: no failed tries of request {args.request_id!r} in {args.audit_dir}", file=sys.stderr)
        return 1
    task_file = args.tasks / f"{args.task}.json"
    try:
        task = parse_task(task_file.read_text(), str(task_file))
        at = min(r.entry.at for _, r in read_records(args.audit_dir) if r.entry.request_id == args.request_id)
        recorded = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")
        fixture = fixture_from_incident(policy, task, trips, incident=args.request_id, recorded_at=recorded)
    except (OSError, GoldenTaskError, FixtureError) as exc:
        print(f"rungway incident: {exc}", file=sys.stderr)
        return 1
    folder = args.tasks / "fixtures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fixture.id}.json"
    path.write_text(fixture.to_text())
    staged = ", ".join(f"rung {f.rung}: {f.mode}" for f in fixture.faults)
    print(
        f"{path}: {staged}; expects rung {fixture.expect_rung if fixture.expect_rung is not None else 'none (refusal)'}"
    )
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    _configure_logging("warning")
    from .runtime.drill import DrillError, DrillOptions, run_drill

    if (args.key or args.admin) and not args.listen:
        print("rungway drill: --key and --admin attach to a running stack: give its --listen too", file=sys.stderr)
        return 2
    options = DrillOptions(
        policy_path=args.policy,
        tasks_dir=args.tasks,
        report=args.report,
        baseline=args.baseline,
        scenarios=tuple(args.scenario or ()),
        save=tuple(args.save or ()),
        attach=f"http://{args.listen[0]}:{args.listen[1]}" if args.listen else None,
        admin=f"http://{args.admin[0]}:{args.admin[1]}" if args.admin else None,
        keys=tuple(args.key or ()),
    )
    try:
        outcome = asyncio.run(run_drill(options))
    except (ValueError, OSError, DrillError) as exc:
        print(f"rungway drill: {exc}", file=sys.stderr)
        return 2
    results = outcome.results
    print(f"{results['passed']} of {results['passed'] + results['failed']} cells pass; report: {args.report}")
    for regression in results["regressions"]:
        print(f"REGRESSION {regression['key']}: {regression['why']}")
    for path in outcome.saved:
        print(f"saved fixture {path}")
    return outcome.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rungway", description="LLM fallback ladders as an Envoy ext_proc sidecar")
    sub = parser.add_subparsers(dest="command", required=True)

    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file or directory; errors name file and field")
    check.add_argument("file", type=Path, help="a policy file, or a directory: defaults.yaml + tenants/<name>.yaml")
    check.set_defaults(func=cmd_policy_check)

    why = policy_sub.add_parser("explain", help="which rung would serve a tenant's request now, and why not the others")
    why.add_argument("file", type=Path)
    why.add_argument("--tenant", required=True)
    why.add_argument("--task", default="default")
    why.add_argument("--model", required=True)
    why.add_argument("--impact", choices=[i.value for i in Impact])
    why.add_argument("--stream", action="store_true")
    why.add_argument("--tools", action=argparse.BooleanOptionalAction, default=None)
    why.add_argument("--prompt-tokens", type=int, help="the request's size: shows context windows and trimming")
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
    cfg.add_argument(
        "--istio-selector",
        type=_label,
        action="append",
        metavar="LABEL=VALUE",
        help="print an Istio EnvoyFilter adding this configuration to the istio-proxy of the pods "
        "with these labels, instead of a bootstrap (repeat for several labels)",
    )
    cfg.add_argument("--istio-name", default="rungway", help="the EnvoyFilter's name")
    cfg.add_argument("-o", "--output")
    cfg.set_defaults(func=cmd_envoy_config)

    serve = sub.add_parser("serve", help="run one sidecar worker (the ext_proc gRPC server)")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", type=Path, help="a policy file or directory")
    # `rungway up` hands its workers the revisions it validated, and replaces the file on a reload.
    source.add_argument("--policy-history", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve on (made 0600)")
    serve.add_argument("--channel-token-file", type=Path, help="the secret Envoy shows (or $RUNGWAY_CHANNEL_TOKEN)")
    serve.add_argument(
        "--socket-mode",
        type=_socket_mode,
        default=0o600,
        help="600 (default): only this user may connect; 660: its group too, e.g. a mesh's Envoy "
        "(istio-proxy) running as another user in this group",
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--bus-secret-file", type=Path, help="file holding the fleet bus's signing secret")
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="start Envoy and the sidecar on a policy, supervise both")
    up.add_argument(
        "--policy",
        type=Path,
        required=True,
        help="a policy file or directory; edits take effect without a restart (a broken one changes nothing)",
    )
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
    up.add_argument(
        "--audit-dir",
        type=Path,
        help="the audit trail's directory when the policy's audit.dir is unset "
        "(default: beside --state-file, else $XDG_STATE_HOME/rungway/audit)",
    )
    up.set_defaults(func=cmd_up)

    audit = sub.add_parser("audit", help="the tamper-evident audit trail: verify, show, export")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check every chain; non-zero exit naming the first bad record")
    verify.add_argument("dir", nargs="?", help="the audit directory (default: $XDG_STATE_HOME/rungway/audit)")
    verify.add_argument(
        "--anchor",
        type=_anchor,
        action="append",
        help="CHAIN:SEQ:HASH of a record known from elsewhere (an earlier verify or export): "
        "records deleted from the end of that chain then show (repeat per chain)",
    )
    verify.set_defaults(func=cmd_audit_verify)
    for name, text, func in (
        ("show", "what left tier 0, for whom and why, oldest first", cmd_audit_show),
        ("export", "verified records as JSON lines", cmd_audit_export),
    ):
        cmd = audit_sub.add_parser(name, help=text)
        cmd.add_argument("--dir", help="the audit directory (default: $XDG_STATE_HOME/rungway/audit)")
        cmd.add_argument("--tenant")
        cmd.add_argument("--since", type=_duration, help="e.g. 30m, 1h, 2d")
        if name == "show":
            cmd.add_argument("--json", action="store_true", help="one JSON record per line")
        else:
            cmd.add_argument("-o", "--output", help="a file (default: stdout)")
        cmd.set_defaults(func=func)

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

    approve = sub.add_parser("approve", help="approve serving a tenant beyond its approval_beyond_tier, for a while")
    where = approve.add_mutually_exclusive_group(required=True)
    where.add_argument("--policy", type=Path, help="the policy whose approvals file to use")
    where.add_argument("--store", type=Path, help="the approvals file")
    approve.add_argument("--tenant")
    approve.add_argument("--tier", type=int, choices=range(4), help="the tier the tenant may be served down to")
    approve.add_argument("--for", dest="for_s", type=_duration, help="how long, e.g. 30m, 2h")
    approve.add_argument("--task", help="one task class (default: every task class)")
    approve.add_argument("--by", default="", help="who approves (default: the user running this)")
    approve.add_argument("--reason", default="")
    approve.add_argument("--revoke", action="store_true", help="end the tenant's approval (for --task, or all)")
    approve.add_argument("--list", action="store_true", help="the approvals in force")
    approve.set_defaults(func=cmd_approve)

    escalation = sub.add_parser(
        "escalation", help="answers held for a person (E2): list, show, approve, redirect, reject"
    )
    escalation_sub = escalation.add_subparsers(dest="escalation_command", required=True)
    for name, text in (
        ("list", "escalations waiting for a decision (--all: decided and expired too)"),
        ("show", "one escalation: why, its rungs, the request and the candidate answer"),
        ("approve", "the candidate answer stands (none: the request is replayed as it is)"),
        ("redirect", "replay the request on one rung of its ladder (index or provider)"),
        ("reject", "the client gets an error saying a person rejected the answer"),
    ):
        cmd = escalation_sub.add_parser(name, help=text)
        cmd.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
        cmd.add_argument(
            "--admin-token-file",
            type=Path,
            help=f"the admin bearer token, when `up` requires one (or set {ADMIN_TOKEN_ENV})",
        )
        cmd.add_argument("--json", action="store_true", help="the admin API's JSON")
        if name == "list":
            cmd.add_argument("--tenant")
            cmd.add_argument("--all", action="store_true")
        else:
            cmd.add_argument("id", help="the task id (x-rungway-task-id)")
        if name == "redirect":
            cmd.add_argument("rung", help="a rung of the escalation's ladder: its index or provider[/model]")
        if name in ("approve", "redirect", "reject"):
            cmd.add_argument("--by", default="", help="who decides (default: the user running this)")
            cmd.add_argument("--reason", default="")
        cmd.set_defaults(func=cmd_escalation)

    status = sub.add_parser("status", help="circuits, scores and budgets of a running `rungway up`, as a table")
    status.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    status.add_argument("--json", action="store_true", help="the raw /status JSON")
    status.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"the admin bearer token, when `up` requires one (or set {ADMIN_TOKEN_ENV})",
    )
    status.set_defaults(func=cmd_status)

    review = sub.add_parser("review", help="answers served below tier 0, re-run on tier 0 after recovery (E3)")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    for name, text, func in (
        ("list", "kept degraded answers and how their tier-0 re-run differed, oldest first", cmd_review_list),
        ("show", "one review: the request, both answers and their diff", cmd_review_show),
    ):
        cmd = review_sub.add_parser(name, help=text)
        cmd.add_argument("--admin", type=_address, default=("127.0.0.1", 9901), help="`rungway up`'s admin address")
        cmd.add_argument(
            "--admin-token-file",
            type=Path,
            help=f"the admin bearer token, when `up` requires one (or set {ADMIN_TOKEN_ENV})",
        )
        cmd.add_argument("--json", action="store_true", help="the admin API's JSON")
        cmd.set_defaults(func=func)
        if name == "list":
            cmd.add_argument("--tenant")
            cmd.add_argument("--since", help="e.g. 30m, 1h, 2d")
            cmd.add_argument("--limit", type=int, help="at most this many, the latest (default 100)")
        else:
            cmd.add_argument("id", help="the review id (`rungway review list`)")

    demo = sub.add_parser("demo", help="mock providers + demo policy + a fallback, live (what `make run` runs)")
    demo.add_argument("--listen", type=_address, default=("127.0.0.1", 10000))
    demo.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    demo.add_argument("--no-wait", action="store_true", help="exit after the scripted show")
    demo.add_argument("--brownout", action="store_true", help="also stage a provider brownout and its recovery")
    demo.set_defaults(func=cmd_demo)

    drill = sub.add_parser(
        "drill", help="scripted faults through every rung against golden tasks; a report; exit 1 on a regression"
    )
    drill.add_argument("--policy", type=Path, default=Path("evals/failover/policy.yaml"))
    drill.add_argument("--tasks", type=Path, default=Path("evals/failover"), help="golden tasks (and fixtures/)")
    drill.add_argument(
        "--report", type=Path, default=Path("drill-report.md"), help="Markdown; .svg and .json beside it"
    )
    drill.add_argument("--baseline", type=Path, help="a previous drill's results JSON: a known failure is not new")
    drill.add_argument(
        "--scenario",
        action="append",
        help="run only this scenario, or `fixtures` for the saved ones (repeat; default: all)",
    )
    drill.add_argument(
        "--save",
        action="append",
        help="save cells as replayable fixtures under TASKS/fixtures: all, a scenario, or scenario/task/tenant",
    )
    drill.add_argument("--listen", type=_address, help="attach to a running stack's listener instead of starting one")
    drill.add_argument("--key", type=_tenant_key, action="append", help="TENANT=KEY for an attached stack (repeat)")
    drill.add_argument("--admin", type=_address, help="the attached stack's admin: must be ready before and after")
    drill.set_defaults(func=cmd_drill)

    incident = sub.add_parser(
        "incident", help="an incident from the audit trail as a drill fixture every drill replays"
    )
    incident.add_argument("--audit-dir", type=Path, required=True, help="the audit trail (rungway audit verify's DIR)")
    incident.add_argument("--request-id", required=True, help="the request's x-request-id (rungway audit show)")
    incident.add_argument("--task", required=True, help="the golden task to replay it with (a NAME.json in --tasks)")
    incident.add_argument("--policy", type=Path, default=Path("evals/failover/policy.yaml"))
    incident.add_argument("--tasks", type=Path, default=Path("evals/failover"), help="golden tasks; fixtures/ in it")
    incident.set_defaults(func=cmd_incident)

    mocks = sub.add_parser("mock-providers", help="run mock OpenAI/Anthropic providers that fail on command")
    mocks.add_argument("rest", nargs=argparse.REMAINDER)
    mocks.set_defaults(func=cmd_mock_providers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
