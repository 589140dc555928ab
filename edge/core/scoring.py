"""The scoring file (``scoring.yaml``): raw model score → normalised score → OK/NG, kept outside the model graph.

Models emit raw image scores (``engines/contract.py``). Their scale differs per family, preset and training run, so
each trained model ships a scoring file fitted on NORMAL validation samples:

- normalisation (``zscore``): ``z = (raw − mean) / std`` over the normal validation scores. A z of 3 reads the same
  for every model: three standard deviations above a typical good part. (A quantile mapping would be bounded but
  flattens the tail where decisions are made; z keeps distances between bad parts readable.)
- threshold on z, method ``normal_quantile``: the empirical ``1 − false_alarm_rate`` quantile of the normal z
  scores (``higher`` interpolation: an observed score, so at most that share of the fitting samples lies above
  it; with fewer than ``1 / false_alarm_rate`` samples it is their maximum) plus ``margin`` (in standard
  deviations) for the parts the validation set never showed. ``f1_max`` refits it on labelled scores.

A part is NG when ``z > threshold``; a non-finite raw score (a faulty model or input) is NG too: the line must not
pass a part it could not judge. Changing the threshold edits this file only; the model is never re-exported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import yaml
from pydantic import Field

from edge.core.config import EdgeModel, load_versioned_yaml
from edge.core.errors import EdgeError

if TYPE_CHECKING:
    from engines.contract import ModelCard

SCHEMA_VERSION: Final = 1
Verdict = Literal["OK", "NG"]


class ScoringError(EdgeError):
    """A scoring file is missing, malformed, cannot be fitted, or belongs to another model."""


class ModelIdentity(EdgeModel):
    """Which trained model the file belongs to: loading it beside another artefact is refused."""

    type: Literal["model_identity"] = "model_identity"
    family: str = Field(min_length=1, description="model family (registry name), e.g. ast")
    preset: str = Field(min_length=1, description="preset of the family, e.g. edge")
    input_size: int = Field(gt=0, description="side of the square model input in pixels")
    crop_mode: Literal["foreground", "full", "image"] = Field(description="crop mode the model was trained with")
    roi_version: str = Field(default="", description="content hash of the roi.yaml used in training")
    artefact: str = Field(description="file name of the scored artefact (ONNX file or checkpoint)")
    artefact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of that file")

    @classmethod
    def of(cls, card: ModelCard, artefact: Path) -> ModelIdentity:
        """The identity of the model file ``artefact`` (its name and hash) made with ``card``."""
        return cls(
            family=card.family,
            preset=card.preset,
            input_size=card.input_size,
            crop_mode=card.crop_mode,
            roi_version=card.roi_version,
            artefact=artefact.name,
            artefact_sha256=file_sha256(artefact),
        )


class ZScoreNormalisation(EdgeModel):
    """``z = (raw − mean) / std`` from the normal validation scores."""

    type: Literal["zscore"] = "zscore"
    mean: float = Field(description="mean raw image score of the normal fitting samples")
    std: float = Field(gt=0, description="standard deviation of those scores (floored, never 0)")

    def apply(self, raw: float) -> float:
        return (raw - self.mean) / self.std


class Threshold(EdgeModel):
    """The decision boundary on the normalised score: NG when ``z > value``."""

    type: Literal["threshold"] = "threshold"
    value: float = Field(description="threshold on the normalised score")
    method: Literal["normal_quantile", "f1_max", "manual"] = Field(description="how the value was chosen")
    false_alarm_rate: float | None = Field(
        default=None, gt=0, lt=1, description="normal_quantile: target share of good parts flagged NG"
    )
    margin: float = Field(default=0.0, ge=0, description="normal_quantile: added to the quantile (std units)")


class FittedOn(EdgeModel):
    """What the normalisation and threshold were fitted on."""

    type: Literal["fitted_on"] = "fitted_on"
    n_samples: int = Field(ge=2, description="normal samples used for the normalisation")
    data_hash: str = Field(default="", description="hash of the data set (engines.datasets)")
    split: str = Field(default="validation/good", description="which samples")
    raw_min: float = Field(description="smallest raw score seen")
    raw_max: float = Field(description="largest raw score seen")
    n_labelled: int = Field(default=0, ge=0, description="f1_max: labelled samples the threshold was refitted on")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ScoringFile(EdgeModel):
    """Contents of ``scoring.yaml``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelIdentity
    normalisation: ZScoreNormalisation
    threshold: Threshold
    fitted_on: FittedOn

    def check_artefact(self, path: Path) -> None:
        """Refuse to score with a model file other than the one this file was fitted for."""
        digest = file_sha256(path)
        if digest != self.model.artefact_sha256:
            raise ScoringError(
                f"scoring file was fitted for {self.model.artefact} (sha256 {self.model.artefact_sha256[:12]}…), "
                f"{path} has sha256 {digest[:12]}…",
                "use the scoring.yaml written with this model, or refit it (edge-train writes both)",
            )


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed (model files can be hundreds of MB)."""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise ScoringError(
            f"cannot read {path}: {err.strerror or err}", "check that the file exists and this user may read it"
        ) from None
    return h.hexdigest()


def _finite(scores: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64).ravel()
    if a.size < 2:
        raise ScoringError(f"{what}: {a.size} score(s), at least 2 are needed", "add normal validation samples")
    if not np.all(np.isfinite(a)):
        raise ScoringError(f"{what}: {int((~np.isfinite(a)).sum())} non-finite score(s)", "check the model output")
    return a


def fit_scoring(
    raw_normal_scores: Sequence[float] | np.ndarray,
    model: ModelIdentity,
    *,
    data_hash: str = "",
    false_alarm_rate: float = 0.01,
    margin: float = 0.5,
    split: str = "validation/good",
) -> ScoringFile:
    """Fit z-score normalisation and the ``normal_quantile`` threshold on raw scores of normal samples."""
    raw = _finite(raw_normal_scores, "fit_scoring")
    mean, std = float(raw.mean()), float(raw.std(ddof=1))
    std = max(std, 1e-6 * max(abs(mean), 1.0), 1e-12)  # identical scores would divide by zero
    norm = ZScoreNormalisation(mean=mean, std=std)
    z = (raw - mean) / std
    q = float(np.quantile(z, 1.0 - false_alarm_rate, method="higher"))
    return ScoringFile(
        model=model,
        normalisation=norm,
        threshold=Threshold(
            value=q + margin, method="normal_quantile", false_alarm_rate=false_alarm_rate, margin=margin
        ),
        fitted_on=FittedOn(
            n_samples=int(raw.size),
            data_hash=data_hash,
            split=split,
            raw_min=float(raw.min()),
            raw_max=float(raw.max()),
        ),
    )


def refit_threshold_f1(scoring: ScoringFile, raw_scores: Sequence[float], labels: Sequence[int]) -> ScoringFile:
    """Move the threshold to the F1-maximising point on labelled scores (1 = defect); normalisation is kept."""
    raw = _finite(raw_scores, "refit_threshold_f1")
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.shape != raw.shape or not (np.any(y == 1) and np.any(y == 0)):
        raise ScoringError(
            f"refit needs one label per score with both classes (got {raw.size} scores, labels {sorted(set(y))})",
            "pass scores of good and defective samples with labels 0/1",
        )
    z = np.sort((raw - scoring.normalisation.mean) / scoring.normalisation.std)
    ys = y[np.argsort((raw - scoring.normalisation.mean) / scoring.normalisation.std)]
    # Threshold between z[i-1] and z[i]: samples i.. are NG. Candidates: below all, between neighbours.
    cut = np.concatenate([[z[0] - 1.0], (z[:-1] + z[1:]) / 2])
    tp = np.cumsum(ys[::-1])[::-1]  # defects at index ≥ i
    flagged = np.arange(z.size, 0, -1)
    f1 = 2 * tp / (flagged + int(ys.sum()))
    best = int(np.argmax(f1))
    data = scoring.model_dump()
    data["threshold"] = {"value": float(cut[best]), "method": "f1_max", "false_alarm_rate": None, "margin": 0.0}
    data["fitted_on"]["n_labelled"] = int(raw.size)
    return ScoringFile.model_validate(data)


class Scorer:
    """Applies a scoring file to raw image scores (the daemon's and the bench's last step)."""

    def __init__(self, scoring: ScoringFile) -> None:
        self.scoring = scoring
        self._mean = scoring.normalisation.mean
        self._std = scoring.normalisation.std
        self._thr = scoring.threshold.value

    def normalise(self, raw_image_score: float) -> float:
        return (float(raw_image_score) - self._mean) / self._std

    def score(self, raw_image_score: float) -> tuple[float, Verdict]:
        """(normalised score, verdict); NG when it exceeds the threshold or is not finite."""
        z = self.normalise(raw_image_score)
        return z, "OK" if math.isfinite(z) and z <= self._thr else "NG"


def save_scoring(scoring: ScoringFile, path: Path) -> None:
    """Write ``scoring.yaml`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(scoring.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        tmp.replace(path)
    except OSError as err:
        raise ScoringError(f"cannot write {path}: {err.strerror or err}", "choose a writable folder") from None


def load_scoring(path: Path) -> ScoringFile:
    """Read and validate ``scoring.yaml``; every failure names the file and the bad key."""
    return load_versioned_yaml(
        Path(path),
        ScoringFile,
        what="scoring file",
        version=SCHEMA_VERSION,
        error=ScoringError,
        create="edge-train writes scoring.yaml beside the model",
        recreate="refit it with edge-train",
    )
