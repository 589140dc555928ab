"""Export labelled RGB-D frames in the MVTec 3D-AD folder layout (rgb PNG, organised xyz TIFF, gt PNG).

Layout under ``<out>/<class_name>/``: ``train/good``, ``validation/good`` and ``test/good`` with ``rgb/NNN.png`` and
``xyz/NNN.tiff`` (plus ``gt/NNN.png``, all zero, in ``test/good``), and ``test/<defect_type>/{rgb,xyz,gt}``. xyz is
H×W×3 float32 metres in the color camera frame (zeros where depth is missing), computed from color-registered depth
with the SDK-matching ray table, so an anomaly model sees the same geometry as the edge pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
import tifffile
from pydantic import Field, model_validator

from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.frame import Frame, StreamSpec
from edge.core.geometry import ray_table, xyz_from_depth

Split = Literal["train", "validation", "test"]
_SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class MvtecExportError(EdgeError):
    """Frames cannot be exported (unregistered depth, missing ground truth, unwritable output)."""


class MvtecExportConfig(EdgeModel):
    """How frames become MVTec 3D-AD samples."""

    type: Literal["mvtec3d"] = "mvtec3d"
    class_name: str = Field("drum", min_length=1, description="Category folder name under the output directory.")
    train_fraction: float = Field(0.6, ge=0.0, le=1.0, description="Share of good parts put in train/good.")
    validation_fraction: float = Field(0.2, ge=0.0, le=1.0, description="Share of good parts in validation/good.")
    frames_per_part: int = Field(
        1, ge=1, description="Frames the line shows of one part; a run of equal labels is cut into parts this long."
    )
    every_frame: bool = Field(False, description="Export every labelled frame instead of the middle frame per part.")
    overwrite: bool = Field(False, description="Allow writing into an existing, non-empty class folder.")

    @model_validator(mode="after")
    def _fractions_fit(self) -> MvtecExportConfig:
        if self.train_fraction + self.validation_fraction > 1.0 + 1e-9:
            raise ValueError("train_fraction + validation_fraction must not exceed 1 (the rest goes to test)")
        return self


@dataclass
class MvtecExportSummary:
    """Where the dataset went and how many samples each split/type received."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    frames_seen: int = 0
    empty_skipped: int = 0


