"""The bench's data inputs: labelled recordings and MVTec 3D-AD folders, read frame by frame with their truth.

The bench feeds whole frames to the product's own :class:`edge.inspect.Inspector` (crop → engine → scoring), so it
needs what :mod:`engines.datasets` builds on: the frame as the camera gave it and its defect mask. Reading is timed
here, because decoding a recording or a PNG/TIFF pair is the bench's first latency stage.

Which frames are evaluated (``split``): ``test`` is an MVTec folder's test split or, for a recording, the frames of
the parts ``engines.datasets.recording_splits`` put into the test split (what ``edge-train`` never saw);
``all`` is every labelled frame with a drum.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from drivers.errors import EndOfStreamError
from drivers.labels import LabelSet, labels_dir_for, labels_for_recording
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from engines.datasets import (
    RECORDING_SUFFIXES,
    SPLITS,
    MvtecFolder,
    SampleRef,
    recording_hash,
    recording_parts,
    recording_splits,
)
from engines.scene import SceneFrame

Split = Literal["test", "all"]


class BenchInputError(EdgeError):
    """A data path cannot be benched (missing, not a recording or MVTec folder, no labels)."""


@dataclass(frozen=True, slots=True)
class LabelledFrame:
    """One frame to score, with its truth (``gt``: H×W defect mask, None when the frame has none)."""

    frame: Frame | SceneFrame  # a SceneFrame from a folder without a camera stream (data from outside)
    defect_type: str  # "good" or the defect type
    gt: npt.NDArray[np.bool_] | None
    source: str  # "<file>#<frame number>" or "mvtec:<split>/<type>/<stem>"
    read_ms: float


class BenchInput(ABC):
    """One data path: its identity, the frames of a split, and how many there are (for the progress bar)."""

    path: Path
    kind: str

    @property
    @abstractmethod
    def data_hash(self) -> str:
        """The hash ``edge-train`` records in a model card trained on this data."""

    @abstractmethod
    def count(self, split: Split) -> dict[str, int]:
        """Defect type → number of frames of ``split``."""

    @abstractmethod
    def frames(self, split: Split) -> Iterator[LabelledFrame]:
        """The frames of ``split`` in order, read now (errors surface as :class:`EdgeError` while iterating)."""


class RecordingInput(BenchInput):
    """A ``.db3``/``.bag`` with its ``<recording>.labels`` sidecar."""

    kind = "recording"

    def __init__(self, path: Path, labels_dir: Path | None = None) -> None:
        self.path = path
        self.labels_dir = labels_dir or labels_dir_for(path)
        if not (self.labels_dir / "labels.jsonl").is_file():
            raise BenchInputError(
                f"{path} has no labels sidecar at {self.labels_dir}",
                "record with edge-record (it writes <recording>.labels), or pass --labels DIR",
            )
        self.labels: LabelSet = labels_for_recording(path, self.labels_dir)
        self.split_of = recording_splits(self.labels)

    @property
    def data_hash(self) -> str:
        return recording_hash(self.path, self.labels_dir)

    def _wanted(self, split: Split) -> set[int]:
        return {n for n, s in self.split_of.items() if split in ("all", s)}

    def count(self, split: Split) -> dict[str, int]:
        wanted = self._wanted(split)
        out: dict[str, int] = {}
        for kind, numbers in recording_parts(self.labels):
            n = sum(1 for x in numbers if x in wanted)
            if n:
                out[kind] = out.get(kind, 0) + n
        return out

    def frames(self, split: Split) -> Iterator[LabelledFrame]:
        """Played back with depth aligned to colour; at the end, the frame numbers must be the labelled ones."""
        wanted = self._wanted(split)
        source = PlaybackSource(PlaybackSourceConfig(path=self.path, align_to_color=True))
        source.open()
        seen: list[int] = []
        try:
            timeout = source.default_timeout_s()
            while True:
                t0 = time.perf_counter_ns()
                try:
                    frame = source.read(timeout)
                except EndOfStreamError:
                    break
                read_ms = (time.perf_counter_ns() - t0) / 1e6
                number = frame.color_frame_number
                seen.append(number)
                truth = self.labels.truth(number, frame.device_ts_ns)
                if number not in wanted or truth.label == "empty":
                    continue
                kind = "good" if truth.label == "good" else truth.defect_type or "defect"
                yield LabelledFrame(
                    replace(frame, truth=truth), kind, truth.defect_mask, f"{self.path.name}#{number}", read_ms
                )
        finally:
            source.close()
        self.labels.check_frame_numbers(seen)


class MvtecInput(BenchInput):
    """An MVTec 3D-AD class folder: exported by ``edge-record --mvtec`` (it stores the stream the ROI needs), or from
    outside (no ``dataset.json``: cropped by ``engines.scene.SceneCropper``, never with the ROI; ``public``)."""

    kind = "mvtec"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = MvtecFolder(path)
        self.public = self.folder.public

    @property
    def data_hash(self) -> str:
        return self.folder.data_hash()

    def _refs(self, split: Split) -> list[SampleRef]:
        return [r for s in SPLITS if split in ("all", s) for r in self.folder.refs(s)]

    def count(self, split: Split) -> dict[str, int]:
        out: dict[str, int] = {}
        for ref in self._refs(split):
            out[ref.defect_type] = out.get(ref.defect_type, 0) + 1
        return out

    def frames(self, split: Split) -> Iterator[LabelledFrame]:
        for ref in self._refs(split):
            t0 = time.perf_counter_ns()
            frame = self.folder.read(ref)
            gt = self.folder.mask(ref)  # > 0: MVTec stores class ids in defect pixels
            read_ms = (time.perf_counter_ns() - t0) / 1e6
            source = f"mvtec:{ref.split}/{ref.defect_type}/{ref.rgb.stem}"
            yield LabelledFrame(frame, ref.defect_type, gt, source, read_ms)


def open_input(path: Path, labels_dir: Path | None = None) -> BenchInput:
    """A recording (by suffix) or an MVTec folder; every refusal names the path and what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise BenchInputError(f"{path} does not exist", "pass a labelled .db3/.bag recording or an MVTec folder")
    if path.suffix in RECORDING_SUFFIXES:
        return RecordingInput(path, labels_dir)
    if path.is_file():
        raise BenchInputError(
            f"{path} is neither a recording ({', '.join(RECORDING_SUFFIXES)}) nor a folder",
            "pass a labelled .db3/.bag recording or an MVTec 3D-AD folder",
        )
    return MvtecInput(path)
