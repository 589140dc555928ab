"""Model families by name: registered objects, plus lazy entries imported only when their name is asked for.

Looking a family up never imports torch by itself; only a lazy entry's module (the family's implementation) may.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import cast

from edge.core.errors import EdgeError
from engines.contract import ModelFamily


class ModelRegistryError(EdgeError):
    """A model family name is unknown, or its implementation cannot be imported."""


_FAMILIES: dict[str, ModelFamily] = {}
# name → "module:attribute" of a module-level ModelFamily object, imported on first use.
_LAZY: dict[str, str] = {
    "ast": "engines.models.ast:AST_FAMILY",
    "baad": "engines.models.baad:BAAD_FAMILY",
    "dada": "engines.models.dada:DADA_FAMILY",
    "dsr3d": "engines.models.dsr3d:DSR3D_FAMILY",
    "shape_guided": "engines.models.shape_guided:SHAPE_GUIDED_FAMILY",
}
# Families the accuracy suite (``python -m tools.benchmarks.accuracy --suite``) trains by default: the detectors.
# A helper such as DADA (trained only as another family's pretraining dependency) is not one.
_SUITE: set[str] = {"ast", "baad", "dsr3d", "shape_guided"}
# The crop modes the accuracy suite trains a family in when it declares none (``ModelFamily.suite_modes``): the
# foreground study's pair, the paper's Original (``full``) and Foreground-Only (``foreground``).
ROI_STUDY_MODES: tuple[str, ...] = ("full", "foreground")


def register_family(family: ModelFamily, *, replace: bool = False, suite: bool = False) -> None:
    """Make ``family`` available under ``family.name``; a second family with the same name is an error. ``suite``:
    the accuracy suite trains it by default (:func:`suite_families`)."""
    name = family.name
    known = _FAMILIES.get(name)
    if known is not None and known is not family and not replace:
        raise ModelRegistryError(
            f"a model family named {name!r} is already registered ({type(known).__qualname__})",
            "give the new family another name, or pass replace=True to override it deliberately",
        )
    _FAMILIES[name] = family
    if suite:
        _SUITE.add(name)


def register_lazy(name: str, target: str, *, suite: bool = False) -> None:
    """Register ``name`` as ``"module:attribute"``, imported when the family is first asked for; ``suite``: the
    accuracy suite trains it by default (:func:`suite_families`)."""
    if ":" not in target:
        raise ModelRegistryError(
            f"lazy family target {target!r} is not of the form 'module:attribute'", "write it as pkg.mod:OBJECT"
        )
    _LAZY[name] = target
    if suite:
        _SUITE.add(name)


def list_families() -> list[str]:
    """Names of every family that can be asked for (registered or lazy), sorted."""
    return sorted(set(_FAMILIES) | set(_LAZY))


def suite_families() -> list[str]:
    """Names of the families the accuracy suite trains by default (declared here, no module imported), sorted."""
    return sorted(_SUITE & set(list_families()))


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; a lazy entry's module is imported now (it may import torch)."""
    family = _FAMILIES.get(name)
    if family is not None:
        return family
    target = _LAZY.get(name)
    if target is None:
        raise ModelRegistryError(
            f"unknown model family {name!r}", f"choose one of: {', '.join(list_families()) or '(none registered)'}"
        )
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelRegistryError(
            f"model family {name!r} lives in {module_name}, which cannot be imported ({err})",
            "install the training extra (pip install -e '.[train]') or check that the module exists",
        ) from err
    family = getattr(module, attr, None)
    if family is None:
        raise ModelRegistryError(
            f"{module_name} defines no {attr}, the object registered for model family {name!r}",
            "fix the lazy entry in engines/_registry.py or the family module",
        )
    if getattr(family, "name", None) != name:
        raise ModelRegistryError(
            f"{target} is named {getattr(family, 'name', None)!r}, registered as {name!r}",
            "make the family's name match its registry entry",
        )
    _FAMILIES[name] = family
    return cast(ModelFamily, family)  # getattr gives Any; checked above


def pretrained_from(family: ModelFamily | str) -> dict[str, str]:
    """The family's declared pretraining dependencies: option name → family (``ModelFamily.pretrained_from``).

    Empty for a family that declares none, and for a name no family answers to (a folder's card of a family this
    build does not know). Asking by name imports the family's module (it may import torch).
    """
    if isinstance(family, str):
        try:
            family = get_family(family)
        except ModelRegistryError:
            return {}
    declared: Mapping[str, str] = getattr(family, "pretrained_from", None) or {}
    return {str(k): str(v) for k, v in declared.items()}


def suite_modes(family: ModelFamily | str) -> tuple[str, ...]:
    """The crop modes the accuracy suite trains the family in (``ModelFamily.suite_modes``), by default
    :data:`ROI_STUDY_MODES`; BAAD declares ``("image",)``: it learns its own foreground and runs on the whole image.
    Asking by name imports the family's module."""
    if isinstance(family, str):
        family = get_family(family)
    declared: tuple[str, ...] | None = getattr(family, "suite_modes", None)
    return tuple(declared) if declared else ROI_STUDY_MODES
