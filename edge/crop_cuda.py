"""CUDA ROI crop: RoiCropper's layout and sampling in one fused kernel that can write the engine's input buffers."""

from __future__ import annotations

import ctypes
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from calibration.roi import RoiFile
from edge.core.cuda_context import current, retain_primary
from edge.core.frame import Frame, StreamSpec
from edge.core.geometry import ray_table
from edge.crop import (
    CropError,
    CropLayout,
    CropOutput,
    CropSpec,
    RoiTest,
    check_frame,
    check_registered,
    crop_layout,
    normalisation,
    roi_ray_table,
    roi_silhouette,
    sample_nearest,
)

KERNEL_SOURCE = Path(__file__).with_name("crop_kernel.cu")
_CU_MEMHOSTREGISTER_PORTABLE, _CU_MEMHOSTREGISTER_DEVICEMAP = 0x01, 0x02


def _libcuda() -> ctypes.CDLL:
    """The CUDA driver library (pycuda links it too, so it is loaded whenever this module is usable)."""
    return ctypes.CDLL("libcuda.so.1")


def _cu_check(code: int, call: str) -> None:
    if code != 0:
        raise CropError(f"{call} failed with CUDA error {code}", "check the driver (nvidia-smi) and free host memory")


KERNEL_NAME = "roi_crop"
BLOCK = (16, 16, 1)


def _pycuda() -> ModuleType:
    """Import pycuda.driver, or explain how to get it (it needs the CUDA toolkit and a GPU)."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415  (optional GPU dependency)
    except ImportError as e:
        raise CropError(
            f"the CUDA crop needs pycuda, which cannot be imported ({e})",
            "install the GPU extra (pip install 'drumsight-edge[gpu]') on a machine with the CUDA toolkit, "
            "or use the CPU RoiCropper",
        ) from None
    return cast(ModuleType, cuda)


def kernel_tables(spec: StreamSpec, roi: RoiFile) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's per-pixel inputs: camera rays H×W×2 (x/z, y/z) and ROI-frame rays H×W×3, float32."""
    rays = ray_table(spec.color_intrinsics)
    return np.ascontiguousarray(rays[..., :2]), np.ascontiguousarray(roi_ray_table(rays, roi))


def kernel_silhouette(spec: StreamSpec, roi: RoiFile, crop: CropSpec, layout: CropLayout) -> np.ndarray | None:
    """The N×N uint8 silhouette table (None when ``crop.keep_depthless`` is off: the kernel gets a null pointer)."""
    if not crop.keep_depthless:
        return None
    return sample_nearest(roi_silhouette(spec.color_intrinsics, roi, crop), layout).astype(np.uint8)


def kernel_params(spec: StreamSpec, roi: RoiFile, crop: CropSpec, layout: CropLayout) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's int32 and float32 parameter blocks, in the IP_* / FP_* order of crop_kernel.cu; the float
    block ends with the cylinder's radial notches (NOTCH_FIELDS floats each, IP_NOTCHES of them)."""
    test = RoiTest.from_roi(roi)
    scale, offset = normalisation(crop)
    ip = np.array(
        [
            layout.width,
            layout.height,
            layout.x0,
            layout.y0,
            layout.side,
            layout.size,
            int(test.kind == "box"),
            int(crop.mode == "foreground"),
            int(crop.color_interpolation == "bilinear"),
            *crop.background_rgb,
            len(test.notches),
            crop.depthless_reach or 0,  # IP_REACH: 0 keeps every depthless silhouette sample (the rule before)
        ],
        dtype=np.int32,
    )
    depth_scale = np.array([spec.depth_scale], dtype=np.float32)
    fp = np.concatenate([depth_scale, test.offset, test.limits, scale, offset, test.notches.ravel()])
    fp = fp.astype(np.float32)
    return ip, fp


@dataclass(frozen=True, slots=True)
class DeviceOutputs:
    """Device pointers the kernel writes: rgb and xyz 1×3×N×N float32 (NCHW), mask 1×1×N×N float32, optional colour.

    All three are laid out as the engine's ``rgb``/``xyz``/``mask`` inputs (engines/contract.py), so the
    engine's input bindings can be passed here and the crop feeds inference with no host round trip.
    """

    rgb: int
    xyz: int
    mask: int
    color: int = 0  # N×N×3 uint8; 0 skips it


