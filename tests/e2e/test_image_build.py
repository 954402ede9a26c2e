"""The image's build stage without Docker: exactly the files its COPY instructions take (less what
.dockerignore leaves out) build the package with pip, as `pip install .` does in the stage, and
the wheel has every module, its data files and the `rungway` command. (Like the stage, this needs
the package registry for the build backend.)"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.test_dockerfile import ROOT, stages

pytestmark = pytest.mark.e2e


def test_the_build_stages_context_builds_the_whole_package(tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    for instruction in stages()[0]:
        if instruction.name != "COPY":
            continue
        *sources, dest = shlex.split(instruction.value)
        for src in sources:
            target = context / dest / Path(src).name if dest.endswith("/") else context / dest
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / src, target)
    out = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(context),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = out.glob("rungway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "extproc").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {"extproc/py.typed", "extproc/demo/policy.yaml"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rungway = extproc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
