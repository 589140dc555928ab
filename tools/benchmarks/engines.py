"""Benchmark: ONNX Runtime (CPU) latency against PyTorch eager on the same model, inputs and machine, batch 1.

Per product model, the fp32 export and PyTorch eager are timed in one run; 3DSR ``edge`` is also quantised
(``engines.quantize``, as ``edge-quantize`` does, calibrated on seeded example inputs: its weights are random, so
there are no training crops) and its INT8 forms are timed beside, with their speed-up over the same PyTorch eager.
Where the time goes: ONNX Runtime's per-operator profile of each product model (one thread, ``int8.op_profile``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from engines.runtime.base import Runner
from tools.benchmarks.report import BenchSection, percentiles_us

TARGET = 1.5  # ONNX Runtime p50 at least this many times faster than PyTorch eager
DSR3D_INT8 = ("int8", "uint8")  # edge-quantize --activations kinds timed for 3DSR edge beside its fp32 export


def _time(runner: Runner, feed: dict[str, np.ndarray], reps: int) -> list[int]:
    runner.warmup(2)
    samples = []
    for _ in range(reps):
        runner.infer(feed)
        samples.append(runner.last_latency_ns)
    return samples


def _conv_net() -> tuple[Any, Any]:
    """A fixed 3-layer conv net on the contract's tensors (64×64): a small-model row, not a product model."""
    import torch  # noqa: PLC0415

    from engines.contract import ModelCard  # noqa: PLC0415

    class ConvNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(7, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 1, 3, padding=1),
            )

        def forward(self, rgb: Any, xyz: Any, mask: Any) -> tuple[Any, Any]:
            m = self.body(torch.cat([rgb, xyz, mask], 1)) * mask
            return m, m.flatten(1).amax(1)

    torch.manual_seed(0)
    card = ModelCard("convnet", "fixed", 64, ("rgb", "xyz", "mask"), "foreground", (0.5,) * 3, (0.5,) * 3)
    return ConvNet().eval(), card


def ast_edge() -> tuple[Any, Any]:
    """AST, edge preset, foreground crop, random init (latency does not depend on the weights)."""
    from engines import get_family  # noqa: PLC0415

    family = get_family("ast")
    card = family.card(preset="edge", crop_mode="foreground")
    return family.build(card).eval(), card


def baad_edge() -> tuple[Any, Any]:
    """BAAD, edge preset, crop mode image (the whole frame), random init; its graph also outputs the foreground."""
    from engines import get_family  # noqa: PLC0415

    family = get_family("baad")
    card = family.card(preset="edge", crop_mode="image")
    return family.build(card).eval(), card


def dsr3d_edge(tmp: Path) -> Callable[[], tuple[Any, Any]]:
    """3DSR, edge preset, foreground crop, random init; its card needs a DADA checkpoint, saved first."""

    def make() -> tuple[Any, Any]:
        from engines import get_family  # noqa: PLC0415
        from engines.checkpoint import TrainInfo, save_checkpoint  # noqa: PLC0415

        dada = get_family("dada")
        dada_card = dada.card(preset="edge", crop_mode="foreground")
        path = save_checkpoint(tmp / "dada.safetensors", dada.build(dada_card), dada_card, TrainInfo(0, 0))
        family = get_family("dsr3d")
        card = family.card(preset="edge", crop_mode="foreground", dada=str(path))
        return family.build(card).eval(), card

    return make


def _cells(label: str, size: str, eager: tuple[float, ...], ort: tuple[float, ...]) -> list[str]:
    ratio = eager[0] / ort[0]
    return [label, size, *(f"{x / 1e3:.1f}" for x in eager[:2]), *(f"{x / 1e3:.1f}" for x in ort[:2]), f"{ratio:.2f}×"]


def _row(
    label: str, make: Callable[[], tuple[Any, Any]], reps: int, tmp: Path, *, int8: tuple[str, ...] = ()
) -> tuple[list[list[str]], float, dict[str, Path]]:
    """Export, then time PyTorch eager and ONNX Runtime on one seeded feed, and each ``int8`` activation kind of
    the quantised export; returns the rows, the fp32 p50 ratio and the ONNX files (``fp32`` and each kind)."""
    from engines.export import example_feeds, onnx_from_model  # noqa: PLC0415
    from engines.parity import random_feeds  # noqa: PLC0415
    from engines.quantize import QuantizeSettings, quantize_onnx  # noqa: PLC0415
    from engines.runtime.ort import OrtRunner  # noqa: PLC0415
    from engines.runtime.torch_ref import TorchRunner  # noqa: PLC0415

    model, card = make()
    paths = {"fp32": onnx_from_model(model, card, tmp / f"{card.family}.onnx")}
    calibration = [example_feeds(card, seed) for seed in range(8)]
    for kind in int8:
        out = tmp / f"{card.family}-{kind}.onnx"
        paths[kind] = quantize_onnx(paths["fp32"], out, calibration, QuantizeSettings(activations=kind))
    size = f"{card.input_size}×{card.input_size}"
    with (
        OrtRunner(paths["fp32"]) as ort_runner,
        TorchRunner(model, ort_runner.input_specs, [s.name for s in ort_runner.output_specs]) as torch_runner,
    ):
        feed = random_feeds(ort_runner.input_specs, 1, seed=0)[0]
        eager = percentiles_us(_time(torch_runner, feed, reps))
        ort = percentiles_us(_time(ort_runner, feed, reps))
    rows = [_cells(label, size, eager, ort)]
    for kind in int8:
        with OrtRunner(paths[kind]) as runner:
            rows.append(
                _cells(f"{label.partition(' (')[0]} {kind}", size, eager, percentiles_us(_time(runner, feed, reps)))
            )
    return rows, eager[0] / ort[0], paths


