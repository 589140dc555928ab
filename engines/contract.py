"""The contract between model families, training, export and the runtimes — importable without torch.

Every model graph takes the crop step's tensors by name and returns raw outputs by name, so the same
preprocessing feeds training, bench and daemon, and score normalisation and the decision threshold
live outside the graph (``edge/core/scoring.py``): a threshold change never needs a re-export.

Tensors (batch B; S = the model's input size; all float32, NCHW):
- inputs  ``rgb``  B×3×S×S  colour normalised with the card's mean/std (``edge.crop.CropOutput.rgb``)
          ``xyz``  B×3×S×S  organised point cloud in metres, 0 where no depth / background
          ``mask`` B×1×S×S  1 inside the ROI with depth, else 0 (all ones in ``full`` crop mode if a
                            model ignores the ROI)
- outputs ``anomaly_map`` B×1×S×S raw per-pixel anomaly (higher = more anomalous)
          ``image_score`` B        raw image score (higher = more anomalous)
  extra outputs a family may add after those two (``ModelCard.outputs``, ``EXTRA_OUTPUTS``):
          ``foreground``  B×1×S×S  the model's own foreground probability (BAAD's learned background mask)
Crop modes: ``foreground`` and ``full`` crop the calibrated ROI's window (background removed / kept); ``image`` is
the whole camera image, no ROI needed (``mask`` = ROI ∧ depth when an ROI is given, else depth present).
Training/validation batches add ``label`` (B, 0 good / 1 defect) and ``gt`` (B×1×S×S, 0/1).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from edge.core.errors import EdgeError
from edge.crop import DEPTHLESS_REACH, CropSpec

INPUT_NAMES: tuple[str, ...] = ("rgb", "xyz", "mask")
OUTPUT_NAMES: tuple[str, ...] = ("anomaly_map", "image_score")
EXTRA_OUTPUTS: tuple[str, ...] = ("foreground",)  # optional outputs after OUTPUT_NAMES, each B×1×S×S
PRESETS: tuple[str, ...] = ("paper", "edge", "tiny")
CropMode = Literal["foreground", "full", "image"]
SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a trained model expects and emits; stored with every checkpoint, ONNX file and engine.

    Loading refuses an artefact whose card does not fit what the caller asks for (family, preset,
    input size, crop mode, ROI version). ``precision`` says what the artefact computes in: ``fp32`` for an export,
    ``int8`` for a Q/DQ ONNX written by ``edge-quantize`` (cards written before it existed read as fp32).
    ``depthless_reach`` is the crop's depthless rule the model was trained with (cards written before it existed
    read None: the silhouette rule of then); every user crops through :meth:`crop_spec`, so a model is always fed
    the crop it learnt on.
    """

    family: str
    preset: str
    input_size: int
    inputs: tuple[str, ...]
    crop_mode: CropMode
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    roi_version: str = ""
    data_hash: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # family-specific settings (e.g. AST mode "rgbd")
    precision: str = "fp32"  # numeric precision of the artefact: fp32 (exported), int8 (Q/DQ ONNX, edge-quantize)
    outputs: tuple[str, ...] = OUTPUT_NAMES  # graph outputs: OUTPUT_NAMES, then any of EXTRA_OUTPUTS
    # the crop's rule for samples without depth (CropSpec.depthless_reach) the model was trained with; a card written
    # before the rule existed reads None: every depthless sample in the ROI's silhouette is foreground, as then
    depthless_reach: int | None = DEPTHLESS_REACH
    # how far two runtimes of this fp32 model may disagree on the maps, as a share of the map's largest value, when
    # the family's map is not a continuous function of its input (Shape-Guided: nearest-neighbour and pursuit picks
    # at near ties); None: the contract's limits alone (engines.export.check_onnx, edge.inspect.GATE_BUDGETS)
    map_tolerance: float | None = None

    def crop_spec(self, mode: CropMode | None = None) -> CropSpec:
        """The crop that makes this model's input (``mode``: another crop mode over the same rule, e.g. ``image``
        for a foreground check of the calibration)."""
        return CropSpec(
            mode=mode or self.crop_mode,
            size=self.input_size,
            mean=self.mean,
            std=self.std,
            depthless_reach=self.depthless_reach,
        )

    def extra_outputs(self) -> tuple[str, ...]:
        """The outputs this model has beyond ``anomaly_map`` and ``image_score`` (e.g. BAAD's ``foreground``)."""
        return tuple(self.outputs[len(OUTPUT_NAMES) :])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"], d["mean"], d["std"] = list(self.inputs), list(self.mean), list(self.std)
        d["outputs"] = list(self.outputs)
        if self.outputs == OUTPUT_NAMES:
            del d["outputs"]  # the contract's two: cards of families without extras stay as they were
        if self.map_tolerance is None:
            del d["map_tolerance"]  # cards of families with continuous maps stay as they were
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        m, s = d["mean"], d["std"]
        return cls(
            family=str(d["family"]),
            preset=str(d["preset"]),
            input_size=int(d["input_size"]),
            inputs=tuple(str(x) for x in d["inputs"]),
            crop_mode=d["crop_mode"],
            mean=(float(m[0]), float(m[1]), float(m[2])),
            std=(float(s[0]), float(s[1]), float(s[2])),
            roi_version=str(d.get("roi_version", "")),
            data_hash=str(d.get("data_hash", "")),
            options=dict(d.get("options", {})),
            precision=str(d.get("precision", "fp32")),
            outputs=tuple(str(x) for x in d.get("outputs", OUTPUT_NAMES)),
            depthless_reach=None if d.get("depthless_reach") is None else int(d["depthless_reach"]),
            map_tolerance=None if d.get("map_tolerance") is None else float(d["map_tolerance"]),
        )


