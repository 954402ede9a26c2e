"""The package's public names are pinned (httpx's test_exported_members)."""

from __future__ import annotations

from pathlib import Path

import extproc
import extproc.translate


def test_extproc_exports_exactly_its_public_names() -> None:
    assert sorted(extproc.__all__) == [
        "Failure",
        "NeedBody",
        "Policy",
        "PolicyError",
        "Refusal",
        "RequestFeatures",
        "Route",
        "choose",
        "load_policy",
        "parse_policy",
    ]


def test_every_exported_name_resolves() -> None:
    # extproc.translate's names are pinned in tests/translate/test_exported_members.py.
    for module in (extproc, extproc.translate):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_package_ships_its_type_marker() -> None:
    assert extproc.__file__ is not None
    assert (Path(extproc.__file__).parent / "py.typed").is_file()
