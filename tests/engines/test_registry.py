"""Registry: registered and lazy families, and the errors a wrong name or a broken entry gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _toy import TOY_FAMILY, ToyFamily

import engines
from engines import _registry
from engines._registry import ModelRegistryError, get_family, list_families, register_family, register_lazy


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own copy of the registry tables."""
    monkeypatch.setattr(_registry, "_FAMILIES", dict(_registry._FAMILIES))
    monkeypatch.setattr(_registry, "_LAZY", dict(_registry._LAZY))
    monkeypatch.setattr(_registry, "_SUITE", set(_registry._SUITE))


def test_register_and_lookup() -> None:
    register_family(TOY_FAMILY, replace=True)
    assert get_family("toy") is TOY_FAMILY
    assert engines.get_family("toy") is TOY_FAMILY
    assert "toy" in list_families() and "ast" in list_families()
    assert list_families() == sorted(list_families())


def test_suite_families_are_declared_without_importing_them() -> None:
    """The accuracy suite iterates these: detectors only (DADA is 3DSR's pretraining, not a suite family)."""
    declared = _registry.suite_families()
    assert {"ast", "dsr3d"} <= set(declared) and "dada" not in declared and declared == sorted(declared)
    register_family(TOY_FAMILY, replace=True)
    assert "toy" not in _registry.suite_families()
    register_family(TOY_FAMILY, replace=True, suite=True)
    register_lazy("toy3", "_toy:TOY_FAMILY", suite=True)
    assert _registry.suite_families() == sorted([*declared, "toy", "toy3"])


def test_unknown_name_lists_known_ones() -> None:
    register_family(TOY_FAMILY, replace=True)
    with pytest.raises(ModelRegistryError) as err:
        get_family("patchcore")
    assert "unknown model family 'patchcore'" in str(err.value)
    assert "ast" in err.value.remedy and "toy" in err.value.remedy


def test_second_family_with_same_name_is_refused() -> None:
    register_family(TOY_FAMILY, replace=True)
    register_family(TOY_FAMILY)  # the same object again is harmless
    with pytest.raises(ModelRegistryError, match="already registered"):
        register_family(ToyFamily())


def test_lazy_entry_imports_on_first_use() -> None:
    register_lazy("toy2", "_toy:TOY_FAMILY")
    with pytest.raises(ModelRegistryError, match="named 'toy', registered as 'toy2'"):
        get_family("toy2")
    register_lazy("toy", "_toy:TOY_FAMILY")
    assert get_family("toy") is TOY_FAMILY


def test_broken_lazy_entries_name_the_module() -> None:
    register_lazy("ghost", "engines.models.no_such_family:GHOST")
    with pytest.raises(ModelRegistryError, match=r"engines\.models\.no_such_family, which cannot be imported"):
        get_family("ghost")
    register_lazy("noattr", "_toy:NOT_THERE")
    with pytest.raises(ModelRegistryError, match="defines no NOT_THERE"):
        get_family("noattr")
    with pytest.raises(ModelRegistryError, match="module:attribute"):
        register_lazy("bad", "no_colon")


def test_card_lookup_does_not_import_torch() -> None:
    """The runtime reads cards and scoring files without torch installed in its process."""
    code = (
        "import sys, engines, engines.contract, edge.core.scoring, engines.checkpoint;"
        "engines.list_families();"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