class CudaRoiCropper:
    """GPU crop with RoiCropper's API. Construct it in the thread that uses it; it uses the primary context."""

    def __init__(
        self,
        spec: StreamSpec,
        roi: RoiFile,
        crop: CropSpec | None = None,
        *,
        allow_mismatch: bool = False,
        device: int = 0,
        ptx: Path | None = None,
    ) -> None:
        cuda = _pycuda()
        check_registered(spec)
        roi.check_camera(spec, allow_mismatch=allow_mismatch)
        self.spec, self.roi, self.crop_spec = spec, roi, crop or CropSpec()
        self.layout = crop_layout(spec.color_intrinsics, roi, self.crop_spec)
        self._cuda = cuda
        self._ctx: Any = retain_primary(
            cuda, device, CropError, "check the driver with nvidia-smi and the device index, or use the CPU RoiCropper"
        )
        self._registered: list[tuple[int, int, int, Any]] = []  # (host start, end, device address or 0, array)
        self._last = DeviceOutputs(0, 0, 0)
        with self.active():
            self._module = self._load(ptx)  # kept: the function must not outlive its module
            self._fn = self._module.get_function(KERNEL_NAME)
            self._fn.prepare("P" * 11)
            self._upload_tables()
            self._alloc()
            self.stream = cuda.Stream()

    def _load(self, ptx: Path | None) -> Any:
        """The kernel module: a prebuilt PTX/cubin when given, else compiled from the .cu by pycuda (cached)."""
        if ptx is not None:
            return self._cuda.module_from_buffer(ptx.read_bytes())
        from pycuda.compiler import SourceModule  # noqa: PLC0415  (optional GPU dependency)

        return SourceModule(KERNEL_SOURCE.read_text(), no_extern_c=True, options=["--fmad=false"])

    def _upload_tables(self) -> None:
        """Ray tables, the ROI test and the normalisation go to the device once."""
        cuda = self._cuda
        rays, roi_rays = kernel_tables(self.spec, self.roi)
        ip, fp = kernel_params(self.spec, self.roi, self.crop_spec, self.layout)
        self._tables = [cuda.to_device(a) for a in (rays, roi_rays, ip, fp)]
        silhouette = kernel_silhouette(self.spec, self.roi, self.crop_spec, self.layout)
        self._silhouette = None if silhouette is None else cuda.to_device(silhouette)

    def _alloc(self) -> None:
        """Device frame and output buffers, and page-locked host outputs for crop()."""
        cuda, n, h, w = self._cuda, self.layout.size, self.layout.height, self.layout.width
        self._d_color = cuda.mem_alloc(h * w * 3)
        self._d_depth = cuda.mem_alloc(h * w * 2)
        self._owned = [cuda.mem_alloc(s) for s in (3 * n * n * 4, 3 * n * n * 4, n * n * 4, n * n * 3)]
        self.device_outputs = DeviceOutputs(*(int(a) for a in self._owned))
        self.out = CropOutput(
            rgb=cuda.pagelocked_empty((1, 3, n, n), np.float32),
            xyz=cuda.pagelocked_empty((1, 3, n, n), np.float32),
            mask=np.zeros((n, n), np.bool_),
            color=cuda.pagelocked_empty((n, n, 3), np.uint8),
        )
        self._mask_f32 = cuda.pagelocked_empty((n, n), np.float32)

    def active(self) -> AbstractContextManager[None]:
        """Make this cropper's CUDA context current (for the caller's own pycuda calls on its buffers)."""
        return current(self._cuda, self._ctx)

    def register_host(self, memory: np.ndarray, *, mapped: bool | None = None) -> str:
        """Page-lock ``memory`` (e.g. the whole shared-memory ring) so frame uploads from it are asynchronous DMA.

        ``mapped`` (default: on an integrated GPU such as a Jetson's, where CPU and GPU share DRAM) also maps it into
        the device's address space: frames that lie in it are then read by the kernel in place, with no copy at all.
        Returns how it was registered. Unregistered by :meth:`close`; ``memory`` must outlive this cropper.

        The CUDA driver API is called directly (``cuMemHostRegister``): pycuda's ``register_host_memory`` cannot
        wrap an array that is itself a view (as the ring's mapping is) under numpy 2.
        """
        cuda, lib = self._cuda, _libcuda()
        start, size = int(memory.ctypes.data), int(memory.nbytes)
        with self.active():
            if mapped is None:
                mapped = bool(self._ctx.get_device().get_attribute(cuda.device_attribute.INTEGRATED))
            flags = _CU_MEMHOSTREGISTER_PORTABLE | (_CU_MEMHOSTREGISTER_DEVICEMAP if mapped else 0)
            _cu_check(lib.cuMemHostRegister_v2(ctypes.c_void_p(start), ctypes.c_size_t(size), flags),
                      "cuMemHostRegister")  # fmt: skip
            device = 0
            if mapped:
                dptr = ctypes.c_uint64(0)
                _cu_check(lib.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), ctypes.c_void_p(start), 0),
                          "cuMemHostGetDevicePointer")  # fmt: skip
                device = int(dptr.value)
        self._registered.append((start, start + size, device, memory))
        return "mapped (zero-copy)" if mapped else "pinned (async upload)"

    def _source(self, array: np.ndarray, staging: Any) -> int:
        """The device address the kernel reads ``array`` from: in place when it lies in mapped registered memory,
        else ``staging`` after an asynchronous upload (DMA when the memory is registered, staged when pageable)."""
        a = np.ascontiguousarray(array)
        start = int(a.ctypes.data)
        for lo, hi, device, _ in self._registered:
            if device and lo <= start and start + a.nbytes <= hi:
                return device + (start - lo)
        self._cuda.memcpy_htod_async(staging, a, self.stream)
        return int(staging)

    def crop_to_device(self, frame: Frame, outputs: DeviceOutputs | None = None) -> DeviceOutputs:
        """Upload the frame and queue the kernel on ``self.stream`` writing ``outputs`` (e.g. the engine's bindings).

        Returns before the kernel finishes: enqueue the engine on the same stream, or synchronise it. The
        frame's host arrays must stay unchanged until the stream is synchronised when they lie in registered or
        mapped memory (:meth:`register_host`); copies from pageable memory are staged before returning.
        """
        check_frame(frame, self.layout)
        dst = outputs or self.device_outputs
        n = self.layout.size
        grid = ((n + BLOCK[0] - 1) // BLOCK[0], (n + BLOCK[1] - 1) // BLOCK[1])
        with self.active():
            color = self._source(frame.color, self._d_color)
            depth = self._source(frame.depth, self._d_depth)
            silhouette = 0 if self._silhouette is None else int(self._silhouette)
            args = [color, depth, *(int(t) for t in self._tables), silhouette]
            self._fn.prepared_async_call(grid, BLOCK, self.stream, *args, dst.rgb, dst.xyz, dst.mask, dst.color)
        self._last = dst
        return dst

    def crop_into(
        self, frame: Frame, *, rgb: int | None = None, xyz: int | None = None, mask: int | None = None
    ) -> None:
        """Crop on the GPU into the given device buffers (an engine's inputs; None: this cropper's own), then bring
        the mask and colour crop back to ``self.out`` (gating reads the mask; evidence the colour) and synchronise,
        so the frame's memory may be released. ``self.out.rgb``/``xyz`` are not updated: see download_inputs()."""
        own = self.device_outputs
        d = self.crop_to_device(frame, DeviceOutputs(rgb or own.rgb, xyz or own.xyz, mask or own.mask, own.color))
        cuda, out = self._cuda, self.out
        with self.active():
            cuda.memcpy_dtoh_async(self._mask_f32, d.mask, self.stream)
            cuda.memcpy_dtoh_async(out.color, d.color, self.stream)
            self.stream.synchronize()
        np.greater(self._mask_f32, np.float32(0), out=out.mask)

    def download_inputs(self) -> None:
        """Copy the last crop's rgb/xyz from wherever the kernel wrote them into ``self.out`` (bench, parity)."""
        cuda, out, d = self._cuda, self.out, self._last
        with self.active():
            cuda.memcpy_dtoh_async(out.rgb, d.rgb, self.stream)
            cuda.memcpy_dtoh_async(out.xyz, d.xyz, self.stream)
            self.stream.synchronize()

    def crop(self, frame: Frame) -> CropOutput:
        """Crop on the GPU and copy the results to host buffers (same contract as RoiCropper.crop)."""
        d = self.crop_to_device(frame)
        out, cuda = self.out, self._cuda
        with self.active():
            cuda.memcpy_dtoh_async(out.rgb, d.rgb, self.stream)
            cuda.memcpy_dtoh_async(out.xyz, d.xyz, self.stream)
            cuda.memcpy_dtoh_async(self._mask_f32, d.mask, self.stream)
            cuda.memcpy_dtoh_async(out.color, d.color, self.stream)
            self.stream.synchronize()
        np.greater(self._mask_f32, np.float32(0), out=out.mask)
        return out

    def close(self) -> None:
        """Free device memory and release the primary context. Safe to call twice."""
        if self._ctx is None:
            return
        with self.active():
            self.stream.synchronize()
            for start, _, _, _ in self._registered:
                _cu_check(_libcuda().cuMemHostUnregister(ctypes.c_void_p(start)), "cuMemHostUnregister")
            self._registered = []
            for a in [*self._owned, *self._tables, self._d_color, self._d_depth]:
                a.free()
            if self._silhouette is not None:
                self._silhouette.free()
        self._ctx.detach()
        self._ctx = None
