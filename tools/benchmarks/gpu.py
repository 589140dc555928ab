"""Benchmark on an NVIDIA GPU: the CUDA crop against the CPU crop, PyTorch CUDA inference against ONNX Runtime CPU.

Each GPU path is timed against its CPU baseline in the same run on the same machine. TensorRT is not timed here (the
``engines.runtime.trt`` runner needs the ``tensorrt`` package); on a machine without pycuda, CUDA or a GPU every row
says why it was not run, so ``make bench`` stays honest on a CPU-only box.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.core.errors import EdgeError
from edge.crop import CropSpec, RoiCropper
from tools.benchmarks.crop import drum_roi, synthetic_frame, time_ns
from tools.benchmarks.engines import ast_edge, dsr3d_edge
from tools.benchmarks.report import BenchSection, percentiles_us

HEADERS = ["path", "input", "p50 ms", "p99 ms", "baseline (same run)", "baseline p50 ms", "speed-up (p50)", "check"]


def cuda_unavailable() -> str | None:
    """Why the CUDA crop cannot run here (pycuda missing, no driver, no device), or None."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415  (optional GPU dependency)
    except ImportError as err:
        return f"pycuda cannot be imported ({err})"
    try:
        cuda.init()
    except cuda.Error as err:
        return f"the CUDA driver is unavailable ({err})"
    return None if cuda.Device.count() > 0 else "no CUDA device"


def torch_cuda_unavailable() -> str | None:
    """Why PyTorch cannot run on a GPU here, or None."""
    try:
        import torch  # noqa: PLC0415  (training extra)
    except ImportError as err:
        return f"torch cannot be imported ({err})"
    return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA GPU"


def crop_rows(reps: int) -> list[list[str]]:
    """CudaRoiCropper.crop (upload, kernel, download, synchronised) vs RoiCropper.crop on the same frame."""
    from edge.crop_cuda import CudaRoiCropper  # noqa: PLC0415  (imports pycuda lazily)

    rows = []
    cv2.setNumThreads(1)
    for width, height in ((640, 480), (1280, 720)):
        frame = synthetic_frame(width, height)
        roi = drum_roi(frame.spec)
        cpu = RoiCropper(frame.spec, roi, CropSpec(size=256))
        gpu = CudaRoiCropper(frame.spec, roi, CropSpec(size=256))
        try:
            theirs = percentiles_us(time_ns(partial(cpu.crop, frame), reps)[0])
            ours = percentiles_us(time_ns(partial(gpu.crop, frame), reps)[0])
            a, b = cpu.crop(frame), gpu.crop(frame)
            diff = max(float(np.abs(a.rgb - b.rgb).max()), float(np.abs(a.xyz - b.xyz).max()))
            same_mask = bool(np.array_equal(a.mask, b.mask)) and bool(np.array_equal(a.color, b.color))
        finally:
            gpu.close()
        check = f"max |Δ| rgb/xyz vs CPU {diff:.1e}, mask+colour {'identical' if same_mask else 'DIFFER'}"
        rows.append(
            [
                "CudaRoiCropper.crop (H2D, kernel, D2H)",
                f"{width}×{height} → 256²",
                f"{ours[0] / 1e3:.3f}",
                f"{ours[1] / 1e3:.3f}",
                "RoiCropper (CPU, 1 thread)",
                f"{theirs[0] / 1e3:.3f}",
                f"{theirs[0] / ours[0]:.1f}×",
                check,
            ]
        )
    return rows


def _cuda_forward(model: Any, feed: dict[str, np.ndarray]) -> Callable[[], tuple[Any, Any]]:
    """Batch-1 inference as the daemon would do it on a GPU: upload, forward, download, synchronised."""
    import torch  # noqa: PLC0415

    def step() -> tuple[Any, Any]:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).cuda(non_blocking=False) for k, v in feed.items()}
            amap, score = model(**inputs)
            out = amap.cpu(), score.cpu()
        torch.cuda.synchronize()
        return out

    return step


