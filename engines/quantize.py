"""INT8: a Q/DQ ONNX from an exported fp32 ONNX, calibrated on good crops of the data the model was trained on.

ONNX Runtime static quantization (``onnxruntime.quantization.quantize_static``) in the QDQ format: every quantised
tensor passes through ``QuantizeLinear → DequantizeLinear`` pairs, weights per output channel. The same file runs
in ONNX Runtime on the CPU (which fuses the pairs into integer kernels) and is what TensorRT builds an INT8 engine
from (explicit quantization: its Q/DQ scales are used as they are, no TensorRT calibrator;
``engines._trt_compat.build_mode``). So that TensorRT can take it, activations and weights are signed int8 and
symmetric (zero point 0) by default, the form TensorRT requires. ``activations: uint8`` writes asymmetric uint8
activations instead: ONNX Runtime's fast path on x86 (its u8×s8 kernels; with int8 activations its x86 build keeps
depthwise convolutions in fp32 between Q/DQ pairs), refused by TensorRT (``engines._trt_compat.qdq_uint8``).

Calibration is deterministic: ``frames`` good samples are drawn from the training split with a seeded generator
(``numpy.random.default_rng(seed)``, sorted indices), and the activation ranges are their minimum/maximum
(``minmax``: no histogram sampling), so the same data, ROI, settings and fp32 ONNX give the same bytes
(``tests/engines/test_quantize.py`` checks the sha256). The ONNX keeps the fp32 model's card with
``precision: int8`` and records what it was quantised from and on (metadata key ``drumsight.quantization``).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.scoring import file_sha256
from engines.checkpoint import tool_version, utc_now
from engines.contract import ModelCard
from engines.export import CARD_KEY, card_from_onnx

QUANT_KEY = "drumsight.quantization"


class QuantizeError(EdgeError):
    """A model cannot be quantised as asked (wrong input model, data that is not its training data, bad setting)."""


# Quantisable nodes kept fp32 at the input end, per family (measured: docs/benchmarks.md, INT8 section). AST edge
# with every Conv quantised lost 0.12–0.17 image AUROC (its EfficientNet stem and first blocks see the raw crop);
# keeping the stem and blocks 0–3 (the first 12 Convs) fp32 kept AUROC within 0.01 at 2.15× (uint8).
KEEP_FIRST: dict[str, int] = {"ast": 12}
# Quantisable nodes kept fp32 by name (regular expressions), per family: none measured to help yet.
KEEP_NODES: dict[str, tuple[str, ...]] = {}


class QuantizeSettings(EdgeModel):
    """How an fp32 ONNX becomes a Q/DQ INT8 ONNX (ONNX Runtime static quantization)."""

    type: Literal["quantize"] = "quantize"
    frames: int = Field(32, ge=1, description="good training crops the activation ranges are calibrated on")
    seed: int = Field(0, description="seed of the draw of calibration crops from the training split")
    per_channel: bool = Field(True, description="one weight scale per output channel (else one per tensor)")
    op_types: tuple[str, ...] = Field(
        ("Conv", "MatMul", "Gemm"),
        description="operator types quantised; the rest (flows, pooling, the score head) stays fp32",
    )
    calibrate_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="activation range estimator (minmax: exact min/max of the calibration crops)"
    )
    reduce_range: bool = Field(False, description="7-bit weights (for CPUs without VNNI that saturate otherwise)")
    keep_first: int | None = Field(
        None,
        ge=0,
        description="the first N quantisable nodes (graph order: the layers on the raw inputs) stay fp32; "
        "None: the family's measured default (KEEP_FIRST, else 0)",
    )
    keep_nodes: tuple[str, ...] | None = Field(
        None,
        description="regular expressions (re.search) on node names: matching quantisable nodes stay fp32, besides "
        "keep_first; None: the family's measured default (KEEP_NODES, else none)",
    )
    activations: Literal["int8", "uint8"] = Field(
        "int8",
        description="int8: signed symmetric activations, the Q/DQ form TensorRT builds from (and ONNX Runtime runs); "
        "uint8: asymmetric uint8 activations, ONNX Runtime's fast x86 path (u8×s8 integer kernels, depthwise convs "
        "included), which TensorRT refuses",
    )

    def resolved(self, family: str) -> QuantizeSettings:
        """These settings with ``keep_first`` and ``keep_nodes`` filled in from the family's measured defaults
        (``KEEP_FIRST``, ``KEEP_NODES``) where they are None: what a quantisation of that family really does."""
        return self.model_copy(
            update={
                "keep_first": KEEP_FIRST.get(family, 0) if self.keep_first is None else self.keep_first,
                "keep_nodes": KEEP_NODES.get(family, ()) if self.keep_nodes is None else self.keep_nodes,
            }
        )

    def to_record(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump(exclude={"type"}).items()}


def calibration_indices(n_available: int, frames: int, seed: int) -> list[int]:
    """``min(frames, n_available)`` distinct indices in ``range(n_available)``, drawn with ``seed``, sorted."""
    if n_available < 1:
        raise QuantizeError(
            "no good training samples to calibrate on", "quantise with the data the model was trained on"
        )
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_available, size=min(frames, n_available), replace=False))


def calibration_feeds(
    train: Sequence[Mapping[str, Any]], good: Sequence[int], card: ModelCard, settings: QuantizeSettings
) -> tuple[list[dict[str, npt.NDArray[np.float32]]], list[int]]:
    """Batch-1 feeds of the seeded draw of good training samples, and the sample indices drawn."""
    picked = [good[i] for i in calibration_indices(len(good), settings.frames, settings.seed)]
    feeds = [{k: np.ascontiguousarray(np.asarray(train[i][k], np.float32)[None]) for k in card.inputs} for i in picked]
    return feeds, picked


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds (``get_next`` → feed or None)."""

    def __init__(self, feeds: Sequence[dict[str, npt.NDArray[np.float32]]]) -> None:
        self._it: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(feeds)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._it, None)


