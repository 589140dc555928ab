"""ONNX export with fixed shapes (batch 1), the model card inside the file, and an onnxruntime parity check.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter). On torch 2.13 it exports conv
nets in well under a second and needs nothing beyond torch; ``dynamo=True`` needs the ``onnxscript`` package, which
is not a dependency (measured: ModuleNotFoundError). The legacy exporter's deprecation warning is silenced here
because the choice is deliberate. Shapes are fixed: TensorRT engines are built per input size anyway, and fixed
shapes keep every Reshape/Resize static.

The card travels in the ONNX file's ``metadata_props`` (key ``drumsight.card``, JSON) — readable with onnxruntime
alone (:func:`card_from_onnx`) — and in a ``<model>.onnx.json`` sidecar for humans and tools.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import EdgeError
from edge.core.scoring import file_sha256
from engines.checkpoint import tool_version, utc_now
from engines.contract import OUTPUT_NAMES, ModelCard
from engines.runtime.base import EngineError
from engines.runtime.ort import model_metadata, open_session

CARD_KEY = "drumsight.card"


class ExportError(EdgeError):
    """A model cannot be exported, or an exported file does not behave like its PyTorch model."""


def input_shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    """Batch-1 shapes of the card's inputs (contract: rgb/xyz 1×3×S×S, mask 1×1×S×S)."""
    s = card.input_size
    return {name: (1, 1 if name == "mask" else 3, s, s) for name in card.inputs}


def example_feeds(card: ModelCard, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    """Plausible inputs for tracing and parity checks: normalised colour, xyz near 1 m, a disc-shaped mask."""
    r = np.random.default_rng(seed)
    s = card.input_size
    yy, xx = np.mgrid[0:s, 0:s]
    disc = (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) < (0.4 * s) ** 2).astype(np.float32)
    feeds: dict[str, npt.NDArray[np.float32]] = {}
    for name, shape in input_shapes(card).items():
        if name == "mask":
            feeds[name] = disc.reshape(shape)
        elif name == "xyz":
            xyz = r.normal(0.0, 0.05, shape).astype(np.float32)
            xyz[:, 2] += 1.0
            feeds[name] = xyz * disc
        else:
            feeds[name] = r.normal(0.0, 1.0, shape).astype(np.float32)
    return feeds


def _positional(model: Any, names: tuple[str, ...]) -> Any:
    """The model behind a positional forward (the exporter passes inputs by position, in card order)."""
    import torch  # noqa: PLC0415  (training-only dependency)

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out: tuple[torch.Tensor, ...] = self.model(**dict(zip(names, args, strict=True)))
            return out

    return Positional().eval()