class MvtecWriter:
    """Streams frames into the layout: parts are buffered (at most ``frames_per_part`` copies), then one sample
    (or every frame) per part is written. Good parts are spread over train/validation/test by largest deficit,
    which is deterministic and keeps every prefix of the run within one sample of the configured fractions."""

    def __init__(self, out_dir: Path, config: MvtecExportConfig, *, source: str = "", seed: int | None = None) -> None:
        self.config = config
        self.root = Path(out_dir) / config.class_name
        if self.root.exists() and any(self.root.iterdir()) and not config.overwrite:
            raise MvtecExportError(
                f"{self.root} already exists and is not empty", "choose another folder or pass overwrite (--overwrite)"
            )
        self.summary = MvtecExportSummary(root=self.root)
        self._source, self._seed = source, seed
        self._spec: StreamSpec | None = None
        self._rays: npt.NDArray[np.float32] | None = None
        self._part: list[Frame] = []
        self._good_parts = 0
        # Good parts per split, apart from sample counts (every_frame writes several samples per part).
        self._good_parts_in: dict[Split, int] = dict.fromkeys(_SPLITS, 0)

    def write(self, frame: Frame) -> None:
        """Take one frame with ground truth; empty frames close the current part and are skipped."""
        self._check(frame)
        self.summary.frames_seen += 1
        truth = frame.truth
        assert truth is not None  # checked above
        if truth.label == "empty":
            self.summary.empty_skipped += 1
            self._flush()
            return
        if self._part:
            head = self._part[0].truth
            assert head is not None
            same = (head.label, head.defect_type) == (truth.label, truth.defect_type)
            if not same or len(self._part) >= self.config.frames_per_part:
                self._flush()
        self._part.append(_copy(frame))

    def close(self) -> MvtecExportSummary:
        """Write the last part and ``dataset.json``; returns the counts."""
        self._flush()
        meta = {
            "format": "mvtec3d-ad",
            "class_name": self.config.class_name,
            "source": self._source or (self._spec.source if self._spec else ""),
            "seed": self._seed,
            "spec": self._spec.to_dict() if self._spec else None,
            "config": self.config.model_dump(),
            "frames_seen": self.summary.frames_seen,
            "empty_skipped": self.summary.empty_skipped,
            "counts": self.summary.counts,
        }
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise MvtecExportError(
                f"cannot write {self.root / 'dataset.json'}: {err.strerror or err}",
                "choose a writable output folder with free space",
            ) from err
        return self.summary

    def _check(self, frame: Frame) -> None:
        if self._spec is None:
            if not frame.spec.depth_aligned_to_color:
                raise MvtecExportError(
                    "the stream's depth is not registered to color (spec.depth_aligned_to_color is False), so xyz "
                    "would not line up with rgb",
                    "play the recording back with align_to_color=True (or use a source that renders aligned depth)",
                )
            self._spec = frame.spec
            self._rays = ray_table(frame.spec.color_intrinsics)
        if frame.truth is None:
            raise MvtecExportError(
                f"frame {frame.sequence} (number {frame.color_frame_number}) has no ground truth",
                "export a synthetic stream, or a recording together with its .labels sidecar",
            )
        if frame.depth.shape != frame.color.shape[:2]:
            raise MvtecExportError(
                f"depth {frame.depth.shape} and color {frame.color.shape} differ in size", "align depth to color"
            )

    def _flush(self) -> None:
        part, self._part = self._part, []
        if not part:
            return
        truth = part[0].truth
        assert truth is not None
        samples = part if self.config.every_frame else [part[len(part) // 2]]
        if truth.label == "good":
            split, kind = self._next_good_split(), "good"
        else:
            split, kind = "test", truth.defect_type or "defect"
        for frame in samples:
            self._write(frame, split, kind)

    def _next_good_split(self) -> Split:
        self._good_parts += 1
        test_fraction = 1.0 - self.config.train_fraction - self.config.validation_fraction
        targets = {
            "train": self.config.train_fraction,
            "validation": self.config.validation_fraction,
            "test": test_fraction,
        }
        split = max(_SPLITS, key=lambda s: targets[s] * self._good_parts - self._good_parts_in[s])
        self._good_parts_in[split] += 1
        return split

    def _write(self, frame: Frame, split: Split, kind: str) -> None:
        truth = frame.truth
        assert truth is not None and self._rays is not None
        counts = self.summary.counts.setdefault(split, {})
        index = counts.get(kind, 0)
        base = self.root / split / kind
        name = f"{index:03d}"
        with_gt = split == "test"
        try:
            for sub in ("rgb", "xyz", "gt") if with_gt else ("rgb", "xyz"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            _imwrite(
                base / "rgb" / f"{name}.png", np.asarray(cv2.cvtColor(frame.color, cv2.COLOR_RGB2BGR), dtype=np.uint8)
            )
            xyz = xyz_from_depth(frame.depth, frame.spec.depth_scale, self._rays)
            # Three interleaved float32 samples per pixel, read back as H×W×3 (photometric stated: tifffile would
            # otherwise switch to separate pages in a future version).
            tifffile.imwrite(base / "xyz" / f"{name}.tiff", xyz, photometric="rgb")
            if with_gt:
                _imwrite(base / "gt" / f"{name}.png", _gt(frame, kind))
        except OSError as err:
            raise MvtecExportError(
                f"cannot write the dataset under {self.root}: {err.strerror or err}",
                "choose a writable output folder with free space",
            ) from err
        counts[kind] = index + 1


def _copy(frame: Frame) -> Frame:
    """Own the pixels: a source may hand out views into a buffer it reuses."""
    return replace(frame, color=frame.color.copy(), depth=frame.depth.copy())


def _gt(frame: Frame, kind: str) -> npt.NDArray[np.uint8]:
    truth = frame.truth
    assert truth is not None
    if kind == "good":
        return np.zeros(frame.color.shape[:2], dtype=np.uint8)
    if truth.defect_mask is None:
        raise MvtecExportError(
            f"defect frame {frame.sequence} (number {frame.color_frame_number}) has no defect mask",
            "export from a synthetic source or a labels sidecar that holds masks",
        )
    return np.where(truth.defect_mask, 255, 0).astype(np.uint8)


def _imwrite(path: Path, image: npt.NDArray[np.uint8]) -> None:
    if not cv2.imwrite(str(path), image):
        raise MvtecExportError(f"cannot write {path}", "choose a writable output folder with free space")


def export_mvtec(
    frames: Iterable[Frame], out_dir: Path, config: MvtecExportConfig, *, source: str = "", seed: int | None = None
) -> MvtecExportSummary:
    """Write every frame of ``frames`` (with ground truth) as an MVTec 3D-AD dataset; see :class:`MvtecWriter`."""
    writer = MvtecWriter(out_dir, config, source=source, seed=seed)
    for frame in frames:
        writer.write(frame)
    return writer.close()