def _reader(feeds: Sequence[dict[str, npt.NDArray[np.float32]]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    # CalibrationDataReader is untyped (Any) for mypy
    class Reader(_Reader, CalibrationDataReader):  # type: ignore[misc]
        pass

    return Reader(feeds)


def quantize_onnx(
    fp32_onnx: Path,
    out: Path,
    feeds: Sequence[dict[str, npt.NDArray[np.float32]]],
    settings: QuantizeSettings,
    *,
    calibration: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Q/DQ INT8 ONNX of ``fp32_onnx`` to ``out``, its activation ranges calibrated on ``feeds``.

    The card is the fp32 one with ``precision: int8``; ``calibration`` (what the feeds are) is stored beside the
    settings and the source's sha256 in the ONNX metadata and in the ``<out>.json`` sidecar.
    """
    try:
        import onnx  # noqa: PLC0415  (train extra, like the export)
        from onnxruntime.quantization import (  # noqa: PLC0415
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as err:
        raise QuantizeError(
            f"quantisation needs the onnx package ({err})",
            "install the train extra: pip install 'drumsight-edge[train]'",
        ) from None

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    card = card_from_onnx(fp32_onnx)
    if card.precision != "fp32":
        raise QuantizeError(
            f"{fp32_onnx} is already a {card.precision} model", "quantise the fp32 model.onnx that edge-train wrote"
        )
    if not feeds:
        raise QuantizeError("no calibration feeds", "quantise with the data the model was trained on")
    out.parent.mkdir(parents=True, exist_ok=True)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[settings.calibrate_method]
    signed = settings.activations == "int8"
    resolved = settings.resolved(card.family)
    keep_first, patterns = resolved.keep_first or 0, resolved.keep_nodes or ()
    quantisable = [n.name for n in onnx.load(str(fp32_onnx)).graph.node if n.op_type in settings.op_types]
    kept = quantisable[:keep_first] + [
        name for name in quantisable[keep_first:] if any(re.search(p, name) for p in patterns)
    ]
    with tempfile.TemporaryDirectory(prefix="edge-quantize-") as tmp:
        staged = Path(tmp) / "model.int8.onnx"
        try:
            quantize_static(
                str(fp32_onnx),
                str(staged),
                _reader(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(settings.op_types),
                nodes_to_exclude=kept,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True},
            )
        except Exception as err:  # onnxruntime raises its own Fail/… types and ValueError for unsupported graphs
            raise QuantizeError(
                f"ONNX Runtime could not quantise {fp32_onnx} ({err})", "check the settings (--op-types) or re-export"
            ) from None
        proto = onnx.load(str(staged))
    source_sha = file_sha256(fp32_onnx)
    record = {
        "source": fp32_onnx.name,
        "source_sha256": source_sha,
        "format": "QDQ",
        "activations": "int8 symmetric" if signed else "uint8 asymmetric",
        "weights": "int8 symmetric" + (" per channel" if settings.per_channel else " per tensor"),
        "settings": settings.to_record(),
        "kept_fp32": kept,
        "calibration": dict(calibration or {}),
        "onnxruntime": _ort_version(),
    }
    del proto.metadata_props[:]
    meta = {
        CARD_KEY: json.dumps(replace(card, precision="int8").to_dict()),
        QUANT_KEY: json.dumps(record, sort_keys=True),
        "drumsight.tool_version": tool_version(),
    }
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    tmp_out = out.with_name(out.name + ".tmp")
    onnx.save(proto, str(tmp_out))
    tmp_out.replace(out)
    quantised = sorted({n.name for n in proto.graph.node if n.op_type == "DequantizeLinear"})
    sidecar = {
        "card": replace(card, precision="int8").to_dict(),
        "quantization": record,
        "dequantize_nodes": len(quantised),
        "sha256": file_sha256(out),
        "created": utc_now(),
        "tool_version": tool_version(),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return out


def quantization_record(onnx_path: Path) -> dict[str, Any] | None:
    """What a Q/DQ ONNX was quantised from and on (None for an fp32 export)."""
    from engines.runtime.ort import model_metadata  # noqa: PLC0415

    raw = model_metadata(onnx_path).get(QUANT_KEY)
    return None if raw is None else dict(json.loads(raw))


def _ort_version() -> str:
    import onnxruntime  # noqa: PLC0415

    return str(onnxruntime.__version__)
