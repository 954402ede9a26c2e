"""Rungway in a mesh that already runs Envoy (Istio): the listener, rung relay and clusters that
`bootstrap.render` makes, as an Istio `EnvoyFilter` that adds them to the selected pods'
istio-proxy. A pure function of the rendered bootstrap, so both ways of running Rungway serve one
configuration.

Istio's Envoy then does what `rungway up`'s does: the app calls the added listener (its SDK's base
URL), the `decide` and `attempt` ext_proc filters reach a `rungway serve` worker over a Unix
socket in a volume both containers mount (worker `--socket-mode 660`, the socket's group being
istio-proxy's), and the rungs go to the providers from the proxy. What stays with the bootstrap
and is not patched into Istio's: Envoy's admin (Istio's), the overload manager, the admin runtime
layer and the internal-listener bootstrap extension (Istio's sidecar bootstrap registers it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.names import RELAY_LISTENER

API_VERSION = "networking.istio.io/v1alpha3"
# The resources added, in the order Envoy needs them: clusters before the listeners naming them.
_APPLY_TO = (("clusters", "CLUSTER"), ("listeners", "LISTENER"))
# `rungway up` adds a rescue listener on a private Unix socket only it may reach; a mesh worker
# has no supervisor to call it, so a stream cut after its first token ends with an in-band error.
_NOT_IN_A_MESH = frozenset({"rungway_rescue"})


def envoy_filter(bootstrap: Mapping[str, Any], *, name: str, selector: Mapping[str, str]) -> dict[str, Any]:
    """An EnvoyFilter adding `bootstrap`'s listeners and clusters to the pods `selector` picks."""
    if not selector:
        raise ValueError("an EnvoyFilter for Rungway needs a workload selector: it must not patch every proxy")
    static = bootstrap["static_resources"]
    patches: list[dict[str, Any]] = []
    for key, apply_to in _APPLY_TO:
        for resource in static[key]:
            if resource["name"] in _NOT_IN_A_MESH:
                continue
            patches.append(
                {
                    "applyTo": apply_to,
                    "match": {"context": "SIDECAR_OUTBOUND"},
                    "patch": {"operation": "ADD", "value": resource},
                }
            )
    if not any(p["patch"]["value"]["name"] == RELAY_LISTENER for p in patches):
        raise ValueError(f"the bootstrap has no {RELAY_LISTENER} listener: not one `render` made")
    return {
        "apiVersion": API_VERSION,
        "kind": "EnvoyFilter",
        "metadata": {"name": name},
        "spec": {"workloadSelector": {"labels": dict(selector)}, "configPatches": patches},
    }
