"""Raw RGB-D frame + calibrated 3D ROI → the models' input tensors (foreground mask, colour, organised xyz).

Geometry is fixed at start-up: the ROI shape is projected once into a square crop window of the colour image,
and every output pixel is bound to source pixels by one sampling rule shared with the CUDA kernel
(``edge/crop_kernel.cu``). For an output of ``N×N`` pixels over a window ``[x0, x0 + side)`` (same for y)
output pixel ``(i, j)`` looks at the continuous source coordinate (pixel centres at integers, as the SDK)::

    x(j) = x0 + (j + 0.5) · side / N − 0.5

- mask and xyz (nearest, never blending foreground with background):
  ``ix(j) = x0 + ⌊(2j + 1) · side / (2N)⌋`` — integer arithmetic, so CPU and GPU pick the same pixel;
- colour (bilinear): ``x(j)`` quantised to 1/32 px, ``X = ⌊(32 · (2j + 1) · side + N) / (2N)⌋ + 32 · x0 − 16``,
  ``ix = X >> 5``, ``ax = X & 31``; the four neighbours weigh ``(32 − ax)(32 − ay)``, ``ax (32 − ay)``, … (sum 1024)
  and the value is ``(Σ w · v + 512) >> 10``. This is exactly OpenCV's fixed-point ``remap`` (INTER_LINEAR,
  5 fractional bits, BORDER_CONSTANT), which the CPU path calls; neighbours outside the image read the
  background colour. Bilinear rather than area: the window is usually 1–2× the output, where area and
  bilinear look alike, and bilinear is one closed formula the kernel reproduces bit for bit.

In ``foreground`` mode the colour of every output pixel whose mask is False is set to the background colour
after resizing; a kept pixel at the ROI's edge may blend in up to one source pixel of its background neighbour
(bilinear footprint), while mask and xyz never blend. ``full`` mode keeps the scene and zeroes nothing but missing
depth; both modes share the window, so their outputs are pixel-aligned.

Only the N×N sampled pixels are deprojected and tested against the ROI (never the full frame): with nearest
sampling that is the same answer as testing at full resolution and resizing, at a fraction of the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from calibration.roi import CylinderShape, RoiFile
from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.frame import Frame, Intrinsics, StreamSpec
from edge.core.geometry import project_points, ray_table, transform_points

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Q = 32  # colour coordinates are quantised to 1/Q pixel (OpenCV's INTER_TAB_SIZE)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class CropError(EdgeError):
    """The crop cannot be set up or applied (ROI out of view, frame of the wrong shape)."""


class DepthNotRegisteredError(CropError):
    """Depth is in the depth sensor's frame, so pixel (u, v) of depth and colour are not the same point."""


