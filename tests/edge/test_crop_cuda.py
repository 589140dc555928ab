"""The fused CUDA crop kernel: it compiles, and on a GPU it reproduces the CPU RoiCropper."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge.crop import CropError, CropSpec, RoiCropper
from edge.crop_cuda import (
    BLOCK,
    KERNEL_SOURCE,
    CudaRoiCropper,
    DeviceOutputs,
    kernel_params,
    kernel_silhouette,
    kernel_tables,
)
from tests.edge._crop_data import make_frame, make_roi, make_spec


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (shutil.which("nvcc"), "/usr/local/bin/nvcc", f"{cuda_home}/bin/nvcc"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def gpu_unavailable() -> str | None:
    """Why the GPU comparison cannot run here, or None when it can."""
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (GPU extra); the CUDA crop cannot be compared with the CPU one"
    import pycuda.driver as cuda

    try:
        cuda.init()
    except cuda.Error as e:
        return f"CUDA driver unavailable: {e}"
    return None if cuda.Device.count() > 0 else "no CUDA device present"


def test_kernel_compiles_to_ptx_without_fused_multiply_add(tmp_path: Path) -> None:
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, /usr/local/bin, $CUDA_HOME/bin): cannot compile edge/crop_kernel.cu")
    ptx = tmp_path / "crop.ptx"
    cmd = [nvcc, "--ptx", "-arch=compute_75", "--Werror", "all-warnings", "-o", str(ptx), str(KERNEL_SOURCE)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    text = ptx.read_text()
    assert ".entry roi_crop(" in text
    # The CPU path rounds every product and sum separately; an FMA would make the GPU differ in the last bit.
    assert "fma.rn.f32" not in text


# The kernel source compiled as plain C++: CUDA's built-ins become globals, the grid a loop. It runs the same
# arithmetic (float ops rounded one by one, -ffp-contract=off) and indexing on the CPU, so the kernel's logic is
# checked against RoiCropper on machines without a GPU; the gpu-marked tests below check the real device.
HOST_SHIM = r"""
#include <math.h>
struct Dim3 { int x, y, z; };
static Dim3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
#include "KERNEL_PATH"
extern "C" void run_grid(int bx, int by, const unsigned char* color, const unsigned short* depth,
                         const float* rays, const float* roi_rays, const int* ip, const float* fp,
                         const unsigned char* silhouette, float* out_rgb,
                         float* out_xyz, float* out_mask, unsigned char* out_color) {
    blockDim = {bx, by, 1};
    const int n = ip[IP_SIZE];
    for (blockIdx.y = 0; blockIdx.y * by < n; ++blockIdx.y)
        for (blockIdx.x = 0; blockIdx.x * bx < n; ++blockIdx.x)
            for (threadIdx.y = 0; threadIdx.y < by; ++threadIdx.y)
                for (threadIdx.x = 0; threadIdx.x < bx; ++threadIdx.x)
                    roi_crop(color, depth, rays, roi_rays, ip, fp, silhouette, out_rgb, out_xyz, out_mask, out_color);
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++/c++) to run the kernel source on the CPU")
    work = tmp_path_factory.mktemp("host_kernel")
    src, lib = work / "shim.cpp", work / "libcrop.so"
    src.write_text(HOST_SHIM.replace("KERNEL_PATH", str(KERNEL_SOURCE)))
    cmd = [cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(src)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    dll = ctypes.CDLL(str(lib))
    dll.run_grid.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 11
    return dll


@pytest.mark.parametrize(
    ("kind", "mode", "interp", "z", "keep", "reach"),
    [
        ("cylinder", "foreground", "bilinear", 0.8, True, 8),
        ("cylinder", "foreground", "bilinear", 0.8, True, None),  # the rule before depthless_reach: IP_REACH 0
        ("cylinder", "foreground", "nearest", 0.8, False, 8),  # no silhouette table: a null pointer
        ("box", "full", "nearest", 0.8, True, 2),
        ("box", "foreground", "bilinear", 0.8, True, 8),
        ("cylinder", "full", "bilinear", 0.45, True, 3),  # padded window: neighbours outside the image
        ("cylinder", "full", "bilinear", 0.45, True, None),
        ("notched", "foreground", "bilinear", 0.8, True, 8),  # support-aware radial margin
        ("notched", "full", "nearest", 0.45, False, 8),
    ],
)
def test_kernel_source_run_on_the_host_matches_cpu_exactly(
    host_kernel: ctypes.CDLL, kind: str, mode: str, interp: str, z: float, keep: bool, reach: int | None
) -> None:
    spec = make_spec(640, 480)
    roi = make_roi(spec, kind, center=(0.02, -0.01, z))
    crop = CropSpec(
        mode=mode,  # type: ignore[arg-type]
        size=200,
        color_interpolation=interp,  # type: ignore[arg-type]
        background_rgb=(10, 200, 30),
        keep_depthless=keep,
        depthless_reach=reach,
    )
    cpu = RoiCropper(spec, roi, crop)
    rays, roi_rays = kernel_tables(spec, roi)
    ip, fp = kernel_params(spec, roi, crop, cpu.layout)
    n = crop.size
    rgb, xyz = np.full((1, 3, n, n), np.nan, np.float32), np.full((1, 3, n, n), np.nan, np.float32)
    mask, color = np.full((n, n), 7, np.float32), np.zeros((n, n, 3), np.uint8)
    frame = make_frame(spec, seed=11)
    silhouette = kernel_silhouette(spec, roi, crop, cpu.layout)
    pointers = [a.ctypes.data for a in (frame.color, frame.depth, rays, roi_rays, ip, fp)]
    pointers += [None if silhouette is None else silhouette.ctypes.data]
    pointers += [a.ctypes.data for a in (rgb, xyz, mask, color)]
    host_kernel.run_grid(BLOCK[0], BLOCK[1], *pointers)
    ref = cpu.crop(frame)
    assert 0 < ref.mask.sum() < n * n
    if silhouette is not None:  # the case must exercise the rule: depthless samples kept, (enclosed) some refused
        ix, iy = cpu.layout.nearest()
        depth = frame.depth[np.clip(iy, 0, 479)[:, None], np.clip(ix, 0, 639)[None, :]]
        in_silhouette = silhouette.astype(bool) & (depth == 0)  # the silhouette is False outside the image
        # at z = 0.45 the scene's depths lie behind the ROI: no sample with depth encloses a depthless one
        assert (ref.mask & in_silhouette).any() == (reach is None or z > 0.5)
        assert (reach is None) == bool(ref.mask[in_silhouette].all())
    np.testing.assert_array_equal(mask, ref.mask.astype(np.float32))
    np.testing.assert_array_equal(color, ref.color)
    np.testing.assert_array_equal(xyz, ref.xyz)  # bit-identical: same float32 operations in the same order
    np.testing.assert_array_equal(rgb, ref.rgb)


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed here")
def test_cuda_cropper_without_pycuda_says_what_to_install() -> None:
    spec = make_spec()
    with pytest.raises(CropError, match=r"pycuda.*drumsight-edge\[gpu\]"):
        CudaRoiCropper(spec, make_roi(spec, "box"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("kind", "mode", "interp", "z", "reach"),
    [
        ("cylinder", "foreground", "bilinear", 0.8, 8),
        ("cylinder", "foreground", "bilinear", 0.8, None),  # the rule before depthless_reach
        ("box", "full", "nearest", 0.8, 8),
        ("cylinder", "full", "bilinear", 0.45, 3),  # padded window
        ("notched", "foreground", "bilinear", 0.8, 8),  # a cylinder with radial notches (support-aware margin)
        ("notched", "full", "nearest", 0.45, None),
    ],
)
def test_cuda_crop_matches_cpu(kind: str, mode: str, interp: str, z: float, reach: int | None) -> None:
    """Tolerance: mask and colour bytes exact; rgb and xyz within 1e-6 (the kernel is written to be bit-identical)."""
    reason = gpu_unavailable()
    if reason:
        pytest.skip(reason)
    spec = make_spec(640, 480)
    roi = make_roi(spec, kind, center=(0.02, -0.01, z))
    crop = CropSpec(
        mode=mode,  # type: ignore[arg-type]
        size=256,
        color_interpolation=interp,  # type: ignore[arg-type]
        background_rgb=(10, 200, 30),
        depthless_reach=reach,
    )
    cpu, gpu = RoiCropper(spec, roi, crop), CudaRoiCropper(spec, roi, crop)
    try:
        assert gpu.layout == cpu.layout
        for seed in range(3):
            frame = make_frame(spec, seed)
            a, b = cpu.crop(frame), gpu.crop(frame)
            np.testing.assert_array_equal(b.mask, a.mask)
            np.testing.assert_array_equal(b.color, a.color)
            np.testing.assert_allclose(b.xyz, a.xyz, atol=1e-6, rtol=0)
            np.testing.assert_allclose(b.rgb, a.rgb, atol=1e-6, rtol=0)
    finally:
        gpu.close()


@pytest.mark.gpu
def test_cuda_crop_writes_into_caller_device_buffers() -> None:
    reason = gpu_unavailable()
    if reason:
        pytest.skip(reason)
    import pycuda.driver as cuda

    spec = make_spec(640, 480)
    roi = make_roi(spec, "box")
    gpu = CudaRoiCropper(spec, roi, CropSpec(size=128))
    n = 128
    try:
        with gpu.active():
            bufs = [cuda.mem_alloc(3 * n * n * 4), cuda.mem_alloc(3 * n * n * 4), cuda.mem_alloc(n * n * 4)]  # f32
            frame = make_frame(spec, 5)
            dst = gpu.crop_to_device(frame, DeviceOutputs(int(bufs[0]), int(bufs[1]), int(bufs[2])))
            gpu.stream.synchronize()
            rgb, xyz = np.empty((1, 3, n, n), np.float32), np.empty((1, 3, n, n), np.float32)
            mask = np.empty((n, n), np.float32)
            cuda.memcpy_dtoh(rgb, dst.rgb)
            cuda.memcpy_dtoh(xyz, dst.xyz)
            cuda.memcpy_dtoh(mask, dst.mask)
            for b in bufs:
                b.free()
    finally:
        gpu.close()
    ref = RoiCropper(spec, roi, CropSpec(size=128)).crop(frame)
    np.testing.assert_array_equal(mask.astype(bool), ref.mask)
    np.testing.assert_allclose(xyz, ref.xyz, atol=1e-6, rtol=0)
    np.testing.assert_allclose(rgb, ref.rgb, atol=1e-6, rtol=0)
