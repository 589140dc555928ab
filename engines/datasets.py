"""Training and evaluation data through the one crop step: MVTec 3D-AD folders and labelled recordings.

Both sources rebuild a :class:`Frame` and crop it with :class:`edge.crop.RoiCropper` (CropSpec from the model card),
so training, bench and daemon see identical tensors. A sample is a dict of numpy arrays: ``rgb`` 3×S×S, ``xyz``
3×S×S, ``mask`` 1×S×S (float32 0/1: the crop's ROI∧depth mask in both crop modes; a model may ignore it), ``gt``
1×S×S (float32 0/1, the defect mask sampled like the crop's mask), plus ``label`` (0 good, 1 defect),
``defect_type`` ("good" or the type) and ``source`` (where it came from).

MVTec folders: ROI cropping needs the stream (intrinsics, depth scale) the ROI was calibrated on, which our exporter
(``drivers.mvtec``) stores in ``dataset.json``. Depth is rebuilt as ``round(z / depth_scale)`` — exact for
exported data, whose z came from those integers. A folder without that spec (the public MVTec 3D-AD release, or
MVTec AD) comes from a camera no ROI was calibrated on: it is cropped by :class:`engines.scene.SceneCropper`
(``full``: the whole image; ``foreground``: the background plane removed) and an ROI is refused for it. Such a
folder may be RGB-only (no ``xyz/``; ``full`` mode only) and may use MVTec AD's layout (``<split>/<type>/*.png``,
masks in ``ground_truth/<type>/<stem>_mask.png``); without ``validation/good`` the last 10 % (at least 2) of
``train/good`` validate. Mask files are binarised with ``> 0`` (MVTec stores class ids, not only 0/255).
Recordings: played back once (depth aligned to colour), labelled from the ``<rec>.labels`` sidecar, cropped and kept
in memory (8·S² float32 per sample: 2 MB at S = 256); runs of equal labels are parts and a part goes whole into one
split (no near-identical frames across train and test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, overload

import cv2
import numpy as np
import numpy.typing as npt
import tifffile

from calibration.roi import RoiFile
from drivers.errors import EndOfStreamError
from drivers.labels import LabelSet, attach_labels, labels_dir_for, labels_for_recording
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import Frame, StreamSpec
from edge.crop import CropLayout, CropSpec, RoiCropper
from engines.scene import SceneCropper, SceneFrame

Sample = dict[str, Any]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
RECORDING_SUFFIXES = (".db3", ".bag")


class DatasetError(EdgeError):
    """A data set cannot be read or cropped (wrong layout, no stream spec, missing labels)."""


def crop_mask(mask: npt.NDArray[Any], layout: CropLayout) -> npt.NDArray[np.float32]:
    """An H×W mask (> 0 is set) sampled like the crop's mask: nearest pixel, 0 outside the image. → 1×S×S."""
    ix, iy = layout.nearest()
    vx, vy = (ix >= 0) & (ix < layout.width), (iy >= 0) & (iy < layout.height)
    out = np.zeros((1, layout.size, layout.size), dtype=np.float32)
    out[0][np.ix_(vy, vx)] = np.asarray(mask)[np.ix_(iy[vy], ix[vx])] > 0
    return out


class FrameCropper:
    """The crop plus ground truth: turns a frame (RoiCropper) or a sample from outside (SceneCropper) and its defect
    mask into one sample (owned arrays)."""

    def __init__(self, cropper: RoiCropper | SceneCropper) -> None:
        self.cropper = cropper

    def sample(self, frame: Frame | SceneFrame, gt: npt.NDArray[Any] | None, defect_type: str, source: str) -> Sample:
        if isinstance(self.cropper, SceneCropper):
            if not isinstance(frame, SceneFrame):
                raise DatasetError("a camera frame was given to the scene crop", "report this bug")
            out = self.cropper.crop(frame)
        else:
            if not isinstance(frame, Frame):
                raise DatasetError("a sample from outside was given to the ROI crop", "report this bug")
            out = self.cropper.crop(frame)
        layout = self.cropper.layout
        assert layout is not None  # set by the crop above
        n = layout.size
        return {
            "rgb": out.rgb[0].copy(),
            "xyz": out.xyz[0].copy(),
            "mask": out.mask.astype(np.float32).reshape(1, n, n),
            "gt": crop_mask(gt, layout) if gt is not None else np.zeros((1, n, n), np.float32),
            "label": 0 if defect_type == "good" else 1,
            "defect_type": defect_type,
            "source": source,
        }


