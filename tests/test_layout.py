"""The design's top-level names collide with PyPI distributions; prove ours are the ones imported."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["edge", "drivers", "engines", "calibration", "tools"])
def test_top_level_package_resolves_inside_repo(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_every_console_script_points_at_a_main_in_this_repo() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {"edge-record", "edge-calibrate", "edge-train", "edge-build", "edge-parity", "edge-bench", "edge-daemon"}
    assert expected | {"edge-sign", "edge-verify"} <= set(scripts)
    for name, target in scripts.items():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), name
        assert module.__file__ is not None and Path(module.__file__).resolve().is_relative_to(REPO), name
