"""The models under test: loaded from ``edge-train`` output folders, or trained here per crop mode.

``--models`` items are either a folder written by ``edge-train`` (``model.onnx`` + ``scoring.yaml``, and
``model.safetensors`` for the PyTorch parity reference) or a family name (``ast``, ``dsr3d``/``3dsr``), which the
bench trains with ``edge-train`` on each data path, once per crop mode asked for. A trained folder is reused when
its card says it was trained on the same data, ROI, preset and crop mode (so a second run of a study only scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.roi import RoiFile
from edge.core.errors import EdgeError
from edge.core.scoring import load_scoring
from engines._registry import list_families
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
        options = ",".join(f"{k}={v}" for k, v in sorted(self.card.options.items()) if k != "dada")
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

    def argv(self, family: str, mode: str, data: Path, *, roi: Path, out: Path, labels: Path | None) -> list[str]:
        argv = [
            "--model", family, "--preset", self.preset, "--crop", mode, "--data", str(data), "--roi", str(roi),
            "--out", str(out), "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
            "--lr", str(self.lr), "--seed", str(self.seed), "--threads", str(self.threads),
        ]  # fmt: skip
        if labels is not None:
            argv += ["--labels", str(labels)]
        for option in self.options.get(family, []):
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


def train_model(
    family: str,
    mode: str,
    recipe: TrainRecipe,
    *,
    data: Path,
    data_hash: str,
    roi_path: Path,
    roi: RoiFile,
    out: Path,
    labels: Path | None = None,
) -> BenchModel:
    """``edge-train`` for one family and crop mode into ``out`` (reused when it already holds that model)."""
    expect = {"family": family, "preset": recipe.preset, "crop_mode": mode, "data_hash": data_hash}
    expect["roi_version"] = roi.version
    if (done := _reusable(out, expect)) is not None:
        return done
    argv = recipe.argv(family, mode, data, roi=roi_path, out=out, labels=labels)
    if (out / "state").exists():
        argv.append("--resume")  # an interrupted earlier bench: continue its training
    code = train.main(argv)
    if code != 0:
        raise BenchModelError(
            f"edge-train {' '.join(argv)} exited with {code}", "read its message above; fix the data or options"
        )
    return BenchModel(out, card_from_onnx(out / ONNX_FILE))
