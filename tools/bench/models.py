"""The models under test: loaded from ``edge-train`` output folders, or trained here per crop mode.

``--models`` items are either a folder written by ``edge-train`` (``model.onnx`` + ``scoring.yaml``, and
``model.safetensors`` for the PyTorch parity reference) or a family name (``ast``, ``dsr3d``/``3dsr``), which the
bench trains with ``edge-train`` on each data path, once per crop mode asked for. A trained folder is reused when
its card says it was trained on the same data, ROI, preset and crop mode (so a second run of a study only scores).

A family that declares pretraining dependencies (``engines._registry.pretrained_from``, e.g. 3DSR's
``{"dada": "dada"}``) gets them trained first, once per data path and shared by both crop modes: the dependency
family with the same preset, epochs and data, crop mode ``full``, and the dependent's options less the dependency
keys (plus its own ``--option dada:KEY=VALUE``); its ``model.safetensors`` is passed as ``--option dada=<path>``.
A dependent folder older than its dependency's checkpoint is trained afresh (it was trained on older weights).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.roi import RoiFile
from edge.core.errors import EdgeError
from edge.core.scoring import load_scoring
from engines._registry import list_families, pretrained_from
from engines.contract import ModelCard
from engines.export import card_from_onnx
from tools import train

ALIASES = {"3dsr": "dsr3d"}  # the papers' name for the family
ONNX_FILE, SCORING_FILE, CHECKPOINT_FILE = "model.onnx", "scoring.yaml", "model.safetensors"


class BenchModelError(EdgeError):
    """A model under test cannot be loaded or trained."""


@dataclass(frozen=True, slots=True)
class BenchModel:
    """One trained model: its folder and card. ``name`` is what tables and figures call it."""

    run_dir: Path
    card: ModelCard

    @property
    def precision(self) -> str:
        """`` int8`` for a quantised model (edge-quantize), empty for fp32: names tell the two apart."""
        return "" if self.card.precision == "fp32" else f" {self.card.precision}"

    @property
    def name(self) -> str:
        return f"{self.card.family}/{self.card.preset}{self.precision} {self.card.crop_mode}"

    @property
    def study_key(self) -> str:
        """Models that differ only in crop mode share this key: the foreground study pairs them."""
        skip = pretrained_from(self.card.family)  # checkpoint paths differ per run; the study pairs on the rest
        options = ",".join(f"{k}={v}" for k, v in sorted(self.card.options.items()) if k not in skip)
        return f"{self.card.family}/{self.card.preset}{self.precision}" + (f" ({options})" if options else "")

    @property
    def onnx(self) -> Path:
        return self.run_dir / ONNX_FILE

    @property
    def scoring(self) -> Path:
        return self.run_dir / SCORING_FILE

    @property
    def checkpoint(self) -> Path | None:
        path = self.run_dir / CHECKPOINT_FILE
        return path if path.is_file() else None


def load_model_dir(path: Path) -> BenchModel:
    """An ``edge-train`` output folder; refuses one without its ONNX or scoring file (the daemon needs both)."""
    for name in (ONNX_FILE, SCORING_FILE):
        if not (path / name).is_file():
            raise BenchModelError(
                f"{path} has no {name}", "pass a folder written by edge-train (model.onnx + scoring.yaml)"
            )
    load_scoring(path / SCORING_FILE).check_artefact(path / ONNX_FILE)
    return BenchModel(path, card_from_onnx(path / ONNX_FILE))


def family_name(item: str) -> str | None:
    """The registry name when ``item`` names a model family, else None (then it is a folder)."""
    name = ALIASES.get(item.lower(), item.lower())
    return name if name in list_families() else None


@dataclass(frozen=True, slots=True)
class TrainRecipe:
    """How the bench calls ``edge-train`` for a family it is asked to train."""

    preset: str = "edge"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    options: dict[str, list[str]] = field(default_factory=dict)  # family → ["KEY=VALUE", …]

    def argv(
        self,
        family: str,
        mode: str,
        data: Path,
        *,
        roi: Path | None,
        out: Path,
        labels: Path | None,
        options: Sequence[str] | None = None,
    ) -> list[str]:
        argv = [
            "--model", family, "--preset", self.preset, "--crop", mode, "--data", str(data),
            "--out", str(out), "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
            "--lr", str(self.lr), "--seed", str(self.seed), "--threads", str(self.threads),
        ]  # fmt: skip
        if roi is not None:
            argv += ["--roi", str(roi)]
        if labels is not None:
            argv += ["--labels", str(labels)]
        for option in self.options.get(family, []) if options is None else options:
            argv += ["--option", option]
        return argv


def _reusable(out: Path, expect: dict[str, Any]) -> BenchModel | None:
    """The folder's model when it was trained with exactly these settings (card fields) and is complete."""
    if not (out / ONNX_FILE).is_file() or not (out / SCORING_FILE).is_file():
        return None
    try:
        model = load_model_dir(out)
    except EdgeError:
        return None
    card = model.card.to_dict()
    return model if all(card.get(k) == v for k, v in expect.items()) else None