def onnx_from_model(model: Any, card: ModelCard, path: Path, opset: int = 17) -> Path:
    """Export ``model`` (eval mode) for ``card`` to ``path``; checks the graph and its I/O shapes."""
    import onnx  # noqa: PLC0415  (export-only dependency)
    import torch  # noqa: PLC0415  (training-only dependency)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    args = tuple(torch.from_numpy(a) for a in example_feeds(card).values())
    t0 = time.perf_counter_ns()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1.*")  # benign Slice note
        try:  # under no_grad: inference graph (no straight-through estimator terms, engines/models/dada.py)
            with torch.no_grad():
                torch.onnx.export(
                    _positional(model, card.inputs),
                    args,
                    str(path),
                    input_names=list(card.inputs),
                    output_names=list(card.outputs),
                    opset_version=opset,
                    dynamo=False,
                )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:
            raise ExportError(
                f"torch.onnx.export failed for {card.family}/{card.preset}: {err}",
                "the model uses an operator without an ONNX mapping at this opset: see models.md §1.4",
            ) from err
    export_ms = (time.perf_counter_ns() - t0) / 1e6
    proto = onnx.load(str(path))
    _check_io(proto, path, card)
    onnx.checker.check_model(proto, full_check=True)
    del proto.metadata_props[:]
    meta = {CARD_KEY: json.dumps(card.to_dict()), "drumsight.tool_version": tool_version()}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    sidecar = {
        "card": card.to_dict(),
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch": torch.__version__,
        "export_ms": round(export_ms, 1),
        "sha256": file_sha256(path),
        "created": utc_now(),
        "tool_version": tool_version(),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return path


def _check_io(proto: Any, path: Path, card: ModelCard) -> None:
    """Refuse a graph whose I/O are not the contract's names and batch-1 shapes; stamp the output shapes.

    Input shapes are static by construction. Output shapes may be left symbolic by the exporter (e.g. after a
    Resize), so they are taken from an onnxruntime run and written into the graph: TensorRT and readers then see
    fixed shapes. The outputs are the card's (``anomaly_map``, ``image_score``, then its extra outputs such as
    BAAD's ``foreground``, each 1×1×S×S).
    """
    s = card.input_size
    want = {**input_shapes(card), "anomaly_map": (1, 1, s, s), "image_score": (1,)}
    want |= dict.fromkeys(card.extra_outputs(), (1, 1, s, s))
    got: dict[str, tuple[int, ...]] = {}
    for v in proto.graph.input:
        got[v.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
    outputs = [v.name for v in proto.graph.output]
    if [v.name for v in proto.graph.input] == list(card.inputs) and outputs == list(card.outputs):
        sess = open_session(path)
        for name, value in zip(card.outputs, sess.run(list(card.outputs), example_feeds(card)), strict=True):
            got[name] = tuple(np.shape(value))
    else:
        got |= dict.fromkeys(outputs, ())
    if got != want:
        raise ExportError(
            f"exported graph has I/O {got}, the contract wants {want}",
            "make forward() return (anomaly_map B×1×S×S, image_score B, then the card's extra outputs) for inputs "
            "named as the card's",
        )
    for v in proto.graph.output:
        dims = v.type.tensor_type.shape.dim
        del dims[:]
        for n in want[v.name]:
            dims.add().dim_value = n


def card_from_onnx(path: Path) -> ModelCard:
    """The card stored in an exported ONNX file (onnxruntime only: usable on the edge box)."""
    try:
        raw = model_metadata(path).get(CARD_KEY)
    except EngineError as err:
        raise ExportError(
            f"{path} is not a loadable ONNX model ({err.problem})", "export it again with edge-train"
        ) from None
    if raw is None:
        raise ExportError(f"{path} carries no model card ({CARD_KEY})", "export it with engines.export / edge-train")
    return ModelCard.from_dict(json.loads(raw))


@dataclass(frozen=True, slots=True)
class OutputParity:
    """How far onnxruntime's output is from PyTorch's for one output."""

    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True, slots=True)
class ParityResult:
    """Per-output errors of onnxruntime (CPU EP) against PyTorch on the same feeds."""

    outputs: dict[str, OutputParity] = field(default_factory=dict)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs.values())

    def summary(self) -> str:
        parts = [f"{k}: max abs {o.max_abs:.2e}, max rel {o.max_rel:.2e}" for k, o in self.outputs.items()]
        return f"ORT vs PyTorch {'OK' if self.ok else 'MISMATCH'} ({'; '.join(parts)})"


def check_onnx(
    model: Any,
    onnx_path: Path,
    feeds: Mapping[str, npt.NDArray[np.float32]],
    atol: float = 1e-4,
    rtol: float = 1e-3,
    *,
    map_tolerance: float | None = None,
) -> ParityResult:
    """Run ``feeds`` through onnxruntime (CPU) and ``model``; an output is ok when ``|a−b| ≤ atol + rtol·|b|``.
    Every output of the graph is compared (the contract's two and any extra, e.g. BAAD's ``foreground``).
    ``map_tolerance`` (the card's, for a family whose maps jump at near ties) also lets every output but the image
    score differ by up to that share of its largest ``|b|``; the image score keeps ``atol + rtol·|b|``."""
    import torch  # noqa: PLC0415  (training-only dependency)

    sess = open_session(onnx_path)
    names = [i.name for i in sess.get_inputs()]
    missing = sorted(set(names) - set(feeds))
    if missing:
        raise ExportError(f"parity feeds lack the inputs {missing} of {onnx_path}", f"feed all of {names}")
    out_names = [o.name for o in sess.get_outputs()]
    got = dict(zip(out_names, sess.run(out_names, {k: feeds[k] for k in names}), strict=True))
    model.eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in names})
    if len(ref) != len(out_names):
        raise ExportError(
            f"the model returns {len(ref)} outputs, {onnx_path} has {out_names}", "export the model again"
        )
    outputs: dict[str, OutputParity] = {}
    for name, r in zip(out_names, ref, strict=True):
        b = r.detach().cpu().numpy().astype(np.float64)
        a = np.asarray(got[name], dtype=np.float64)
        if a.shape != b.shape:
            raise ExportError(f"{name}: ONNX gives {a.shape}, PyTorch {b.shape}", "export the model again")
        diff = np.abs(a - b)
        rel = diff / np.maximum(np.abs(b), 1e-12)
        limit = atol + rtol * np.abs(b)
        if map_tolerance is not None and name != OUTPUT_NAMES[1]:
            limit = np.maximum(limit, map_tolerance * float(np.abs(b).max(initial=0.0)))
        outputs[name] = OutputParity(
            float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), bool(np.all(diff <= limit))
        )
    return ParityResult(outputs, atol, rtol)
