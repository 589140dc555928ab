"""What the bench ran on: CPU, GPU, runtimes and, on a Jetson, its power mode and clocks.

Latency figures mean nothing without the machine; a station acceptance report must say which box, which
TensorRT/ONNX Runtime and (on a Jetson) which ``nvpmodel`` mode produced them. Every probe is best effort: a
missing tool or file leaves its field out instead of failing the run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tools.benchmarks.report import cpu_model

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CPU_FREQ_GLOB = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"
GPU_DEVFREQ_GLOB = "/sys/class/devfreq/*gpu*/cur_freq"  # Jetson: 17000000.ga10b, 57000000.gpu, …


def _command(argv: list[str], timeout_s: float = 5.0) -> str | None:
    """stdout of a probe command, or None when it is absent or fails (never raises, never hangs)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them (name, driver, memory)."""
    out = _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    rows = []
    for line in (out or "").splitlines():
        name, driver, memory = ([*(x.strip() for x in line.split(",")), "", ""])[:3]
        rows.append({"name": name, "driver": driver, "memory": memory})
    return rows


def _read_khz(pattern: str) -> list[int]:
    values = []
    for path in sorted(Path("/").glob(pattern.lstrip("/"))):
        try:
            values.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return values


def jetson() -> dict[str, Any] | None:
    """L4T release, ``nvpmodel`` power mode and current CPU/GPU clocks; None off a Jetson."""
    if not TEGRA_RELEASE.is_file():
        return None
    info: dict[str, Any] = {"l4t": TEGRA_RELEASE.read_text(errors="replace").splitlines()[0].strip()}
    mode = _command(["nvpmodel", "-q"])
    if mode:
        info["power_mode"] = " ".join(mode.split())
    cpu_khz = _read_khz(CPU_FREQ_GLOB)
    if cpu_khz:
        info["cpu_mhz"] = [round(k / 1000) for k in cpu_khz]
    gpu_hz = _read_khz(GPU_DEVFREQ_GLOB)
    if gpu_hz:
        info["gpu_mhz"] = [round(h / 1e6) for h in gpu_hz]
    return info


def machine_info() -> dict[str, Any]:
    """Everything above plus the OS, Python and the versions of the numeric and inference libraries."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "torch": _version("torch"),
        "gpus": gpus(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    board = jetson()
    if board is not None:
        info["jetson"] = board
    return {k: v for k, v in info.items() if v not in (None, [])}


def describe(info: dict[str, Any]) -> str:
    """One line for the console and the report's header."""
    parts = [f"{info.get('cpu', '?')} ({info.get('logical_cpus', '?')} CPUs)"]
    parts += [f"GPU {g['name']}" for g in info.get("gpus", [])]
    if "jetson" in info:
        parts.append(f"Jetson {info['jetson'].get('power_mode', '')}".strip())
    parts += [f"{k} {info[k]}" for k in ("onnxruntime", "tensorrt") if k in info]
    return ", ".join(parts)
