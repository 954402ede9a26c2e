"""The image's Dockerfile, checked without a Docker daemon: its stages, user, health check, that
its entrypoint is a command line `rungway up` accepts, and that every file it copies is in the
build context. (Building the image needs a daemon; this suite does not run one.)"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from extproc.cli import build_parser, cmd_up

ROOT = Path(__file__).resolve().parents[2]
# Names and values that must never be set in an image: keys belong in the runtime's secrets.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\bsk-[A-Za-z0-9]|\brwk_|BEGIN [A-Z ]*PRIVATE KEY")


@dataclass(frozen=True)
class Instruction:
    name: str
    value: str


def stages(path: Path = ROOT / "Dockerfile") -> list[list[Instruction]]:
    """The Dockerfile's build stages, each from its FROM on, comments left out."""
    parser = DockerfileParser(str(path))
    result: list[list[Instruction]] = []
    for item in parser.structure:
        name = item["instruction"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            result.append([])
        result[-1].append(Instruction(name, item["value"]))
    return result


def exec_form(value: str) -> list[str]:
    words = json.loads(value)
    assert isinstance(words, list), f"exec form (a JSON array) expected, got {value!r}"
    return [str(w) for w in words]


def last(stage: list[Instruction], name: str) -> Instruction:
    found = [i for i in stage if i.name == name]
    assert found, f"no {name} in the final stage"
    return found[-1]


def test_the_image_is_built_in_one_stage_and_run_from_another():
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    build_name = build[0].value.split()[-1]
    assert re.search(r"\bAS\b", build[0].value, re.IGNORECASE), "the build stage is named"
    copies = [i.value for i in final if i.name == "COPY"]
    assert any(c.startswith(f"--from={build_name} ") for c in copies)
    # Nothing is compiled or downloaded in the final stage: no package manager runs there.
    runs = " ".join(i.value for i in final if i.name == "RUN")
    assert not re.search(r"\b(pip|apt-get|apk|curl|wget)\b", runs)


def test_the_final_stage_runs_as_a_numeric_non_root_user():
    user = last(stages()[-1], "USER").value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"numeric non-root uid (runAsNonRoot needs it), got {user!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # And nothing after it switches back.
    final = stages()[-1]
    after = final[final.index(last(final, "USER")) :]
    assert [i for i in after if i.name == "USER"] == [last(final, "USER")]


def _up_args() -> list[str]:
    final = stages()[-1]
    return exec_form(last(final, "ENTRYPOINT").value) + exec_form(last(final, "CMD").value)


def test_the_entrypoint_is_a_command_line_rungway_up_accepts():
    argv = _up_args()
    assert argv[0] == "rungway"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_up
    assert args.listen == ("0.0.0.0", 10000)  # the app reaches it from outside the container
    assert args.admin == ("127.0.0.1", 9901)  # loopback unless the deployment adds a token
    assert args.policy == Path("/etc/rungway/policy.yaml")


def test_the_health_check_asks_the_admin_endpoint_the_entrypoint_binds():
    final = stages()[-1]
    check = last(final, "HEALTHCHECK").value
    command = exec_form(check.split("CMD", 1)[1].strip())
    url = re.search(r"http://([\d.]+):(\d+)(/\w+)", " ".join(command))
    assert url is not None, check
    args = build_parser().parse_args(_up_args()[1:])
    assert (url.group(1), int(url.group(2))) == args.admin
    assert url.group(3) in {"/healthz", "/readyz"}  # open to probes without the admin token
    # The image has python, not curl: the probe must use what is there.
    assert command[0] == "python"
    assert re.search(r"--interval=\d+s", check) and re.search(r"--timeout=\d+s", check)


def test_no_secret_is_baked_into_the_image():
    for stage in stages():
        for i in stage:
            if i.name in {"ENV", "ARG", "LABEL"}:
                for word in shlex.split(i.value):
                    name = word.split("=", 1)[0]
                    assert not _SECRET_NAME.search(name), f"{i.name} {word!r} sets a secret in the image"
            assert not _SECRET_VALUE.search(i.value), f"{i.name} {i.value!r} carries a key"


def _context_allows(path: str) -> bool:
    """.dockerignore: '*' then '!' exceptions (the only form this repo uses)."""
    rules = [
        r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and not r.startswith("#")
    ]
    allowed = False
    for rule in rules:
        pattern = rule.removeprefix("!").rstrip("/")
        if rule == "*" or Path(path).match(pattern) or path == pattern or path.startswith(pattern + "/"):
            allowed = rule.startswith("!")
    return allowed


@pytest.mark.parametrize("stage", range(len(stages())))
def test_every_copied_file_is_in_the_build_context(stage):
    copies = [i.value for i in stages()[stage] if i.name == "COPY" and not i.value.startswith("--from=")]
    sources = [src for value in copies for src in shlex.split(value)[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repo"
        assert _context_allows(src), f"COPY {src}: .dockerignore keeps it out of the build context"


def test_the_build_context_leaves_out_local_state():
    for path in (".venv", ".git", "tests", "bench/results", "policies"):
        assert not _context_allows(path), path