class CropSpec(EdgeModel):
    """How a frame becomes model input: which mode, what size, how colour is normalised."""

    type: Literal["roi_crop"] = "roi_crop"
    mode: Literal["foreground", "full"] = Field(
        default="foreground",
        description="foreground: pixels outside the ROI become background; full: the original scene, same geometry",
    )
    size: int = Field(default=256, ge=8, le=4096, description="side of the square model input in pixels")
    mean: tuple[float, float, float] = Field(default=IMAGENET_MEAN, description="per-channel RGB mean on [0, 1]")
    std: tuple[float, float, float] = Field(default=IMAGENET_STD, description="per-channel RGB std on [0, 1]")
    background_rgb: tuple[int, int, int] = Field(
        default=(0, 0, 0), description="colour given to background and out-of-image pixels (0–255 RGB)"
    )
    color_interpolation: Literal["bilinear", "nearest"] = Field(
        default="bilinear", description="colour resize rule; mask and xyz are always nearest"
    )
    keep_depthless: bool = Field(
        default=True,
        description="a pixel without depth counts as foreground when it lies inside the ROI's projected silhouette "
        "(specular spots and edge dropout on the drum keep their colour); False: only pixels with depth inside the ROI",
    )
    pad_px: int = Field(default=2, ge=0, le=256, description="grown on every side of the ROI's projected box")
    surface_samples: int = Field(default=64, ge=8, le=1024, description="samples per ROI edge when projecting it")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std must be > 0 in every channel")
        return v

    @field_validator("background_rgb")
    @classmethod
    def _byte_colour(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 0 or max(v) > 255:
            raise ValueError("background_rgb channels must lie in 0..255")
        return v


@dataclass(frozen=True, slots=True)
class CropLayout:
    """The start-up geometry both crop paths share: the square window and its per-axis sampling indices."""

    x0: int
    y0: int
    side: int
    size: int
    width: int  # source image size
    height: int
    bbox: tuple[int, int, int, int]  # projected ROI box before squaring: u_min, v_min, u_max, v_max (inclusive)

    def nearest(self) -> tuple[I64, I64]:
        """Source column and row of every output column and row (may fall outside the image: padding)."""
        return nearest_indices(self.x0, self.side, self.size), nearest_indices(self.y0, self.side, self.size)

    def bilinear_q(self) -> tuple[I64, I64]:
        """Colour sample coordinates in 1/Q pixel (integers) for every output column and row."""
        return bilinear_indices_q(self.x0, self.side, self.size), bilinear_indices_q(self.y0, self.side, self.size)


@dataclass(slots=True)
class CropOutput:
    """Model inputs of one frame. The arrays are the cropper's own buffers: valid until its next call."""

    rgb: F32  # 1×3×N×N float32, (c/255 − mean) / std; background = normalised background colour
    xyz: F32  # 1×3×N×N float32 metres in the colour camera frame; 0 where no depth (and background in foreground)
    mask: npt.NDArray[np.bool_]  # N×N, True where the sampled point has depth and lies inside the ROI (+margin)
    color: npt.NDArray[np.uint8]  # N×N×3 uint8 RGB, the resized crop before normalisation (previews, debugging)

    @property
    def xyz_hwc(self) -> F32:
        """The organised point cloud as N×N×3 (MVTec 3D-AD layout), a view of ``xyz``."""
        hwc: F32 = self.xyz[0].transpose(1, 2, 0)
        return hwc


def nearest_indices(start: int, side: int, size: int) -> I64:
    """``start + ⌊(2k + 1)·side / (2·size)⌋`` for k < size: the pixel holding each output sample's centre."""
    k = np.arange(size, dtype=np.int64)
    return start + ((2 * k + 1) * side) // (2 * size)


def bilinear_indices_q(start: int, side: int, size: int) -> I64:
    """``round_half_up(Q·x(k))`` with ``x(k) = start + (k + 0.5)·side/size − 0.5``, exactly in integers."""
    k = np.arange(size, dtype=np.int64)
    return (Q * (2 * k + 1) * side + size) // (2 * size) + Q * start - Q // 2


def roi_surface_points(roi: RoiFile, n: int) -> npt.NDArray[np.float64]:
    """Points on the ROI shape grown by its margin, in the camera frame (its projection hull is the ROI's)."""
    m = roi.margin_m
    if isinstance(roi.shape, CylinderShape):
        r, h = roi.shape.radius_m + m, roi.shape.length_m / 2 + m
        theta = np.linspace(0.0, 2 * np.pi, 4 * n, endpoint=False)
        z = np.linspace(-h, h, n)
        rad = np.linspace(0.0, r, max(n // 4, 2))
        side = np.stack(np.broadcast_arrays(r * np.cos(theta)[None], r * np.sin(theta)[None], z[:, None]), -1)
        cap = np.stack(np.broadcast_arrays(rad[:, None] * np.cos(theta), rad[:, None] * np.sin(theta), h), -1)
        capm = cap * np.array([1.0, 1.0, -1.0])
        local = np.concatenate([side.reshape(-1, 3), cap.reshape(-1, 3), capm.reshape(-1, 3)])
    else:
        half = np.asarray(roi.shape.extents_m) / 2 + m
        g = np.linspace(-1.0, 1.0, n)
        cube = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        local = cube[np.any(np.abs(cube) == 1.0, axis=1)] * half
    return transform_points(roi.pose, local)


def _window(lo: int, hi: int, side: int, limit: int) -> int:
    """Start of a ``side``-long window centred on [lo, hi], shifted inside [0, limit) when it fits, else centred."""
    start = lo - (side - (hi - lo + 1)) // 2
    if side <= limit:
        return min(max(start, 0), limit - side)
    return -((side - limit) // 2)


def crop_layout(intr: Intrinsics, roi: RoiFile, crop: CropSpec) -> CropLayout:
    """Project the ROI once, take its bounding box (+pad), square it and place it against the image borders.

    The box is clipped to the image; the square grows the short side about the centre and is shifted back inside
    the image when it fits, else centred with the overhang as padding (background, no depth). Projection ignores
    lens distortion (``project_points``); ``pad_px`` absorbs the residual for near-zero distortion such as the
    D4xx colour stream.
    """
    pts = roi_surface_points(roi, crop.surface_samples)
    if float(pts[:, 2].min()) < 0.01:
        raise CropError(
            f"the ROI reaches {pts[:, 2].min():.3f} m in front of the camera (must be ≥ 0.01 m everywhere)",
            "check T_camera_roi in roi.yaml (z must point away from the camera) or recalibrate with edge-calibrate",
        )
    uv = project_points(pts, intr)
    u_lo, v_lo = (np.floor(uv.min(axis=0) + 0.5).astype(int) - crop.pad_px).tolist()
    u_hi, v_hi = (np.floor(uv.max(axis=0) + 0.5).astype(int) + crop.pad_px).tolist()
    if u_hi < 0 or v_hi < 0 or u_lo >= intr.width or v_lo >= intr.height:
        raise CropError(
            f"the ROI projects to pixels u {u_lo}..{u_hi}, v {v_lo}..{v_hi}, outside the "
            f"{intr.width}×{intr.height} image",
            "the ROI was calibrated for another view: recalibrate with edge-calibrate",
        )
    u_lo, v_lo = max(u_lo, 0), max(v_lo, 0)
    u_hi, v_hi = min(u_hi, intr.width - 1), min(v_hi, intr.height - 1)
    side = max(u_hi - u_lo + 1, v_hi - v_lo + 1)
    return CropLayout(
        x0=_window(u_lo, u_hi, side, intr.width),
        y0=_window(v_lo, v_hi, side, intr.height),
        side=side,
        size=crop.size,
        width=intr.width,
        height=intr.height,
        bbox=(u_lo, v_lo, u_hi, v_hi),
    )


def roi_silhouette(intr: Intrinsics, roi: RoiFile, crop: CropSpec) -> npt.NDArray[np.bool_]:
    """H×W image of the ROI's projected silhouette: the filled convex hull of its projected surface.

    The projection of a convex body (cylinder, box) is convex, so the hull is the silhouette. It decides the
    pixels whose 3D position is unknown (no depth): inside it they belong to the part (a specular spot on the
    drum), outside to the background. Computed once at start-up.
    """
    uv = project_points(roi_surface_points(roi, crop.surface_samples), intr)
    hull = cv2.convexHull(np.round(uv).astype(np.int32))
    image = np.zeros((intr.height, intr.width), dtype=np.uint8)
    cv2.fillConvexPoly(image, hull, 1)
    return image.astype(bool)


def sample_nearest(image: npt.NDArray[np.bool_], layout: CropLayout) -> npt.NDArray[np.bool_]:
    """An H×W table sampled at the crop's nearest pixels (False outside the image): N×N."""
    ix, iy = layout.nearest()
    inside = ((ix >= 0) & (ix < layout.width))[None, :] & ((iy >= 0) & (iy < layout.height))[:, None]
    values = image[np.clip(iy, 0, layout.height - 1)[:, None], np.clip(ix, 0, layout.width - 1)[None, :]]
    return values & inside


def check_registered(spec: StreamSpec) -> None:
    """Refuse depth that is not pixel-registered to colour: the crop reads both at the same (u, v)."""
    if not spec.depth_aligned_to_color:
        raise DepthNotRegisteredError(
            f"depth of stream {spec.source or spec.serial!r} is not aligned to colour",
            "open the source with align_to_color=True (rs.align to the colour stream) before cropping",
        )
    if spec.depth_shape != spec.color_shape[:2]:
        raise DepthNotRegisteredError(
            f"aligned depth is {spec.depth_shape} but colour is {spec.color_shape[:2]}",
            "the source must report depth intrinsics equal to the colour intrinsics after alignment",
        )


def check_frame(frame: Frame, layout: CropLayout) -> None:
    """Refuse a frame the cropper was not built for (unregistered depth, another resolution)."""
    if not frame.spec.depth_aligned_to_color:
        check_registered(frame.spec)
    h, w = layout.height, layout.width
    if frame.depth.shape != (h, w) or frame.color.shape != (h, w, 3):
        raise CropError(
            f"frame has colour {frame.color.shape} and depth {frame.depth.shape}, the cropper was built for {w}×{h}",
            "build the cropper from this stream's spec (the camera profile changed?)",
        )


def roi_ray_table(rays: F32, roi: RoiFile) -> F32:
    """Rays expressed in the ROI frame, ``Rᵀ·ray``, so a point's ROI coordinates are ``z·Rᵀray − Rᵀt``."""
    R = roi.pose[:3, :3]
    return (rays.astype(np.float64) @ R).astype(np.float32)


@dataclass(frozen=True, slots=True)
class RoiTest:
    """The ROI inequality in float32, identical on CPU and GPU: ``l = a·z + b`` then a cylinder or box bound."""

    offset: F32  # b = −Rᵀt, 3 floats
    kind: Literal["cylinder", "box"]
    limits: F32  # cylinder: (r², half length, 0); box: half extents — all grown by the margin

    @classmethod
    def from_roi(cls, roi: RoiFile) -> RoiTest:
        T = roi.pose
        b = (-(T[:3, :3].T @ T[:3, 3])).astype(np.float32)
        m = roi.margin_m
        if isinstance(roi.shape, CylinderShape):
            r, h = roi.shape.radius_m + m, roi.shape.length_m / 2 + m
            return cls(b, "cylinder", np.array([r * r, h, 0.0], dtype=np.float32))
        return cls(b, "box", (np.asarray(roi.shape.extents_m) / 2 + m).astype(np.float32))


def normalisation(crop: CropSpec) -> tuple[F32, F32]:
    """float32 scale and offset per channel: ``value·scale + offset == (value/255 − mean)/std``."""
    std = np.asarray(crop.std, dtype=np.float64)
    mean = np.asarray(crop.mean, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


class RoiCropper:
    """CPU crop: all tables built in the constructor, every per-frame buffer preallocated and reused."""

    def __init__(
        self, spec: StreamSpec, roi: RoiFile, crop: CropSpec | None = None, *, allow_mismatch: bool = False
    ) -> None:
        check_registered(spec)
        roi.check_camera(spec, allow_mismatch=allow_mismatch)
        self.spec, self.roi, self.crop_spec = spec, roi, crop or CropSpec()
        intr = spec.color_intrinsics
        self.layout = crop_layout(intr, roi, self.crop_spec)
        self.rays = ray_table(intr)
        self.roi_rays = roi_ray_table(self.rays, roi)
        self.test = RoiTest.from_roi(roi)
        self.scale, self.offset = normalisation(self.crop_spec)
        # value·scale + offset, rounded after each step exactly as the kernel does, for all 256 byte values
        self._lut = (np.arange(256, dtype=np.float32)[:, None] * self.scale + self.offset)[None].astype(np.float32)
        self._bg_value = tuple(float(c) for c in self.crop_spec.background_rgb)
        self._build_tables()
        self._alloc()
        self.silhouette: npt.NDArray[np.bool_] | None = (
            sample_nearest(roi_silhouette(intr, roi, self.crop_spec), self.layout).reshape(-1)
            if self.crop_spec.keep_depthless
            else None
        )

    def _build_tables(self) -> None:
        """Gather the ray tables at the N×N sample pixels once; out-of-image samples get scale 0 (no depth)."""
        lay, w = self.layout, self.spec.color_intrinsics.width
        ix, iy = lay.nearest()
        valid = ((ix >= 0) & (ix < lay.width))[None, :] & ((iy >= 0) & (iy < lay.height))[:, None]
        idx = np.where(valid, iy[:, None] * w + ix[None, :], 0).ravel()
        self._idx = idx.astype(np.intp)
        self._scale_s = np.where(valid.ravel(), np.float32(self.spec.depth_scale), np.float32(0)).astype(np.float32)
        flat = self.rays.reshape(-1, 3)
        self._rx, self._ry = flat[idx, 0].copy(), flat[idx, 1].copy()
        roi_flat = self.roi_rays.reshape(-1, 3)
        self._a = [roi_flat[idx, k].copy() for k in range(3)]
        if self.crop_spec.color_interpolation == "bilinear":
            qx, qy = lay.bilinear_q()
            fx, fy = (qx / Q).astype(np.float32), (qy / Q).astype(np.float32)
            interp = cv2.INTER_LINEAR
        else:
            fx, fy = ix.astype(np.float32), iy.astype(np.float32)
            interp = cv2.INTER_NEAREST
        mx, my = np.broadcast_to(fx[None, :], (lay.size, lay.size)), np.broadcast_to(fy[:, None], (lay.size, lay.size))
        self._map1, self._map2 = cv2.convertMaps(
            np.ascontiguousarray(mx),
            np.ascontiguousarray(my),
            cv2.CV_16SC2,
            nninterpolation=interp == cv2.INTER_NEAREST,
        )
        self._interp = interp

    def _alloc(self) -> None:
        n = self.layout.size
        self.out = CropOutput(
            rgb=np.zeros((1, 3, n, n), dtype=np.float32),
            xyz=np.zeros((1, 3, n, n), dtype=np.float32),
            mask=np.zeros((n, n), dtype=np.bool_),
            color=np.zeros((n, n, 3), dtype=np.uint8),
        )
        self._d16 = np.empty(n * n, dtype=np.uint16)
        self._l = [np.empty(n * n, dtype=np.float32) for _ in range(3)]
        self._inv = np.empty((n, n), dtype=np.bool_)
        self._rgb_hwc = np.empty((n, n, 3), dtype=np.float32)
        self._zeros = np.zeros((n, n), dtype=np.float32)
        self._bg_image = np.empty((n, n, 3), dtype=np.uint8)
        self._bg_image[:] = self.crop_spec.background_rgb
        self._tmp = np.empty(n * n, dtype=np.bool_)

    def crop(self, frame: Frame) -> CropOutput:
        """Crop one frame into the preallocated outputs (returned; overwritten by the next call)."""
        check_frame(frame, self.layout)
        out, n2 = self.out, self.layout.size**2
        mask = out.mask.reshape(n2)
        x, y, z = (out.xyz[0, k].reshape(n2) for k in range(3))
        np.take(frame.depth.reshape(-1), self._idx, out=self._d16, mode="clip")  # 'raise' buffers
        np.copyto(z, self._d16)  # cast first: a casting multiply would allocate numpy's 32 KB ufunc buffer
        np.multiply(z, self._scale_s, out=z)
        np.multiply(self._rx, z, out=x)
        np.multiply(self._ry, z, out=y)
        self._roi_mask(z, mask)
        np.logical_not(out.mask, out=self._inv)
        if self.crop_spec.mode == "foreground":
            inv = self._inv.view(np.uint8)
            for plane in out.xyz[0]:
                cv2.copyTo(self._zeros, inv, dst=plane)
        self._colour(frame.color)
        return out

    def _roi_mask(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """mask = (z > 0 and the ROI inequality on ``l = a·z + b``) or (z == 0 and inside the silhouette).

        The inequality uses the same float32 operations as the kernel.
        """
        self._roi_test(z, mask)
        if self.silhouette is not None:
            np.equal(z, np.float32(0), out=self._tmp)
            self._tmp &= self.silhouette
            mask |= self._tmp

    def _roi_test(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """(z > 0) and the ROI inequality."""
        l0, l1, l2 = self._l
        tmp, b, lim = self._tmp, self.test.offset, self.test.limits
        for k, lk in enumerate(self._l):
            np.multiply(self._a[k], z, out=lk)
            np.add(lk, b[k], out=lk)
        np.greater(z, np.float32(0), out=mask)
        if self.test.kind == "cylinder":
            np.multiply(l0, l0, out=l0)
            np.multiply(l1, l1, out=l1)
            np.add(l0, l1, out=l0)
            np.less_equal(l0, lim[0], out=tmp)
            mask &= tmp
            np.abs(l2, out=l2)
            np.less_equal(l2, lim[1], out=tmp)
            mask &= tmp
            return
        for k, lk in enumerate(self._l):
            np.abs(lk, out=lk)
            np.less_equal(lk, lim[k], out=tmp)
            mask &= tmp

    def _colour(self, color: npt.NDArray[np.uint8]) -> None:
        """Resize (background outside the image), paint the background, normalise through a LUT, go planar."""
        out = self.out
        cv2.remap(
            color,
            self._map1,
            self._map2,
            self._interp,
            dst=out.color,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self._bg_value,
        )
        if self.crop_spec.mode == "foreground":
            cv2.copyTo(self._bg_image, self._inv.view(np.uint8), dst=out.color)
        cv2.LUT(out.color, self._lut, dst=self._rgb_hwc)
        np.copyto(out.rgb[0], self._rgb_hwc.transpose(2, 0, 1))


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropError",
    "CropLayout",
    "CropOutput",
    "CropSpec",
    "DepthNotRegisteredError",
    "RoiCropper",
    "RoiTest",
    "bilinear_indices_q",
    "check_frame",
    "check_registered",
    "crop_layout",
    "nearest_indices",
    "normalisation",
    "roi_ray_table",
    "roi_silhouette",
    "roi_surface_points",
    "sample_nearest",
]