def model_row(label: str, make: Callable[[], tuple[Any, Any]], reps: int, tmp: Path) -> list[str]:
    """PyTorch CUDA eager (fp32) against ONNX Runtime CPU on the same exported model and seeded feed."""
    from engines.export import onnx_from_model  # noqa: PLC0415
    from engines.parity import random_feeds  # noqa: PLC0415
    from engines.runtime.ort import OrtRunner  # noqa: PLC0415

    model, card = make()
    path = onnx_from_model(model, card, tmp / f"{card.family}.onnx")
    with OrtRunner(path) as ort_runner:
        feed = random_feeds(ort_runner.input_specs, 1, seed=0)[0]
        ort_runner.warmup(2)
        ort_ns = []
        for _ in range(max(3, reps // 5)):
            ref = ort_runner.infer(feed)
            ort_ns.append(ort_runner.last_latency_ns)
        ref_score = float(ref["image_score"][0])
    step = _cuda_forward(model.cuda().eval(), feed)
    for _ in range(3):
        step()
    cuda_ns = time_ns(step, reps)[0]
    _, score = step()
    ours, theirs = percentiles_us(cuda_ns), percentiles_us(ort_ns)
    rel = abs(float(score[0]) - ref_score) / max(abs(ref_score), 1e-12)
    return [
        label,
        f"{card.input_size}²",
        f"{ours[0] / 1e3:.2f}",
        f"{ours[1] / 1e3:.2f}",
        "ONNX Runtime CPU (this machine)",
        f"{theirs[0] / 1e3:.1f}",
        f"{theirs[0] / ours[0]:.1f}×",
        f"image score rel. Δ vs ORT {rel:.1e}",
    ]


def run(quick: bool) -> BenchSection:
    reps = 20 if quick else 200
    rows: list[list[str]] = []
    threads = cv2.getNumThreads()
    try:
        reason = cuda_unavailable()
        if reason is None:
            rows += crop_rows(reps)
        else:
            rows.append(["CudaRoiCropper", "640×480", "–", "–", "RoiCropper", "–", "–", f"not run: {reason}"])
    finally:
        cv2.setNumThreads(threads)
    reason = torch_cuda_unavailable()
    if reason is not None:
        rows.append(["PyTorch CUDA eager", "–", "–", "–", "ONNX Runtime CPU", "–", "–", f"not run: {reason}"])
    else:
        with tempfile.TemporaryDirectory() as d:
            for label, make in (
                ("AST edge (random init)", ast_edge),
                ("3DSR edge (random init)", dsr3d_edge(Path(d))),
            ):
                try:
                    rows.append(model_row(f"{label}, PyTorch CUDA fp32", make, reps, Path(d)))
                except EdgeError as err:
                    rows.append([label, "–", "–", "–", "ONNX Runtime CPU", "–", "–", f"not run: {err}"])
    gpus = os.popen("nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null").read().strip()
    return BenchSection(
        title="GPU paths: CUDA crop and PyTorch CUDA inference",
        headers=HEADERS,
        rows=rows,
        notes=[
            f"GPU: {gpus or 'none found by nvidia-smi'}; {reps} timed runs after warm-up, batch 1, wall time with "
            "the host synchronised (times include the host↔device copies a daemon pays per frame).",
            "Crop: synthetic plane + cylinder frame (tools/benchmarks/crop.py), foreground mode, 256² output; the "
            "kernel is compiled by pycuda with --fmad=false so it reproduces the CPU crop bit for bit.",
            "Models: fp32 PyTorch eager on the GPU, not TensorRT (no tensorrt package on the machine); the baseline is "
            "the same exported graph in ONNX Runtime's CPU provider (default threads) on the same machine.",
            f"1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other jobs slow "
            f"the CPU baselines and the copies); run at {time.strftime('%H:%M:%S')}. TensorRT engine build and "
            "latency: not measured here (docs/engines.md). Figures measured on an H200: docs/benchmarks-gpu.md.",
        ],
    )


if __name__ == "__main__":
    print(run(quick=True).to_markdown())