@dataclass(frozen=True, slots=True)
class SampleRef:
    """One MVTec sample on disk (``xyz`` None in an RGB-only folder)."""

    split: str
    defect_type: str
    rgb: Path
    xyz: Path | None
    gt: Path | None


def _read_image(path: Path, flags: int) -> npt.NDArray[np.uint8]:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise DatasetError(f"cannot read the image {path}", "the data set is incomplete: export it again")
    return cast(npt.NDArray[np.uint8], img)  # IMREAD_COLOR / IMREAD_GRAYSCALE decode to 8 bits


class MvtecFolder:
    """An MVTec 3D-AD class folder (``<root>`` or ``<root>/<class>``) with our exporter's ``dataset.json``."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not (root / "train").is_dir():
            subs = [p for p in sorted(root.iterdir()) if (p / "train").is_dir()] if root.is_dir() else []
            if len(subs) != 1:
                raise DatasetError(
                    f"{root} is not an MVTec 3D-AD class folder (no train/ inside"
                    + (f"; it holds several classes: {[p.name for p in subs]})" if subs else ")"),
                    "pass <root>/<class>, the folder holding train/, validation/ and test/",
                )
            root = subs[0]
        self.root = root
        meta_path = root / "dataset.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
            self.spec: StreamSpec | None = StreamSpec.from_dict(meta["spec"]) if meta.get("spec") else None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{meta_path} is unreadable or holds a malformed stream spec ({err!r})", "export the data set again"
            ) from None

    @property
    def public(self) -> bool:
        """True for data from outside (no camera stream): cropped by the scene cropper, never with an ROI."""
        return self.spec is None

    def _kind_refs(self, split: str, kind_dir: Path) -> list[SampleRef]:
        """The samples of one ``<split>/<type>`` folder: ``rgb/`` (+ ``xyz/``, ``gt/``) or MVTec AD's flat PNGs."""
        out: list[SampleRef] = []
        if not (kind_dir / "rgb").is_dir():  # MVTec AD: <split>/<type>/NNN.png, masks under ground_truth/<type>/
            for rgb in sorted(kind_dir.glob("*.png")):
                gt = self.root / "ground_truth" / kind_dir.name / f"{rgb.stem}_mask.png"
                out.append(SampleRef(split, kind_dir.name, rgb, None, gt if gt.is_file() else None))
            return out
        has_xyz = (kind_dir / "xyz").is_dir()
        for rgb in sorted((kind_dir / "rgb").glob("*.png")):
            xyz = kind_dir / "xyz" / f"{rgb.stem}.tiff"
            gt = kind_dir / "gt" / f"{rgb.stem}.png"
            if has_xyz and not xyz.is_file():
                raise DatasetError(f"{rgb} has no point cloud {xyz}", "the data set is incomplete: export it again")
            out.append(SampleRef(split, kind_dir.name, rgb, xyz if has_xyz else None, gt if gt.is_file() else None))
        return out

    def _split_refs(self, split: str) -> list[SampleRef]:
        base = self.root / split
        kinds = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        return [r for kind_dir in kinds for r in self._kind_refs(split, kind_dir)]

    def refs(self, split: str) -> list[SampleRef]:
        """The samples of ``split``; without a ``validation/good`` folder the last 10 % (≥ 2) of train/good validate."""
        if split not in ("train", "validation") or (self.root / "validation" / "good").is_dir():
            out = self._split_refs(split)
        else:
            train = self._split_refs("train")
            good = [r for r in train if r.defect_type == "good"]
            n_val = max(2, len(good) // 10) if len(good) > 2 else 0
            held = {r.rgb for r in good[len(good) - n_val :]}
            out = [dataclasses.replace(r, split="validation") for r in train if r.rgb in held]
            out = out if split == "validation" else [r for r in train if r.rgb not in held]
        if self.spec is not None and any(r.xyz is None for r in out):
            raise DatasetError(
                f"{self.root}/{split} has samples without xyz/ though dataset.json names a camera stream",
                "the data set is incomplete: export it again",
            )
        return out

    def data_hash(self) -> str:
        """sha256 over the relative path and size of every sample file and ``dataset.json`` (cheap, changes with any
        re-export; files beside them, such as a bench report written into the folder, do not count)."""
        h = hashlib.sha256()
        files = [self.root / "dataset.json"] + [
            p for s in SPLITS for r in self._split_refs(s) for p in (r.rgb, r.xyz, r.gt) if p is not None
        ]
        for p in sorted(f for f in files if f.is_file()):
            h.update(f"{p.relative_to(self.root).as_posix()}\0{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def cropper(self, roi: RoiFile | None, crop: CropSpec, *, allow_mismatch: bool = False) -> FrameCropper:
        """The ROI crop for our exports (``roi`` required); the scene crop for data from outside (``roi`` refused)."""
        if self.spec is None:
            if roi is not None:
                raise DatasetError(
                    f"{self.root} has no camera stream (no dataset.json from our exporter), so an ROI cannot "
                    "be applied to it",
                    "leave out --roi: such data is cropped whole (--crop full) or with its background plane removed "
                    "(--crop foreground)",
                )
            return FrameCropper(SceneCropper(crop))
        if roi is None:
            raise DatasetError(
                f"{self.root} comes from a calibrated camera but no ROI was given", "pass --roi roi.yaml"
            )
        return FrameCropper(RoiCropper(self.spec, roi, crop, allow_mismatch=allow_mismatch))

    def scene(self, ref: SampleRef) -> SceneFrame:
        """A sample from outside: colour from the image, the point cloud as stored (None in an RGB-only folder)."""
        color = cast(npt.NDArray[np.uint8], cv2.cvtColor(_read_image(ref.rgb, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        xyz = self._xyz(ref) if ref.xyz is not None else None
        return SceneFrame(color, xyz, f"{ref.split}/{ref.defect_type}/{ref.rgb.name}")

    def _xyz(self, ref: SampleRef) -> npt.NDArray[np.float32]:
        assert ref.xyz is not None
        try:
            xyz = np.asarray(tifffile.imread(ref.xyz), dtype=np.float32)
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read the point cloud {ref.xyz}: {err}", "export the data set again") from None
        if xyz.ndim != 3 or xyz.shape[2] != 3:
            raise DatasetError(
                f"{ref.xyz} holds an array of shape {xyz.shape}, not H×W×3 (x, y, z)",
                "store organised point clouds as H×W×3 float32 TIFFs (MVTec 3D-AD layout)",
            )
        return xyz

    def frame(self, ref: SampleRef) -> Frame:
        """The frame the sample was exported from: colour from the PNG, depth = round(z / depth_scale)."""
        assert self.spec is not None
        color = cast(npt.NDArray[np.uint8], cv2.cvtColor(_read_image(ref.rgb, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        xyz = self._xyz(ref)
        if xyz.shape != (*color.shape[:2], 3) or color.shape != self.spec.color_shape:
            raise DatasetError(
                f"{ref.rgb} is {color.shape}, {ref.xyz} is {xyz.shape}; dataset.json says {self.spec.color_shape}",
                "export the data set again (files from another stream were mixed in)",
            )
        depth = np.clip(np.rint(xyz[..., 2] / self.spec.depth_scale), 0, 65535).astype(np.uint16)
        return Frame(color, depth, self.spec, 0, 0, 0, 0)

    def read(self, ref: SampleRef) -> Frame | SceneFrame:
        """What the cropper takes: the exported frame (our exports) or the scene (data from outside)."""
        return self.scene(ref) if self.spec is None else self.frame(ref)

    def mask(self, ref: SampleRef) -> npt.NDArray[np.bool_] | None:
        """The sample's defect mask (``> 0``: MVTec stores class ids, not only 0/255), None when it has none."""
        if ref.gt is None:
            return None
        mask: npt.NDArray[np.bool_] = _read_image(ref.gt, cv2.IMREAD_GRAYSCALE) > 0
        return mask


class MvtecSplit(Sequence[Sample]):
    """One split of an MVTec folder, read and cropped on access (nothing held in memory)."""

    def __init__(self, folder: MvtecFolder, refs: list[SampleRef], cropper: FrameCropper) -> None:
        self.folder, self.refs, self.cropper = folder, refs, cropper

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        ref = self.refs[index]
        source = f"mvtec:{ref.split}/{ref.defect_type}/{ref.rgb.stem}"
        return self.cropper.sample(self.folder.read(ref), self.folder.mask(ref), ref.defect_type, source)

    def labels(self) -> list[int]:
        return [0 if r.defect_type == "good" else 1 for r in self.refs]


@dataclass
class Dataset:
    """Cropped splits of one data source and the hash recorded in the model card."""

    splits: dict[str, Sequence[Sample]]
    data_hash: str
    source: str
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # split → defect type → count

    def split(self, name: str) -> Sequence[Sample]:
        return self.splits.get(name, [])

    def good(self, name: str) -> list[int]:
        """Indices of the good samples of a split."""
        data = self.split(name)
        labels = data.labels() if isinstance(data, MvtecSplit) else [int(s["label"]) for s in data]
        return [i for i, y in enumerate(labels) if y == 0]


def load_mvtec(root: Path, roi: RoiFile | None, crop: CropSpec, *, allow_mismatch: bool = False) -> Dataset:
    folder = MvtecFolder(root)
    cropper = folder.cropper(roi, crop, allow_mismatch=allow_mismatch)
    splits: dict[str, Sequence[Sample]] = {}
    kinds: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        refs = folder.refs(split)
        splits[split] = MvtecSplit(folder, refs, cropper)
        for r in refs:
            kinds.setdefault(split, {})[r.defect_type] = kinds.get(split, {}).get(r.defect_type, 0) + 1
    return Dataset(splits, folder.data_hash(), f"mvtec:{folder.root}", kinds)


def recording_frames(path: Path, labels: LabelSet) -> Iterator[Frame]:
    """Every frame of a recording (depth aligned to colour) with its ground truth attached."""
    source = PlaybackSource(PlaybackSourceConfig(path=path, align_to_color=True))
    source.open()

    def frames() -> Iterator[Frame]:
        while True:
            try:
                yield source.read(source.default_timeout_s())
            except EndOfStreamError:
                return

    try:
        yield from attach_labels(frames(), labels)
    finally:
        source.close()


def recording_parts(labels: LabelSet) -> list[tuple[str, list[int]]]:
    """The labelled frames cut into parts (defect type or "good", frame numbers), in recording order.

    A part is a run of one label, cut every ``frames_per_part`` frames (from the sidecar's meta.json, else 1), as
    ``drivers.mvtec`` cuts them; "empty" frames (no drum at the station) end a part and belong to none.
    """
    per_part = max(int(labels.meta.get("frames_per_part", 1)), 1)
    parts: list[tuple[str, list[int]]] = []
    prev: tuple[str, str | None] | None = None
    for number, lab in labels.by_frame_number.items():
        if lab.label == "empty":
            prev = None
            continue
        kind = "good" if lab.label == "good" else lab.defect_type or "defect"
        if prev != (lab.label, lab.defect_type) or len(parts[-1][1]) >= per_part:
            parts.append((kind, []))
        prev = (lab.label, lab.defect_type)
        parts[-1][1].append(number)
    return parts


def recording_splits(labels: LabelSet, train_fraction: float = 0.6, validation_fraction: float = 0.2) -> dict[int, str]:
    """Frame number → split: good parts spread by largest deficit (deterministic, as drivers.mvtec); defects → test.

    Computed from the labels alone, so the bench knows which frames a model trained on a recording never saw.
    """
    targets = {"train": train_fraction, "validation": validation_fraction}
    targets["test"] = 1.0 - train_fraction - validation_fraction
    placed = dict.fromkeys(SPLITS, 0)
    n_good = 0
    out: dict[int, str] = {}
    for kind, numbers in recording_parts(labels):
        split = "test"
        if kind == "good":
            n_good += 1
            split = max(SPLITS, key=lambda s: targets[s] * n_good - placed[s])
            placed[split] += 1
        out.update(dict.fromkeys(numbers, split))
    return out


def recording_hash(path: Path, labels_dir: Path) -> str:
    """The data hash of a labelled recording (file name and size, and the labels), as model cards record it."""
    h = hashlib.sha256(f"{path.name}\0{path.stat().st_size}\n".encode())
    h.update((labels_dir / "labels.jsonl").read_bytes())
    return h.hexdigest()


def load_recording(
    path: Path,
    roi: RoiFile | None,
    crop: CropSpec,
    *,
    labels_dir: Path | None = None,
    train_fraction: float = 0.6,
    validation_fraction: float = 0.2,
    allow_mismatch: bool = False,
) -> Dataset:
    """Crop every labelled, non-empty frame of a recording; a part goes whole into one split (``recording_splits``)."""
    path = Path(path)
    labels_dir = Path(labels_dir) if labels_dir is not None else labels_dir_for(path)
    if not (labels_dir / "labels.jsonl").is_file():
        raise DatasetError(
            f"{path} has no labels sidecar at {labels_dir}", "pass --labels DIR (the <recording>.labels folder)"
        )
    labels = labels_for_recording(path, labels_dir)
    split_of = recording_splits(labels, train_fraction, validation_fraction)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    cropper: FrameCropper | None = None
    for frame in recording_frames(path, labels):
        truth = frame.truth
        assert truth is not None
        if truth.label == "empty":
            continue
        if roi is None:
            raise DatasetError(f"{path} comes from a calibrated camera but no ROI was given", "pass --roi roi.yaml")
        cropper = cropper or FrameCropper(RoiCropper(frame.spec, roi, crop, allow_mismatch=allow_mismatch))
        kind = "good" if truth.label == "good" else truth.defect_type or "defect"
        sample = cropper.sample(frame, truth.defect_mask, kind, f"{path.name}#{frame.color_frame_number}")
        splits[split_of[frame.color_frame_number]].append(sample)
    kinds = {s: _kinds(v) for s, v in splits.items() if v}
    return Dataset(dict(splits), recording_hash(path, labels_dir), f"recording:{path}", kinds)


def _kinds(samples: Sequence[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s["defect_type"]] = out.get(s["defect_type"], 0) + 1
    return out


def open_dataset(
    data: Path, roi: RoiFile | None, crop: CropSpec, *, labels_dir: Path | None = None, allow_mismatch: bool = False
) -> Dataset:
    """An MVTec folder or a labelled recording (by suffix), cropped with ``roi`` and ``crop`` (``roi`` None: a folder
    from outside, cropped by the scene cropper)."""
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"{data} does not exist", "pass an MVTec folder (edge-record --mvtec) or a .db3/.bag")
    if data.suffix in RECORDING_SUFFIXES:
        return load_recording(data, roi, crop, labels_dir=labels_dir, allow_mismatch=allow_mismatch)
    return load_mvtec(data, roi, crop, allow_mismatch=allow_mismatch)


class Batches:
    """Re-iterable batches of samples as torch tensors (``rgb``, ``xyz``, ``mask``, ``gt``, ``label``).

    With ``shuffle`` the k-th pass over the data uses the order drawn from ``(seed, k)``; ``passes`` counts the
    passes begun, and a resumed run sets it back to where the saved run was (``tools/train.py`` does).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DatasetError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
        if len(samples) == 0:
            raise DatasetError("no samples to train on", "check the data set's train/good split")
        self.samples, self.batch_size = samples, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.passes = 0

    def __len__(self) -> int:
        n, b = len(self.samples), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch  # noqa: PLC0415  (training-only dependency)

        order = np.arange(len(self.samples))
        if self.shuffle:
            np.random.default_rng([self.seed, self.passes]).shuffle(order)
        self.passes += 1
        for b in range(len(self)):
            chunk = [self.samples[int(i)] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            batch = {k: torch.from_numpy(np.stack([s[k] for s in chunk])) for k in ("rgb", "xyz", "mask", "gt")}
            batch["label"] = torch.tensor([int(s["label"]) for s in chunk], dtype=torch.int64)
            yield batch
