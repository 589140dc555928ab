"""What the inference process hands to the sinks: one verdict record per scored frame or part, plus evidence.

Records are plain data (picklable, JSON-able) so they cross the process boundary on a queue; pixels for
evidence travel with NG records (and a configurable sample of OK ones) only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.core.scoring import Verdict

RecordVerdict = Literal["OK", "NG", "ERROR"]


@dataclass(frozen=True, slots=True)
class ModelScore:
    """One model's opinion of one frame: raw graph output, normalised score, its own verdict."""

    model: str  # "<family>/<preset>/<crop_mode>", unique within a config
    raw: float
    score: float
    verdict: Verdict
    infer_ms: float
    mask_iou: float | None = None  # a model with a foreground output run with an ROI: predicted mask vs ROI mask
    mask_alarm: bool = False  # mask_iou below the model's mask_iou_floor for mask_iou_frames scored frames


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """One row of the results database and one message on the line's outputs.

    ``gap_before`` is how many frames were dropped (live policy) or failed between the previous record and
    this one, so the verdict log shows every gap. ``late`` marks a frame whose end-to-end latency exceeded
    the configured budget. ``verdict`` is NG when any model says NG, ERROR when scoring failed.
    """

    sequence: int
    frame_number: int
    device_ts_ns: int
    host_ts_ns: int
    kind: Literal["frame", "part"]
    part_id: int | None
    verdict: RecordVerdict
    late: bool
    roi_fill: float
    scores: tuple[ModelScore, ...]
    stage_ms: dict[str, float]  # "ring_wait", "crop", "infer:<model>", "score", "total"
    roi_version: str
    model_versions: dict[str, str]  # model → ONNX/engine sha256 (12 hex)
    scoring_versions: dict[str, str]  # model → scoring file sha256 (12 hex)
    gap_before: int = 0
    error: str = ""
    result_id: str = ""  # UUIDv7 given by the supervisor when the verdict reaches the sinks (edge.plant.record)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = [asdict(s) for s in self.scores]
        return d


@dataclass(frozen=True, slots=True)
class Evidence:
    """Pictures kept for an NG (or sampled OK) record: the full colour frame, depth, and the heatmap overlay."""

    color: npt.NDArray[np.uint8]  # H×W×3 RGB
    depth: npt.NDArray[np.uint16]  # H×W, spec.depth_scale metres per unit
    overlay: npt.NDArray[np.uint8]  # S×S×3 RGB: the model input crop with its anomaly map blended in
    extra: dict[str, Any] = field(default_factory=dict)
