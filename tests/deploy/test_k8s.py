"""deploy/k8s: the kustomize base and its example overlay render, validate against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail) at KUBE_VERSION, and
hang together: the sidecar's arguments are a command line `rungway up` accepts after the image's
ENTRYPOINT, its policy loads, every file the policy reads is a key of a mounted Secret, every
Secret and ConfigMap referenced exists with that key, probes hit the admin endpoints that stay
open without the token, and the app calls the sidecar's listener."""

from __future__ import annotations

import copy
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from extproc.cli import build_parser, cmd_up
from extproc.identity import KeyStore
from extproc.policy import load_policy
from extproc.runtime import supervisor
from tests.deploy.kustomize import build, containers, pod_spec
from tests.deploy.test_dockerfile import exec_form, last, stages

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy/k8s/base"
OVERLAY = ROOT / "deploy/k8s/overlays/example"
# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29, GA in 1.33.
KUBE_VERSION = "1.33.0"


@pytest.fixture(params=[BASE, OVERLAY], ids=["base", "overlay"])
def rendered(request) -> list[dict[str, Any]]:
    return build(request.param)


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''} expected, found {len(found)}"
    return found[0]


def sidecar_of(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(the(docs, "Deployment"))
    assert spec is not None
    return spec, next(c for c in spec["initContainers"] if c["name"] == "rungway")


def up_args(container: dict[str, Any]) -> Any:
    entrypoint = exec_form(last(stages()[-1], "ENTRYPOINT").value)
    return build_parser().parse_args([*entrypoint[1:], *container["args"]])


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    data: dict[str, str] = the(docs, "Secret", name).get("stringData", {})
    return data


def mounted_file(spec: dict[str, Any], container: dict[str, Any], path: PurePosixPath) -> tuple[str, str, str]:
    """(kind, object name, key) of the ConfigMap or Secret item that `path` is in the container."""
    for mount in container.get("volumeMounts", []):
        if path.parent == PurePosixPath(mount["mountPath"]):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            if "secret" in volume:
                return "Secret", volume["secret"]["secretName"], path.name
            if "configMap" in volume:
                return "ConfigMap", volume["configMap"]["name"], path.name
    raise AssertionError(f"{path} is on no Secret or ConfigMap mount of {container['name']}")


def test_every_manifest_is_valid_for_the_kubernetes_api(rendered):
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_validation_refuses_a_misspelled_field():
    deployment = copy.deepcopy(the(build(BASE), "Deployment"))
    deployment["spec"]["template"]["spec"]["initContainers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_the_sidecar_arguments_are_a_command_line_rungway_up_accepts(rendered):
    _, sidecar = sidecar_of(rendered)
    args = up_args(sidecar)
    assert args.func is cmd_up
    assert args.listen == ("127.0.0.1", 10000)  # only the pod's own app reaches it
    assert args.admin == ("0.0.0.0", 9901)  # the kubelet and Prometheus reach it...
    assert args.admin_token_file is not None  # ...and everything but the probes needs the token


def test_the_sidecar_is_a_native_sidecar_that_starts_before_the_app(rendered):
    _, sidecar = sidecar_of(rendered)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_the_policy_in_the_configmap_loads_and_passes_policy_check(rendered, tmp_path, capsys):
    spec, sidecar = sidecar_of(rendered)
    kind, name, key = mounted_file(spec, sidecar, PurePosixPath(str(up_args(sidecar).policy)))
    assert kind == "ConfigMap"
    path = tmp_path / key
    path.write_text(the(rendered, "ConfigMap", name)["data"][key])
    args = build_parser().parse_args(["policy", "check", str(path)])
    assert args.func(args) == 0
    assert "OK" in capsys.readouterr().out


def test_every_file_the_policy_reads_is_a_key_of_a_mounted_secret(rendered, tmp_path):
    spec, sidecar = sidecar_of(rendered)
    kind, name, key = mounted_file(spec, sidecar, PurePosixPath(str(up_args(sidecar).policy)))
    (tmp_path / key).write_text(the(rendered, kind, name)["data"][key])
    policy = load_policy(tmp_path / key)
    files = [p.credential.file for p in policy.providers.values() if p.credential is not None]
    assert files, "the example reads its provider keys from files"
    assert policy.clients.key_store is not None
    for path in [*files, policy.clients.key_store]:
        kind, name, key = mounted_file(spec, sidecar, PurePosixPath(str(path)))
        assert kind == "Secret"
        assert key in secret_data(rendered, name), f"{path}: Secret {name} has no key {key}"
    store = policy.clients.key_store
    kind, name, key = mounted_file(spec, sidecar, PurePosixPath(str(store)))
    KeyStore.parse(secret_data(rendered, name)[key])  # a store `rungway up` starts with
    kind, name, key = mounted_file(spec, sidecar, PurePosixPath(str(up_args(sidecar).admin_token_file)))
    assert (kind, key) == ("Secret", "token") and key in secret_data(rendered, name)


def test_every_secret_and_configmap_referenced_exists_with_its_key(rendered):
    spec, _ = sidecar_of(rendered)
    for volume in spec["volumes"]:
        if "secret" in volume:
            the(rendered, "Secret", volume["secret"]["secretName"])
        if "configMap" in volume:
            the(rendered, "ConfigMap", volume["configMap"]["name"])
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for c in containers(spec)
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert refs
    for ref in refs:
        assert ref["key"] in secret_data(rendered, ref["name"]), ref


def test_probes_use_the_admin_endpoints_open_without_the_token(rendered):
    _, sidecar = sidecar_of(rendered)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = sidecar[probe]["httpGet"]
        assert get["path"] in supervisor._OPEN_ADMIN_PATHS, probe
        assert ports.get(get["port"], get["port"]) == up_args(sidecar).admin[1], probe
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"  # liveness: the supervisor, not its children
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_app_calls_the_sidecar_and_holds_only_its_rungway_key(rendered):
    spec, sidecar = sidecar_of(rendered)
    host, port = up_args(sidecar).listen
    app = next(c for c in spec["containers"] if c["name"] == "app")
    env = {e["name"]: e for e in app["env"]}
    assert env["OPENAI_BASE_URL"]["value"] == f"http://{host}:{port}/v1"
    assert env["ANTHROPIC_BASE_URL"]["value"] == f"http://{host}:{port}"
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "support-bot-rungway-key"
    # The provider keys are mounted into the sidecar alone.
    mounted = {m["name"] for m in app.get("volumeMounts", [])}
    assert "provider-keys" not in mounted


def test_every_container_is_non_root_read_only_and_bounded(rendered):
    spec, sidecar = sidecar_of(rendered)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for c in containers(spec):
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]
        assert ctx.get("runAsUser", 1) != 0, c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
    # `rungway up` makes its private run directory with tempfile: /tmp must be writable.
    tmp = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])


def test_the_overlay_pins_the_image_and_namespace_and_keeps_the_base_coherent():
    docs = build(OVERLAY)
    assert {d["metadata"]["namespace"] for d in docs} == {"support"}
    _, sidecar = sidecar_of(docs)
    assert sidecar["image"] == "registry.example.com/platform/rungway:0.1.0"
    assert up_args(sidecar).workers == 3
    assert the(docs, "Deployment")["spec"]["replicas"] == 4
    assert the(docs, "ConfigMap")["data"] == the(build(BASE), "ConfigMap")["data"]
