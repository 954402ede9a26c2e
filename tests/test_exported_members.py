"""The package's public names are pinned (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
from pathlib import Path

import extproc


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


def test_every_exported_name_of_every_room_resolves() -> None:
    # extproc.translate's names are pinned in tests/translate/test_exported_members.py.
    rooms = [extproc] + [
        importlib.import_module(f"extproc.{p.name}")
        for p in sorted(Path(extproc.__file__ or "").parent.iterdir())
        if (p / "__init__.py").is_file()
    ]
    assert len(rooms) > 5
    for module in rooms:
        for name in getattr(module, "__all__", ()):
            assert getattr(module, name, None) is not None, f"{module.__name__}.{name}"


def test_package_ships_its_type_marker() -> None:
    assert extproc.__file__ is not None
    assert (Path(extproc.__file__).parent / "py.typed").is_file()