def _profile_note(label: str, path: Path, tmp: Path) -> str:
    """ONNX Runtime's per-operator profile of ``path`` (3 runs, one thread), the largest shares."""
    from engines.export import card_from_onnx, example_feeds  # noqa: PLC0415
    from tools.benchmarks.int8 import op_profile  # noqa: PLC0415

    shares = op_profile(path, example_feeds(card_from_onnx(path)), 3, tmp)
    top = ", ".join(f"{op} {100 * share:.1f} %" for op, share in shares[:8])
    return f"ONNX Runtime profile (share of kernel time, 1 thread), {label}: {top}"


def run(quick: bool) -> BenchSection:
    """p50/p99 of PyTorch eager vs ONNX Runtime CPU (default threads for both), per model, in one run."""
    reps = 10 if quick else 50
    rows, targets, notes = [], {}, []
    with tempfile.TemporaryDirectory() as d:
        try:
            cells, ratio, paths = _row("AST edge (foreground, random init)", ast_edge, reps, Path(d))
            rows += cells
            targets[f"AST edge: ONNX Runtime ≥ {TARGET}× faster than PyTorch eager (p50)"] = ratio >= TARGET
            notes.append(_profile_note("AST edge fp32", paths["fp32"], Path(d)))
        except EdgeError as err:  # the family or its export is not available: say so, invent nothing
            notes.append(f"AST edge not measured: {err}")
        try:
            cells, ratio, _ = _row("BAAD edge (image, random init)", baad_edge, reps, Path(d))
            rows += cells
            targets[f"BAAD edge: ONNX Runtime ≥ {TARGET}× faster than PyTorch eager (p50)"] = ratio >= TARGET
        except EdgeError as err:
            notes.append(f"BAAD edge not measured: {err}")
        try:  # 3DSR edge takes a few hundred ms per frame on this CPU: fewer repetitions
            make_dsr3d = dsr3d_edge(Path(d))
            label = "3DSR edge (foreground, random init)"
            cells, ratio, paths = _row(label, make_dsr3d, max(3, reps // 5), Path(d), int8=DSR3D_INT8)
            rows += cells
            targets[f"3DSR edge: ONNX Runtime ≥ {TARGET}× faster than PyTorch eager (p50)"] = ratio >= TARGET
            notes += [_profile_note(f"3DSR edge {k}", p, Path(d)) for k, p in paths.items()]
        except EdgeError as err:
            notes.append(f"3DSR edge not measured: {err}")
        cells, _, _ = _row("fixed 3-layer conv net (not a product model)", _conv_net, reps, Path(d))
        rows += cells
    notes += [
        f"batch 1, one seeded input, {reps} timed runs ({max(3, reps // 5)} for 3DSR) after 2 warm-up runs per "
        "runtime; latency is Runner.infer wall time (feed validation and output copy included).",
        "3DSR edge int8/uint8: its fp32 export quantised with engines.quantize (edge-quantize's Q/DQ: per-channel "
        "weights, --activations int8 or uint8, calibrated on 8 seeded example inputs), run by ONNX Runtime with "
        "the same settings; the speed-up column is over the same PyTorch eager fp32 row.",
        "PyTorch eager: torch.inference_mode, default intra-op threads; ONNX Runtime: CPUExecutionProvider, "
        "graph optimisation 'all', default threads, IO binding.",
        f"1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
        f"(a shared machine inflates p99); run at {time.strftime('%H:%M:%S')}.",
    ]
    return BenchSection(
        title="Model runtimes (CPU): ONNX Runtime vs PyTorch eager",
        headers=["model", "input", "torch p50 ms", "torch p99 ms", "ORT p50 ms", "ORT p99 ms", "speed-up (p50)"],
        rows=rows,
        targets=targets,
        notes=notes,
    )


if __name__ == "__main__":
    print(run(quick=True).to_markdown())
