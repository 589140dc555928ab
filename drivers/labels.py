"""The labels sidecar of a recording: per-frame ground truth and masks in ``<recording>.labels/`` beside it.

Layout: ``meta.json`` (optional: what produced the frames, e.g. the synthetic settings); ``labels.jsonl`` (one JSON
object per frame, in recording order: sequence, color_frame_number, device_ts_ns, label, defect_type, drum pose or
null, mask file names); ``masks/<sequence:06d>.png`` (defect mask, 0/255, only for frames with a defect) and
``drum_masks/<sequence:06d>.png`` (visible drum, when the frame has one).
A RealSense recording cannot carry labels, and playback returns frames in recording order with their recorded
frame numbers, so labels are keyed by ``color_frame_number``.

Binding: ``recording.json`` (written by ``edge-record`` once the recording is complete) names the recording the
labels belong to: its sha256, size, frame count and first/last device timestamps. :func:`labels_for_recording`
refuses labels whose binding names other bytes, and a sidecar without one (written before binding existed: record it
again, the settings are in ``meta.json``); while frames are matched, each frame's device timestamp must equal the
labelled one (within :data:`DEVICE_TS_TOLERANCE_NS`) as well as its frame number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from drivers.errors import RecordingError
from edge.core.frame import DrumPose, Frame, GroundTruth, defect_type_problem
from edge.core.scoring import file_sha256

LABELS_FILE = "labels.jsonl"
META_FILE = "meta.json"
BINDING_FILE = "recording.json"
BINDING_SCHEMA_VERSION = 1
# Device timestamps go through the SDK as float milliseconds; a recording played back returns them to the nanosecond
# (tests/drivers/test_recorder.py), so the tolerance only absorbs the float rounding of long recordings.
DEVICE_TS_TOLERANCE_NS = 1000
_LABELS: tuple[str, ...] = ("good", "defect", "empty")


class LabelsError(RecordingError):
    """A labels sidecar is missing, malformed, or does not belong to the frames it is applied to."""


def labels_dir_for(recording: Path) -> Path:
    """``drums.db3`` → ``drums.db3.labels`` (the sidecar sits beside the recording)."""
    recording = Path(recording)
    return recording.with_name(recording.name + ".labels")


@dataclass(frozen=True, slots=True)
class FrameLabel:
    """One line of ``labels.jsonl``; mask names are relative to the sidecar directory."""

    sequence: int
    color_frame_number: int
    device_ts_ns: int
    label: Literal["good", "defect", "empty"]
    defect_type: str | None  # free text, see edge.core.frame.defect_type_problem
    drum: DrumPose | None
    defect_mask: str | None
    drum_mask: str | None

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "sequence": self.sequence,
            "color_frame_number": self.color_frame_number,
            "device_ts_ns": self.device_ts_ns,
            "label": self.label,
            "defect_type": self.defect_type,
            "drum": self.drum.to_dict() if self.drum else None,
            "defect_mask": self.defect_mask,
            "drum_mask": self.drum_mask,
        }
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> FrameLabel:
        d = json.loads(line)
        if d["label"] not in _LABELS:
            raise ValueError(f"unknown label {d['label']!r} (good, defect or empty)")
        if d["defect_type"] is not None and (why := defect_type_problem(d["defect_type"])) is not None:
            raise ValueError(why)
        return cls(
            sequence=int(d["sequence"]),
            color_frame_number=int(d["color_frame_number"]),
            device_ts_ns=int(d["device_ts_ns"]),
            label=d["label"],
            defect_type=d["defect_type"],
            drum=DrumPose.from_dict(d["drum"]) if d["drum"] is not None else None,
            defect_mask=d.get("defect_mask"),
            drum_mask=d.get("drum_mask"),
        )


def _write_mask(path: Path, mask: npt.NDArray[np.bool_]) -> None:
    if not cv2.imwrite(str(path), np.where(mask, 255, 0).astype(np.uint8)):
        raise LabelsError(f"cannot write the mask {path}", "check that the directory is writable and has space")


def _read_mask(path: Path) -> npt.NDArray[np.bool_]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LabelsError(f"cannot read the mask {path}", "the labels sidecar is incomplete: export it again")
    return img > 0


@dataclass(frozen=True, slots=True)
class RecordingBinding:
    """``recording.json``: the recording a sidecar belongs to (its name is informative; its bytes decide)."""

    recording: str
    size_bytes: int
    sha256: str
    frames: int
    first_device_ts_ns: int
    last_device_ts_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": BINDING_SCHEMA_VERSION,
            "recording": self.recording,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "frames": self.frames,
            "first_device_ts_ns": self.first_device_ts_ns,
            "last_device_ts_ns": self.last_device_ts_ns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecordingBinding:
        if d.get("schema_version") != BINDING_SCHEMA_VERSION:
            raise ValueError(f"schema_version {d.get('schema_version')!r} (this build reads {BINDING_SCHEMA_VERSION})")
        return cls(
            recording=str(d["recording"]),
            size_bytes=int(d["size_bytes"]),
            sha256=str(d["sha256"]),
            frames=int(d["frames"]),
            first_device_ts_ns=int(d["first_device_ts_ns"]),
            last_device_ts_ns=int(d["last_device_ts_ns"]),
        )


def bind_labels(directory: Path, recording: Path, frames: int, first_device_ts_ns: int, last_device_ts_ns: int) -> None:
    """Write ``recording.json``: bind the sidecar in ``directory`` to the finished ``recording`` (edge-record)."""
    recording = Path(recording)
    binding = RecordingBinding(
        recording=recording.name,
        size_bytes=recording.stat().st_size,
        sha256=file_sha256(recording),
        frames=frames,
        first_device_ts_ns=first_device_ts_ns,
        last_device_ts_ns=last_device_ts_ns,
    )
    path = Path(directory) / BINDING_FILE
    try:
        path.write_text(json.dumps(binding.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise LabelsError(
            f"cannot write {path}: {err.strerror or err}", "choose a writable directory for the output"
        ) from err


class LabelWriter:
    """Writes a sidecar frame by frame, as the frames pass on their way to the recorder."""

    def __init__(
        self, directory: Path, *, overwrite: bool = False, drum_masks: bool = True, meta: dict[str, Any] | None = None
    ) -> None:
        self.directory = Path(directory)
        if (self.directory / LABELS_FILE).exists() and not overwrite:
            raise LabelsError(f"{self.directory} already holds labels", "choose another output or pass overwrite")
        try:
            (self.directory / "masks").mkdir(parents=True, exist_ok=True)
            if drum_masks:
                (self.directory / "drum_masks").mkdir(exist_ok=True)
            if meta is not None:
                (self.directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            self._file = (self.directory / LABELS_FILE).open("w", encoding="utf-8")
        except OSError as err:
            raise LabelsError(
                f"cannot write labels to {self.directory}: {err.strerror or err}",
                "choose a writable directory for the output",
            ) from err
        self._drum_masks = drum_masks
        self.count = 0

    def write(self, frame: Frame) -> None:
        truth = frame.truth
        if truth is None:
            raise LabelsError(
                f"frame {frame.sequence} has no ground truth to label",
                "labels come from a synthetic source; record a live camera without --labels",
            )
        name = f"{frame.sequence:06d}.png"
        defect_mask = drum_mask = None
        if truth.defect_mask is not None and truth.label == "defect":
            defect_mask = f"masks/{name}"
            _write_mask(self.directory / defect_mask, truth.defect_mask)
        if self._drum_masks and truth.drum_mask is not None and truth.drum is not None:
            drum_mask = f"drum_masks/{name}"
            _write_mask(self.directory / drum_mask, truth.drum_mask)
        label = FrameLabel(
            frame.sequence,
            frame.color_frame_number,
            frame.device_ts_ns,
            truth.label,
            truth.defect_type,
            truth.drum,
            defect_mask,
            drum_mask,
        )
        self._file.write(label.to_json() + "\n")
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class LabelSet:
    """A sidecar read back: labels in recording order, looked up by color frame number; ``meta`` is what the
    writer recorded about the source (e.g. seed, frames_per_part), empty when it wrote none."""

    directory: Path
    by_frame_number: dict[int, FrameLabel]
    meta: dict[str, Any]
    binding: RecordingBinding | None = None

    def __len__(self) -> int:
        return len(self.by_frame_number)

    def truth(self, color_frame_number: int, device_ts_ns: int) -> GroundTruth:
        """The ground truth of one recorded frame, masks loaded; its frame number and device timestamp must match."""
        lab = self.by_frame_number.get(color_frame_number)
        if lab is None:
            raise LabelsError(
                f"the recording has frame number {color_frame_number}, the labels in {self.directory} do not",
                "use the labels written together with this recording",
            )
        if abs(lab.device_ts_ns - device_ts_ns) > DEVICE_TS_TOLERANCE_NS:
            raise LabelsError(
                f"frame number {color_frame_number} was taken at device time {device_ts_ns} ns, the labels in "
                f"{self.directory} were written for a frame taken at {lab.device_ts_ns} ns",
                "use the labels written together with this recording",
            )
        return GroundTruth(
            label=lab.label,
            defect_type=lab.defect_type,
            drum=lab.drum,
            defect_mask=_read_mask(self.directory / lab.defect_mask) if lab.defect_mask else None,
            drum_mask=_read_mask(self.directory / lab.drum_mask) if lab.drum_mask else None,
        )

    def check_frame_numbers(self, frame_numbers: list[int]) -> None:
        """Raise unless ``frame_numbers`` (as played back) are exactly the labelled frames, in order."""
        expected = list(self.by_frame_number)
        if frame_numbers != expected:
            raise LabelsError(
                f"the recording has {len(frame_numbers)} frames, the labels in {self.directory} describe "
                f"{len(expected)}{_first_difference(frame_numbers, expected)}",
                "use the labels written together with this recording",
            )


def _first_difference(got: list[int], expected: list[int]) -> str:
    for i, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            return f" (frame {i}: number {g} played back, {e} labelled)"
    return ""


def read_labels(directory: Path) -> LabelSet:
    """Read a sidecar; malformed or duplicate lines are errors naming the file and line."""
    directory = Path(directory)
    path = directory / LABELS_FILE
    if not path.is_file():
        raise LabelsError(f"no {LABELS_FILE} in {directory}", "pass the <recording>.labels folder written with it")
    by_number: dict[int, FrameLabel] = {}
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            try:
                lab = FrameLabel.from_json(line)
            except (ValueError, KeyError, TypeError) as err:
                raise LabelsError(
                    f"{path} line {i} is not a frame label: {err}",
                    "fix that line (label good/defect/empty; defect type free text) or export the labels again",
                ) from err
            if lab.color_frame_number in by_number:
                raise LabelsError(f"{path} line {i} repeats frame number {lab.color_frame_number}", "export again")
            by_number[lab.color_frame_number] = lab
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except ValueError as err:
        raise LabelsError(f"{meta_path} is not valid JSON: {err}", "export the labels again") from err
    binding_path = directory / BINDING_FILE
    binding = None
    if binding_path.is_file():
        try:
            binding = RecordingBinding.from_dict(json.loads(binding_path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LabelsError(
                f"{binding_path} is not a recording binding: {err}", "record again with edge-record"
            ) from err
    return LabelSet(directory, by_number, meta, binding)


def labels_for_recording(recording: Path, directory: Path | None = None) -> LabelSet:
    """The labels of ``recording`` (default ``<recording>.labels``), refused unless bound to exactly its bytes.

    The only way tools read labels for frames: ``edge-bench``, ``edge-train``, ``edge-record --from-recording``.
    A sidecar without ``recording.json`` (older than the binding) is refused too: the frame numbers and device
    timestamps of two synthetic recordings are the same, so nothing else tells their labels apart.
    """
    recording = Path(recording)
    labels = read_labels(directory if directory is not None else labels_dir_for(recording))
    b = labels.binding
    if b is None:
        seed = labels.meta.get("seed")
        again = f" (meta.json: seed {seed})" if seed is not None else ""
        raise LabelsError(
            f"the labels in {labels.directory} are not bound to a recording (no {BINDING_FILE}: written by an "
            "edge-record older than the binding)",
            f"record {recording.name} again with edge-record{again}; it writes the labels and their binding",
        )
    try:
        size = recording.stat().st_size
    except OSError as err:
        raise LabelsError(f"cannot read the recording {recording}: {err.strerror or err}", "check the path") from err
    digest = file_sha256(recording) if size == b.size_bytes else None
    if digest != b.sha256:
        got = f"sha256 {digest[:12]}…" if digest is not None else f"{size} bytes"
        want = f"sha256 {b.sha256[:12]}…" if digest is not None else f"{b.size_bytes} bytes"
        raise LabelsError(
            f"the labels in {labels.directory} belong to recording {b.recording} ({want}), not to {recording} ({got})",
            "use the labels written together with this recording",
        )
    return labels


def attach_labels(frames: Iterable[Frame], labels: LabelSet) -> Iterator[Frame]:
    """Yield ``frames`` with their ground truth set; at the end, check that they were exactly the labelled ones."""
    seen: list[int] = []
    for frame in frames:
        seen.append(frame.color_frame_number)
        yield replace(frame, truth=labels.truth(frame.color_frame_number, frame.device_ts_ns))
    labels.check_frame_numbers(seen)