def _edge_train(argv: list[str], out: Path) -> BenchModel:
    if (out / "state").exists():
        argv.append("--resume")  # an interrupted earlier bench: continue its training
    code = train.main(argv)
    if code != 0:
        raise BenchModelError(
            f"edge-train {' '.join(argv)} exited with {code}", "read its message above; fix the data or options"
        )
    return BenchModel(out, card_from_onnx(out / ONNX_FILE))


def train_model(
    family: str,
    mode: str,
    recipe: TrainRecipe,
    *,
    data: Path,
    data_hash: str,
    roi_path: Path | None,
    roi: RoiFile | None,
    out: Path,
    labels: Path | None = None,
) -> BenchModel:
    """``edge-train`` for one family and crop mode into ``out`` (reused when it already holds that model), after
    the family's pretraining dependencies (into ``<out's folder>/<dependency>-<preset>``, reused likewise)."""
    roi_version = roi.version if roi is not None else ""
    options = list(recipe.options.get(family, []))
    newest_dependency = 0  # mtime (ns) of the newest dependency checkpoint
    for key, dependency in pretrained_from(family).items():
        dep_out = out.parent / f"{dependency}-{recipe.preset}"
        keys = {o.partition("=")[0] for o in recipe.options.get(dependency, [])}
        inherited = [o for o in options if o.partition("=")[0] not in {*pretrained_from(family), *keys}]
        dep_options = inherited + recipe.options.get(dependency, [])
        dep_expect = {"family": dependency, "preset": recipe.preset, "crop_mode": "full", "data_hash": data_hash}
        dep_expect["roi_version"] = roi_version
        if _reusable(dep_out, dep_expect) is None:
            argv = recipe.argv(dependency, "full", data, roi=roi_path, out=dep_out, labels=labels, options=dep_options)
            _edge_train(argv, dep_out)
        checkpoint = (dep_out / CHECKPOINT_FILE).resolve()
        newest_dependency = max(newest_dependency, checkpoint.stat().st_mtime_ns)
        options = [o for o in options if o.partition("=")[0] != key]
        options.append(f"{key}={checkpoint}")
    expect = {"family": family, "preset": recipe.preset, "crop_mode": mode, "data_hash": data_hash}
    expect["roi_version"] = roi_version
    if (done := _reusable(out, expect)) is not None:
        own = out / CHECKPOINT_FILE
        if not newest_dependency or (own.is_file() and own.stat().st_mtime_ns > newest_dependency):
            return done
        # trained on an older checkpoint of a dependency (it was trained again since): train afresh
        shutil.rmtree(out / "state", ignore_errors=True)
    argv = recipe.argv(family, mode, data, roi=roi_path, out=out, labels=labels, options=options)
    return _edge_train(argv, out)