@dataclass(frozen=True, slots=True)
class FitSettings:
    """Knobs every family's training honours; families add their own via ``ModelCard.options``."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    threads: int = 2
    device: str = "cpu"  # torch device of the training loop ("cpu", "cuda", "cuda:1"); the model returns on the CPU


class TrainContext(Protocol):
    """What the training tool gives a family's ``fit``: progress reporting and resumable state."""

    def progress(self, phase: str, done: int, total: int, **metrics: float) -> None:
        """Report progress of a phase (e.g. "teacher", "student") for the progress bar and logs."""

    def save_state(self, phase: str, epoch: int, state: Mapping[str, Any]) -> None:
        """Persist resumable state once ``epoch`` epochs of ``phase`` are done (1 after the first); ``state`` is in
        the one resume format of ``engines.training.training_state`` (flat name → tensor; no pickle)."""

    def resume_state(self) -> tuple[str, int, dict[str, Any]] | None:
        """The last saved (phase, epochs done, state), or None for a fresh run; a family continues at that epoch."""


class ModelFamily(Protocol):
    """One model family (AST, 3DSR, …): presets, construction and training. Torch types appear as Any.

    A family is one module under ``engines/models/`` and one line in ``engines/_registry.py``; it may also implement
    ``FitsValidation``. ``tests/engines/test_families.py`` checks every registered family against this contract."""

    name: str
    presets: Mapping[str, Mapping[str, Any]]  # preset name → documented constructor settings
    # Optional (read with ``engines._registry.pretrained_from``): option name → family whose trained checkpoint that
    # option names, e.g. 3DSR's ``{"dada": "dada"}``. A tool that trains this family trains those first (same data,
    # preset and options less these keys; crop mode ``full``) and passes ``--option NAME=<out>/model.safetensors``.
    # pretrained_from: Mapping[str, str]
    # Optional (read with ``engines._registry.suite_modes``): the crop modes the accuracy suite trains the family in,
    # by default ("full", "foreground"), the foreground study's pair; BAAD's is ("image",).
    # suite_modes: tuple[CropMode, ...]

    def build(self, card: ModelCard) -> Any:
        """A ``torch.nn.Module`` whose ``forward(**{name: tensor for name in card.inputs})`` returns
        ``(anomaly_map, image_score)`` (raw), in eval mode once trained."""

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """The card of a new model of this family for ``preset`` (input size, inputs, normalisation)."""

    def fit(
        self,
        model: Any,
        train: Iterable[Mapping[str, Any]],
        settings: FitSettings,
        context: TrainContext,
    ) -> None:
        """Train ``model`` on batches of normal samples (dicts of tensors named as above).

        ``train`` is re-iterable: each epoch may iterate it again (a DataLoader or a list of batches). Families are
        written with the shared harness (``engines/training.py``: seeding, feature cache, batch order, schedule,
        the epoch loop and its one resume format) and hand the model back on the CPU in eval mode."""


