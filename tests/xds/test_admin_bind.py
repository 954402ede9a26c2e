"""Where Envoy's admin (no authentication) binds: a 0600 Unix socket under `rungway up`, TCP
loopback only for a standalone `rungway envoy-config`."""

from __future__ import annotations

from extproc.xds.bootstrap import ADMIN_SOCKET_MODE, EnvoySettings, render
from tests.builders import make_policy

SOCKETS = ("/run/rw/w0.sock",)
TOKEN = "channel-token-0123456789abcdef"


def test_an_admin_socket_replaces_the_tcp_admin_and_is_made_0600() -> None:
    settings = EnvoySettings(
        listen_port=10000,
        admin_port=0,
        admin_socket="/run/rw/envoy-admin.sock",
        extproc_sockets=SOCKETS,
        channel_token=TOKEN,
    )
    admin = render(make_policy(), settings)["admin"]
    assert ADMIN_SOCKET_MODE == 0o600
    assert admin == {"address": {"pipe": {"path": "/run/rw/envoy-admin.sock", "mode": 0o600}}}


def test_without_a_socket_the_admin_binds_its_tcp_address() -> None:
    settings = EnvoySettings(listen_port=10000, admin_port=9902, extproc_sockets=SOCKETS, channel_token=TOKEN)
    admin = render(make_policy(), settings)["admin"]
    assert admin == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9902}}}
