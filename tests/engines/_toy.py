"""A small model family implementing the contract, so framework tests do not depend on a real model.

``toy``: a two-layer convolutional autoencoder over rgb+xyz; the anomaly map is its per-pixel reconstruction error
inside the mask and the image score the map's maximum. It trains with Adam through the shared harness
(``engines/training.py``: its loop and its one resume format), one pass over the given batches per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calibration.fit import frame_from_axis
from calibration.roi import CameraBinding, CylinderShape, RoiFile, save_roi
from drivers.mvtec import MvtecExportConfig, export_mvtec
from drivers.synthetic import SyntheticSource, SyntheticSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from edge.crop import IMAGENET_MEAN, IMAGENET_STD
from engines import training
from engines.contract import CropMode, FitSettings, ModelCard, TrainContext


class MemoryContext:
    """A real TrainContext keeping every progress report and saved state in memory: every reported metric must be
    finite and every saved state the one resume format (name → tensor)."""

    def __init__(self, resume: tuple[str, int, dict[str, Any]] | None = None) -> None:
        self.resume = resume
        self.reports: list[tuple[str, int, int]] = []
        self.saved: list[tuple[str, int, dict[str, Any]]] = []

    def progress(self, phase: str, done: int, total: int, **metrics: float) -> None:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        self.reports.append((phase, done, total))

    def save_state(self, phase: str, epoch: int, state: Mapping[str, Any]) -> None:
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        self.saved.append((phase, epoch, dict(state)))

    def resume_state(self) -> tuple[str, int, dict[str, Any]] | None:
        return self.resume


PRESETS: dict[str, dict[str, Any]] = {"tiny": {"input_size": 32, "hidden": 8}, "edge": {"input_size": 48, "hidden": 16}}


class ToyNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.enc = nn.Conv2d(6, hidden, 3, padding=1)
        self.dec = nn.Conv2d(hidden, 6, 3, padding=1)

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([rgb, xyz * 10.0], dim=1)
        err = ((self.dec(torch.relu(self.enc(x))) - x) ** 2).mean(dim=1, keepdim=True) * mask
        return err, err.flatten(1).amax(dim=1)


class ToyFamily:
    """The contract's ModelFamily, as small as it gets."""

    name = "toy"
    presets: Mapping[str, Mapping[str, Any]] = PRESETS

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        if preset not in PRESETS:
            raise ValueError(f"unknown toy preset {preset!r}")
        return ModelCard(
            family=self.name,
            preset=preset,
            input_size=int(PRESETS[preset]["input_size"]),
            inputs=("rgb", "xyz", "mask"),
            crop_mode=crop_mode,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            options=dict(options),
        )

    def build(self, card: ModelCard) -> nn.Module:
        return ToyNet(int(PRESETS[card.preset]["hidden"]))

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Adam on the mean map, one pass over ``train`` per epoch, with the shared harness's state and loop."""
        training.start(settings, EdgeError)

        def step(batch: Mapping[str, Any]) -> torch.Tensor:
            amap, _ = model(rgb=batch["rgb"], xyz=batch["xyz"], mask=batch["mask"])
            loss: torch.Tensor = amap.mean()
            return loss

        nets = {"model": model}
        training.fit_one_phase(
            model, "toy", nets, settings, context, batches=lambda _: train, step=step, error=EdgeError
        )


TOY_FAMILY = ToyFamily()


def synthetic_frames(n: int, seed: int = 3) -> list[Frame]:
    """A short synthetic line at 160×120, one frame per part (every frame shows a drum)."""
    src = SyntheticSource(
        SyntheticSourceConfig(seed=seed, n_frames=n, width=160, height=120, defect_rate=0.3, clutter=0.5)
    )
    src.open()
    try:
        return [src.read(1.0) for _ in range(n)]
    finally:
        src.close()


def roi_around(frame: Frame) -> RoiFile:
    """An ROI built by hand around the frame's true drum (a cylinder on its axis, 1 cm margin)."""
    assert frame.truth is not None and frame.truth.drum is not None
    drum = frame.truth.drum
    pose = frame_from_axis(np.asarray(drum.center), np.asarray(drum.axis))
    return RoiFile(
        camera=CameraBinding.from_spec(frame.spec),
        T_camera_roi=pose.tolist(),
        shape=CylinderShape(radius_m=drum.radius_m, length_m=drum.length_m),
        margin_m=0.01,
    )


def make_mvtec(tmp: Path, n: int = 16) -> tuple[Path, Path, list[Frame]]:
    """A tiny MVTec export of the synthetic line and its roi.yaml: (class folder, roi path, frames)."""
    frames = synthetic_frames(n)
    export_mvtec(frames, tmp / "mvtec", MvtecExportConfig(class_name="drum"), seed=3)
    roi_path = tmp / "roi.yaml"
    save_roi(roi_around(frames[0]), roi_path)
    return tmp / "mvtec" / "drum", roi_path, frames