@runtime_checkable
class FitsValidation(Protocol):
    """Optional second step of a family: fit what needs *normal validation* frames (thresholds, quantiles, score
    alignment) after ``fit``, on frames the training never saw. ``edge-train`` calls it when the family has it,
    after ``fit`` and before export, so whatever it fits (as buffers of the model) is in the checkpoint and graph."""

    def fit_validation(
        self, model: Any, validation: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
    ) -> Mapping[str, float]:
        """Fit on batches of normal validation samples; returns numbers worth recording (in the checkpoint's
        training metrics). Must not change what ``fit`` learned from the training split."""


# ------------------------------------------------------------------------------------------------------ card checks


def preset_table(presets: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """A family's ``presets`` attribute: each preset's settings dataclass as a read-only dict of its fields."""
    return MappingProxyType({name: asdict(settings) for name, settings in presets.items()})


def preset_settings(presets: Mapping[str, SettingsT], preset: str, family: str, error: type[EdgeError]) -> SettingsT:
    """The settings of ``preset`` among a family's ``presets``; an unknown name raises ``error`` listing them."""
    if preset not in presets:
        raise error(f"{family} has no preset {preset!r}", f"pick one of {sorted(presets)}")
    return presets[preset]


def check_option_names(
    options: Mapping[str, Any], allowed: Collection[str], family: str, remedy: str, error: type[EdgeError]
) -> None:
    """Refuse options not in ``allowed`` (none allowed: every option) with ``error`` listing them and ``remedy``."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise error(f"unknown {family} options {unknown}", remedy)


def check_card(card: ModelCard, family: str, input_size: int, error: type[EdgeError]) -> None:
    """Refuse a card of another family, or one whose input size is not its preset's (``error``, with the remedy)."""
    if card.family != family:
        raise error(f"card is for family {card.family!r}, not {family!r}", "build it with its own family")
    if card.input_size != input_size:
        raise error(
            f"card input size {card.input_size} differs from preset {card.preset!r} ({input_size})",
            f"make the card with the {family} family's card(preset, …)",
        )


def check_card_outputs(card: ModelCard, error: type[EdgeError]) -> None:
    """Refuse a card whose outputs are not ``OUTPUT_NAMES`` followed by distinct names of ``EXTRA_OUTPUTS``."""
    extras = card.extra_outputs()
    if (
        card.outputs[: len(OUTPUT_NAMES)] != OUTPUT_NAMES
        or not set(extras) <= set(EXTRA_OUTPUTS)
        or (len(set(extras)) != len(extras))
    ):
        raise error(
            f"card outputs {card.outputs} are not {OUTPUT_NAMES} followed by some of {EXTRA_OUTPUTS}",
            "list the contract's outputs first, then each extra output once",
        )


def check_card_inputs(card: ModelCard, inputs: tuple[str, ...], what: str, error: type[EdgeError]) -> None:
    """Refuse a card whose graph inputs are not ``inputs`` (those ``what``, e.g. "mode 'rgbd'", needs)."""
    if tuple(card.inputs) != inputs:
        raise error(f"card inputs {card.inputs} do not fit {what}", f"use {inputs}")
