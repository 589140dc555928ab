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
depth; both modes share the window, so their outputs are pixel-aligned. ``image`` mode is ``full`` over the centred
square window holding the whole image (:func:`image_layout`) and needs no ROI: without one the mask is "the sampled
point has depth"; with one it is the ROI mask as above, on that whole-image window (how a model that learns its own
foreground, BAAD, is trained and checked against the calibration).

A sample without depth is foreground (with ``keep_depthless``) when it lies inside the ROI's projected silhouette
and, with ``depthless_reach`` r (default), a sample with depth inside the ROI lies within r samples of it on each of
its four sides (row left/right, column up/down): holes in the drum keep their colour, the margin ring's stereo
shadow, dropout and speckle do not (``EnclosedDepthless``; the kernel's ``enclosed`` gives the same answer).

Only the N×N sampled pixels are deprojected and tested against the ROI (never the full frame): with nearest
sampling that is the same answer as testing at full resolution and resizing, at a fraction of the work. The test is
the kernel's float32 inequality; at start-up it is solved once per sample pixel for every raw depth value
(``depth_runs``), so per frame it is two integer comparisons per run of passing depths (one run, up to four
where radial notches split a ray's passage) giving the very same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from calibration.roi import CylinderShape, RoiFile, notch_cuts
from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.frame import Frame, Intrinsics, StreamSpec
from edge.core.geometry import project_points, ray_table, transform_points

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Q = 32  # colour coordinates are quantised to 1/Q pixel (OpenCV's INTER_TAB_SIZE)
DEPTHLESS_REACH = 16  # CropSpec.depthless_reach's default, in output samples
MAX_DEPTHLESS_REACH = 64  # the kernel's bounded search: at most 4 × this many neighbours per depthless sample

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class CropError(EdgeError):
    """The crop cannot be set up or applied (ROI out of view, frame of the wrong shape)."""


class DepthNotRegisteredError(CropError):
    """Depth is in the depth sensor's frame, so pixel (u, v) of depth and colour are not the same point."""


class CropSpec(EdgeModel):
    """How a frame becomes model input: which mode, what size, how colour is normalised."""

    type: Literal["roi_crop"] = "roi_crop"
    mode: Literal["foreground", "full", "image"] = Field(
        default="foreground",
        description="foreground: pixels outside the ROI become background; full: the original scene, same geometry; "
        "image: the whole camera image (no ROI needed; the mask is the ROI's when one is given, else valid depth)",
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
        description="a pixel without depth may count as foreground (specular spots and dropout on the drum keep "
        "their colour), by the rule of depthless_reach; False: only pixels with depth inside the ROI",
    )
    depthless_reach: int | None = Field(
        default=DEPTHLESS_REACH,
        ge=1,
        le=MAX_DEPTHLESS_REACH,
        description="with keep_depthless, a sample without depth inside the ROI's projected silhouette is foreground "
        "only when it is enclosed: a sample with depth inside the ROI lies within this many output samples of it on "
        "both sides along its row and on both sides along its column. So holes in the drum keep their colour, while "
        "the background's stereo shadow, edge dropout and speckle in the silhouette's margin ring (or beyond the "
        "drum's outline) stay background. None: every depthless sample in the silhouette is foreground (the rule of "
        "models trained before this field existed; their cards select it)",
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
        for notch in roi.shape.notches:  # points a notch cuts move in to its radius: the notched surface
            rho = np.hypot(local[:, 0], local[:, 1])
            cut = notch_cuts(notch, local, rho * rho)
            local[cut, :2] *= (notch.radius_m / rho[cut])[:, None]
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


def image_layout(width: int, height: int, size: int) -> CropLayout:
    """The centred square window holding the whole ``width``×``height`` image, sampled to ``size``² (the short side
    padded with background and no depth): the ``image`` crop mode's window, and the scene crop's."""
    side = max(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return CropLayout(x0, y0, side, size, width, height, (0, 0, width - 1, height - 1))


def roi_silhouette(intr: Intrinsics, roi: RoiFile, crop: CropSpec) -> npt.NDArray[np.bool_]:
    """H×W image of the ROI's projected silhouette: the filled convex hull of its projected surface.

    The projection of a convex body (cylinder, box) is convex, so the hull is the silhouette. It bounds the
    pixels whose 3D position is unknown (no depth) that may belong to the part (a specular spot on the drum;
    ``CropSpec.depthless_reach`` keeps only the enclosed ones), outside it they are background. Computed once at
    start-up.
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


def nearest_window(layout: CropLayout) -> tuple[slice, slice] | None:
    """Rows and columns of the window when ``cv2.resize(INTER_NEAREST_EXACT)`` of it picks exactly ``nearest()``.

    That resize is the cheapest nearest gather (it reads the window, not a 65 536-entry index table). It needs
    the window inside the image, and its 16.16 fixed-point stepping is checked once against the exact integer
    rule: it is off by a pixel for some sizes (mostly when upscaling). None: use the indexed gather.
    """
    x0, y0, side, n = layout.x0, layout.y0, layout.side, layout.size
    if x0 < 0 or y0 < 0 or x0 + side > layout.width or y0 + side > layout.height:
        return None
    ramp = np.tile(np.arange(side, dtype=np.uint16), (side, 1))  # ramp[r, c] = c: a pixel's value is its column
    columns = cv2.resize(ramp, (n, n), interpolation=cv2.INTER_NEAREST_EXACT)[0]
    rows = cv2.resize(np.ascontiguousarray(ramp.T), (n, n), interpolation=cv2.INTER_NEAREST_EXACT)[:, 0]
    expected = nearest_indices(0, side, n)
    if not (np.array_equal(columns, expected) and np.array_equal(rows, expected)):
        return None
    return slice(y0, y0 + side), slice(x0, x0 + side)


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


NOTCH_FIELDS = 7  # a notch in the kernel's float block: a_x, a_y, b_x, b_y, z_from, z_to, r²


@dataclass(frozen=True, slots=True)
class RoiTest:
    """The ROI inequality in float32, identical on CPU and GPU: ``l = a·z + b`` then a cylinder or box bound,
    less the cylinder's radial notches (``calibration.roi.RadialNotch``)."""

    offset: F32  # b = −Rᵀt, 3 floats
    kind: Literal["cylinder", "box"]
    limits: F32  # cylinder: (r², half length, 0); box: half extents — all grown by the margin
    notches: F32  # K×7 (NOTCH_FIELDS): sector edge vectors a and b, axial range, r² of the notch; K = 0 for most

    @classmethod
    def from_roi(cls, roi: RoiFile) -> RoiTest:
        T = roi.pose
        b = (-(T[:3, :3].T @ T[:3, 3])).astype(np.float32)
        m = roi.margin_m
        if isinstance(roi.shape, CylinderShape):
            r, h = roi.shape.radius_m + m, roi.shape.length_m / 2 + m
            rows = [[*n.edges()[0], *n.edges()[1], n.z_from_m, n.z_to_m, n.radius_m**2] for n in roi.shape.notches]
            notches = np.array(rows, dtype=np.float32).reshape(-1, NOTCH_FIELDS)
            return cls(b, "cylinder", np.array([r * r, h, 0.0], dtype=np.float32), notches)
        box = (np.asarray(roi.shape.extents_m) / 2 + m).astype(np.float32)
        return cls(b, "box", box, np.zeros((0, NOTCH_FIELDS), dtype=np.float32))


DEPTH_CODES = 1 << 16  # raw depth is uint16
RUN_CHECK_BUDGET = 1 << 26  # most inequality evaluations depth_runs may spend at start-up (about 1 s)


def roi_inequality(
    coords: F32,
    test: RoiTest,
    out: npt.NDArray[np.bool_],
    scratch: npt.NDArray[np.bool_],
    *,
    work: F32 | None = None,
    scratch2: npt.NDArray[np.bool_] | None = None,
) -> None:
    """The ROI inequality on ROI-frame coordinates ``coords`` (3×P, overwritten) into ``out``, as the kernel does.

    A cylinder with notches needs ``work`` (3×P float32) and ``scratch2`` (P bool); they are allocated when not
    given (start-up), and the per-frame caller passes its own.
    """
    lim = test.limits
    if test.kind == "cylinder":
        if len(test.notches):
            _notched_cylinder(coords, test, out, scratch, work=work, term=scratch2)
            return
        np.multiply(coords[:2], coords[:2], out=coords[:2])
        np.add(coords[0], coords[1], out=coords[0])
        np.less_equal(coords[0], lim[0], out=out)
        np.abs(coords[2], out=coords[2])
        np.less_equal(coords[2], lim[1], out=scratch)
        out &= scratch
        return
    np.abs(coords, out=coords)
    np.less_equal(coords[0], lim[0], out=out)
    for k in (1, 2):
        np.less_equal(coords[k], lim[k], out=scratch)
        out &= scratch


def _notched_cylinder(
    coords: F32,
    test: RoiTest,
    out: npt.NDArray[np.bool_],
    keep: npt.NDArray[np.bool_],
    *,
    work: F32 | None,
    term: npt.NDArray[np.bool_] | None,
) -> None:
    """The cylinder bound, then each notch: a point stays unless it is in the notch's sector (both edge cross
    products ≥ 0), within its axial range and beyond its radius. Same float32 operations as the kernel's."""
    count = coords.shape[1]
    w = np.empty((3, count), dtype=np.float32) if work is None else work
    t = np.empty(count, dtype=np.bool_) if term is None else term
    l0, l1, l2 = coords
    rho2, p, q = w
    np.multiply(l0, l0, out=p)
    np.multiply(l1, l1, out=q)
    np.add(p, q, out=rho2)
    np.less_equal(rho2, test.limits[0], out=out)
    np.abs(l2, out=p)
    np.less_equal(p, test.limits[1], out=t)
    out &= t
    for ax, ay, bx, by, z_from, z_to, r2 in test.notches:
        np.multiply(ax, l1, out=p)  # a × l = a_x·l1 − a_y·l0
        np.multiply(ay, l0, out=q)
        np.subtract(p, q, out=p)
        np.less(p, 0, out=keep)
        np.multiply(l0, by, out=p)  # l × b = l0·b_y − l1·b_x
        np.multiply(l1, bx, out=q)
        np.subtract(p, q, out=p)
        np.less(p, 0, out=t)
        keep |= t
        np.less(l2, z_from, out=t)
        keep |= t
        np.greater(l2, z_to, out=t)
        keep |= t
        np.less_equal(rho2, r2, out=t)
        keep |= t
        out &= keep


def _single_bound(test: RoiTest, k: int, c: F32) -> npt.NDArray[np.bool_]:
    """The bound on coordinate k alone that the inequality implies: ``|l_k| ≤ limit``, or ``l_k² ≤ r²`` (cylinder)."""
    lim = test.limits
    if test.kind == "cylinder" and k < 2:
        inside: npt.NDArray[np.bool_] = np.multiply(c, c) <= lim[0]
    else:
        inside = np.abs(c) <= lim[1 if test.kind == "cylinder" else k]
    return inside


def _run_edge(a_k: F32, test: RoiTest, k: int, zs: F32, *, end: bool) -> I64:
    """Per pixel, the first d ≥ 1 of coordinate k's run (``end``: the first d after it; 65536 if none), by bisection.

    ``u = ±l_k`` rises with d. "u ≥ 0 or bound" is False then True along d (below zero |u| falls, so once the
    bound holds it keeps holding); "u ≤ 0 or bound" is True then False, and its negation marks the run's end.
    """
    sign = np.where(a_k >= 0, np.float32(1), np.float32(-1))
    lo, hi = np.ones(len(a_k), dtype=np.int64), np.full(len(a_k), DEPTH_CODES, dtype=np.int64)
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        u = sign * np.add(np.multiply(a_k, zs[np.minimum(mid, DEPTH_CODES - 1)]), test.offset[k])
        inside = _single_bound(test, k, u)
        ok = ~((u <= 0) | inside) if end else (u >= 0) | inside
        hi = np.where(open_ & ok, mid, hi)
        lo = np.where(open_ & ~ok, mid + 1, lo)
    return lo


def _coordinate_runs(a: F32, test: RoiTest, zs: F32) -> tuple[I64, I64]:
    """Per pixel, the run of d ≥ 1 where all three single-coordinate bounds hold (empty: lo > hi)."""
    lo, hi = np.ones(a.shape[1], dtype=np.int64), np.full(a.shape[1], DEPTH_CODES - 1, dtype=np.int64)
    for k in range(3):
        lo = np.maximum(lo, _run_edge(a[k], test, k, zs, end=False))
        hi = np.minimum(hi, _run_edge(a[k], test, k, zs, end=True) - 1)
    return lo, hi


def _passing_runs(a: F32, test: RoiTest, zs: F32, lo: I64, hi: I64, *, most: int) -> tuple[I64, I64, I64]:
    """Per pixel, the first ``most`` runs of passing d within [lo, hi] (first and last d of each, ``most``×P; none:
    1 > 0) and how many runs there are, evaluating every d of [lo, hi].

    Offset by offset along the runs, longest runs first, so the pixels still running are always a prefix.
    """
    lengths = np.maximum(hi - lo + 1, 0)
    order = np.argsort(-lengths, kind="stable")
    a_s, lo_s, neg_len = a[:, order], lo[order], -lengths[order]
    count = len(order)
    first, last = np.ones((most, count), np.int64), np.zeros((most, count), np.int64)
    runs = np.zeros(count, np.int64)
    coords = np.empty((3, count), dtype=np.float32)
    ok, scratch = np.empty(count, dtype=np.bool_), np.empty(count, dtype=np.bool_)
    prev, start = np.zeros(count, dtype=np.bool_), np.empty(count, dtype=np.bool_)
    for offset in range(int(-neg_len.min(initial=0))):
        n = int(np.searchsorted(neg_len, -offset, side="left"))  # runs longer than offset
        d = lo_s[:n] + offset
        c = coords[:, :n]
        np.add(np.multiply(a_s[:, :n], zs[d], out=c), test.offset[:, None], out=c)
        roi_inequality(c, test, ok[:n], scratch[:n])
        np.greater(ok[:n], prev[:n], out=start[:n])  # passes here, not at the previous d: a run starts
        runs[:n] += start[:n]
        for k in range(most):
            now = runs[:n] == k + 1
            first[k, :n] = np.where(start[:n] & now, d, first[k, :n])
            last[k, :n] = np.where(ok[:n] & now, d, last[k, :n])
        prev[:n] = ok[:n]
    unsorted = np.empty_like(order)
    unsorted[order] = np.arange(count)
    return first[:, unsorted], last[:, unsorted], runs[unsorted]


U16 = npt.NDArray[np.uint16]
MAX_RUNS = 4  # passing runs per sample pixel the per-frame test handles (a notched cylinder's rays may need more)


def depth_runs(a: F32, test: RoiTest, depth_scale: float, valid: npt.NDArray[np.bool_]) -> tuple[U16, ...] | None:
    """Per sample pixel, the raw depths d ≥ 1 whose point passes the ROI inequality, as runs ``(lo₁, hi₁, lo₂,
    hi₂, …)``: one run for a box or a plain cylinder, up to ``MAX_RUNS`` for a cylinder with radial notches.

    Then the per-frame test is two uint16 comparisons per run, with the very answers of the float32 inequality:
    z(d) = d·scale never decreases with d, and rounding is monotone, so every l_k(d) = a_k·z + b_k is monotone and
    each single-coordinate bound holds on one run of d, found by binary search. The box is exactly the intersection
    of its three runs. The cylinder's l0² + l1² ≤ r² implies l0² ≤ r² and l1² ≤ r² (a rounded sum of non-negative
    terms is ≥ each term), so its passing depths lie in the runs' intersection, where every d is evaluated once. A
    notch is not convex: a ray may leave the ROI across it and come back (twice across a wide one). None (the crop
    evaluates the inequality every frame) when some pixel's passing depths need more runs (one without notches), or
    the check would exceed ``RUN_CHECK_BUDGET`` evaluations. Pixels marked invalid (outside the image) get empty
    runs (lo 1 > hi 0).
    """
    zs = np.multiply(np.arange(DEPTH_CODES, dtype=np.float32), np.float32(depth_scale))  # crop()'s z for every d
    lo, hi = _coordinate_runs(a, test, zs)
    firsts, lasts = lo[None], hi[None]
    if test.kind == "cylinder":
        if int(np.maximum(hi - lo + 1, 0).sum()) > RUN_CHECK_BUDGET:
            return None
        most = MAX_RUNS if len(test.notches) else 1
        firsts, lasts, runs = _passing_runs(a, test, zs, lo, hi, most=most)
        needed = int(runs.max(initial=0))
        if needed > most:
            return None
        firsts, lasts = firsts[: max(needed, 1)], lasts[: max(needed, 1)]
    out: list[U16] = []
    for first, last in zip(firsts, lasts, strict=True):
        empty = (last < first) | ~valid
        out += [np.where(empty, 1, first).astype(np.uint16), np.where(empty, 0, last).astype(np.uint16)]
    return tuple(out)


def depthless_rule(inside_at_zero: bool, silhouette: npt.NDArray[np.bool_] | None) -> tuple[bool, F32] | None:
    """How the ROI test's answer becomes the mask, as one comparison of z with a per-pixel bound and one AND/OR.

    The mask is the test where z > 0 and the silhouette (or False) where z == 0; z is never negative. At
    z = 0 every pixel's ROI coordinates are ``l = b``, so the test gives one constant there,
    ``inside_at_zero`` (False unless the camera sits inside the ROI):
    False: mask = test OR (z ≤ bound), bound 0 inside the silhouette, −1 outside (None: nothing to add);
    True:  mask = test AND (z > bound), bound −1 inside the silhouette, 0 outside.
    Returns ``(use_and, bound)``.
    """
    if silhouette is None and not inside_at_zero:
        return None
    inside = np.zeros(1, dtype=np.bool_) if silhouette is None else silhouette
    bound = np.where(inside, -1.0, 0.0) if inside_at_zero else np.where(inside, 0.0, -1.0)
    return inside_at_zero, bound.astype(np.float32)


def apply_depthless_rule(
    rule: tuple[bool, F32], z: F32, mask: npt.NDArray[np.bool_], tmp: npt.NDArray[np.bool_]
) -> None:
    """Apply ``depthless_rule``'s answer in place (``tmp``: a scratch buffer of the mask's shape)."""
    use_and, bound = rule
    if use_and:
        np.greater(z, bound, out=tmp)
        mask &= tmp
    else:
        np.less_equal(z, bound, out=tmp)
        mask |= tmp


class EnclosedDepthless:
    """``CropSpec.depthless_reach``'s rule on the CPU: which depthless silhouette samples join the foreground.

    A sample is kept when ``valid`` (depth > 0 and inside the ROI) holds somewhere in the ``reach`` samples to its
    left, to its right, above and below it (all four). Each side is one dilation of ``valid`` with a one-sided
    ``reach + 1`` line (the sample itself is depthless, so including it changes nothing); samples beyond the crop
    count as not valid, as in the kernel's bounded loops (edge/crop_kernel.cu ``enclosed``).
    """

    def __init__(self, silhouette: npt.NDArray[np.bool_], reach: int, size: int) -> None:
        self.silhouette = silhouette.reshape(size, size)
        self.reach, self.size = reach, size
        row, column = np.ones((1, reach + 1), np.uint8), np.ones((reach + 1, 1), np.uint8)
        self._sides = ((row, (reach, 0)), (row, (0, 0)), (column, (0, reach)), (column, (0, 0)))
        self._keep = np.empty((size, size), dtype=np.bool_)
        self._side = np.empty((size, size), dtype=np.uint8)

    def apply(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """``mask`` (N² flat, depth-valid samples inside the ROI) gains the enclosed depthless samples, in place."""
        n = self.size
        keep, valid = self._keep, mask.reshape(n, n)
        np.equal(z.reshape(n, n), 0, out=keep)
        keep &= self.silhouette
        if not keep.any():
            return
        for kernel, anchor in self._sides:
            cv2.dilate(valid.view(np.uint8), kernel, dst=self._side, anchor=anchor, borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)  # fmt: skip
            keep &= self._side.view(np.bool_)
        valid |= keep


def normalisation(crop: CropSpec) -> tuple[F32, F32]:
    """float32 scale and offset per channel: ``value·scale + offset == (value/255 − mean)/std``."""
    std = np.asarray(crop.std, dtype=np.float64)
    mean = np.asarray(crop.mean, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


class RoiCropper:
    """CPU crop: all tables built in the constructor, every per-frame buffer preallocated and reused.

    ``roi`` may be None only in ``image`` mode (the whole image; mask = the sampled point has depth)."""

    def __init__(
        self, spec: StreamSpec, roi: RoiFile | None, crop: CropSpec | None = None, *, allow_mismatch: bool = False
    ) -> None:
        check_registered(spec)
        self.spec, self.roi, self.crop_spec = spec, roi, crop or CropSpec()
        intr = spec.color_intrinsics
        self.rays = ray_table(intr)
        if roi is None:
            if self.crop_spec.mode != "image":
                raise CropError(
                    f"crop mode {self.crop_spec.mode!r} needs a calibrated ROI and none was given",
                    "calibrate one with edge-calibrate, or use a model trained with crop mode 'image' (BAAD)",
                )
            self.layout = image_layout(intr.width, intr.height, self.crop_spec.size)
            self._image_without_roi(spec)
            return
        roi.check_camera(spec, allow_mismatch=allow_mismatch)
        if self.crop_spec.mode == "image":
            self.layout = image_layout(intr.width, intr.height, self.crop_spec.size)
        else:
            self.layout = crop_layout(intr, roi, self.crop_spec)
        self.roi_rays = roi_ray_table(self.rays, roi)
        self.test: RoiTest | None = RoiTest.from_roi(roi)
        self._tables_and_buffers()
        self.silhouette: npt.NDArray[np.bool_] | None = (
            sample_nearest(roi_silhouette(intr, roi, self.crop_spec), self.layout).reshape(-1)
            if self.crop_spec.keep_depthless
            else None
        )
        inside_at_zero = False  # the depth runs hold only d ≥ 1: with them the test is False where z == 0
        if self._runs is None:
            self._float_test(self._zeros.reshape(-1), self._mask_flat)  # at z = 0 every pixel's l is b
            inside_at_zero = bool(self._mask_flat[0])
        reach = self.crop_spec.depthless_reach
        self._enclosed = (
            None
            if self.silhouette is None or reach is None
            else EnclosedDepthless(self.silhouette, reach, self.layout.size)
        )
        # the enclosed rule starts from the samples with depth inside the ROI (the bare silhouette rule's answer
        # without a silhouette), then adds the enclosed depthless ones
        self._depthless = depthless_rule(inside_at_zero, None if self._enclosed else self.silhouette)

    def _image_without_roi(self, spec: StreamSpec) -> None:
        """Tables and buffers of the ``image`` mode without an ROI: no ROI test, the mask is "has depth"."""
        self.test, self.silhouette, self._depthless, self._enclosed = None, None, None, None
        self._tables_and_buffers()

    def _tables_and_buffers(self) -> None:
        """The colour normalisation, the background colour, the sample tables and the output buffers (with an ROI
        or without); the layout and the ROI test are set before."""
        self.scale, self.offset = normalisation(self.crop_spec)
        # value·scale + offset, rounded after each step exactly as the kernel does, for all 256 byte values: one
        # 1×256 table per channel, so each colour plane is normalised straight into its NCHW plane (no transpose)
        table = np.arange(256, dtype=np.float32)[:, None] * self.scale + self.offset
        self._luts = [np.ascontiguousarray(table[None, :, c], dtype=np.float32) for c in range(3)]
        self._bg_value = tuple(float(c) for c in self.crop_spec.background_rgb)
        self._build_tables()
        self._alloc()

    def _build_tables(self) -> None:
        """Gather the ray tables at the N×N sample pixels once (out-of-image samples: no depth), solve the runs."""
        lay, w = self.layout, self.spec.color_intrinsics.width
        ix, iy = lay.nearest()
        valid = ((ix >= 0) & (ix < lay.width))[None, :] & ((iy >= 0) & (iy < lay.height))[:, None]
        idx = np.where(valid, iy[:, None] * w + ix[None, :], 0).ravel()
        self._idx = idx.astype(np.intp)
        self._depth_window = nearest_window(lay)
        # z = depth·scale; samples outside the image (only the indexed gather has any) get scale 0: no depth
        self._scale_s: F32 | np.float32 = (
            np.float32(self.spec.depth_scale)
            if self._depth_window is not None
            else np.where(valid.ravel(), np.float32(self.spec.depth_scale), np.float32(0)).astype(np.float32)
        )
        flat = self.rays.reshape(-1, 3)
        self._rxy = np.ascontiguousarray(flat[idx, :2].T)  # 2×N²: x = rx·z and y = ry·z in one broadcast multiply
        self._runs: tuple[npt.NDArray[np.uint16], ...] | None = None
        if self.test is not None:
            self._a = np.ascontiguousarray(self.roi_rays.reshape(-1, 3)[idx].T)  # 3×N², likewise for l = a·z + b
            self._b = self.test.offset[:, None]
            self._runs = depth_runs(self._a, self.test, self.spec.depth_scale, valid.ravel())
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
        """Outputs, scratch buffers and the flat/planar views of them that crop() writes through."""
        n = self.layout.size
        self.out = CropOutput(
            rgb=np.zeros((1, 3, n, n), dtype=np.float32),
            xyz=np.zeros((1, 3, n, n), dtype=np.float32),
            mask=np.zeros((n, n), dtype=np.bool_),
            color=np.zeros((n, n, 3), dtype=np.uint8),
        )
        self._xyz_flat = self.out.xyz[0].reshape(3, n * n)
        self._rgb_planes = [self.out.rgb[0, k] for k in range(3)]
        self._mask_flat = self.out.mask.reshape(n * n)
        self._d16 = np.empty((n, n), dtype=np.uint16)
        self._d16_flat = self._d16.reshape(n * n)
        self._roi_coords = np.empty((3, n * n), dtype=np.float32)  # l, the ROI-frame coordinates
        self._inv = np.empty((n, n), dtype=np.bool_)
        self._planes = [np.empty((n, n), dtype=np.uint8) for _ in range(3)]
        self._zeros = np.zeros((n, n), dtype=np.float32)
        self._bg_image = np.empty((n, n, 3), dtype=np.uint8)
        self._bg_image[:] = self.crop_spec.background_rgb
        self._tmp = np.empty(n * n, dtype=np.bool_)
        # a notched cylinder's second depth run or float test: one more bool, and its float test three float rows
        notched = self.test is not None and len(self.test.notches) > 0
        self._tmp2 = np.empty(n * n if notched else 0, dtype=np.bool_)
        self._work = np.empty((3, n * n) if notched and self._runs is None else (3, 0), dtype=np.float32)

    def crop(self, frame: Frame) -> CropOutput:
        """Crop one frame into the preallocated outputs (returned; overwritten by the next call)."""
        check_frame(frame, self.layout)
        out, mask, xyz = self.out, self._mask_flat, self._xyz_flat
        z = xyz[2]
        self._gather_depth(frame.depth)
        np.copyto(z, self._d16_flat)  # cast first: a casting multiply would allocate numpy's 32 KB ufunc buffer
        np.multiply(z, self._scale_s, out=z)
        np.multiply(self._rxy, z, out=xyz[:2])
        self._roi_mask(z, mask)
        np.logical_not(out.mask, out=self._inv)
        if self.crop_spec.mode == "foreground":
            inv = self._inv.view(np.uint8)
            for plane in out.xyz[0]:
                cv2.copyTo(self._zeros, inv, dst=plane)
        self._colour(frame.color)
        return out

    def _gather_depth(self, depth: npt.NDArray[np.uint16]) -> None:
        """The raw depth at the N×N nearest sample pixels, into ``_d16`` (resize when exact, else indexed)."""
        if self._depth_window is not None:
            n = self.layout.size
            cv2.resize(depth[self._depth_window], (n, n), dst=self._d16, interpolation=cv2.INTER_NEAREST_EXACT)
            return
        np.take(depth.reshape(-1), self._idx, out=self._d16_flat, mode="clip")  # 'raise' buffers

    def _roi_mask(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """mask = (z > 0 and the ROI inequality on ``l = a·z + b``) or (z == 0 and inside the silhouette, and
        enclosed unless ``depthless_reach`` is None); without an ROI (``image`` mode) z > 0."""
        if self.test is None:
            np.greater(z, 0, out=mask)
            return
        self._roi_test(z, mask)
        if self._depthless is not None:
            apply_depthless_rule(self._depthless, z, mask, self._tmp)
        if self._enclosed is not None:
            self._enclosed.apply(z, mask)

    def _roi_test(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """The ROI inequality at every sample: the raw depth against its run when known, else the float32 maths."""
        if self._runs is None:
            self._float_test(z, mask)
            return
        d, runs, tmp = self._d16_flat, self._runs, self._tmp
        np.greater_equal(d, runs[0], out=mask)
        np.less_equal(d, runs[1], out=tmp)
        mask &= tmp
        for k in range(2, len(runs), 2):  # a notch splits some rays' passage: the further runs
            np.greater_equal(d, runs[k], out=tmp)
            np.less_equal(d, runs[k + 1], out=self._tmp2)
            tmp &= self._tmp2
            mask |= tmp

    def _float_test(self, z: F32, mask: npt.NDArray[np.bool_]) -> None:
        """The ROI inequality on ``l = a·z + b`` with the kernel's float32 operations."""
        roi, test = self._roi_coords, self.test
        assert test is not None  # only called with an ROI
        np.multiply(self._a, z, out=roi)
        np.add(roi, self._b, out=roi)
        roi_inequality(roi, test, mask, self._tmp, work=self._work, scratch2=self._tmp2)

    def _foreground_box(self) -> tuple[slice, slice]:
        """Output rows and columns holding every foreground pixel (all of them in full mode).

        In foreground mode every pixel outside this box is painted the background colour, so only the box
        is resampled; the pixels inside it come out exactly as a whole-window remap would give them.
        """
        if self.crop_spec.mode != "foreground":
            return slice(None), slice(None)
        x, y, w, h = cv2.boundingRect(self.out.mask.view(np.uint8))
        return slice(y, y + h), slice(x, x + w)

    def _colour(self, color: npt.NDArray[np.uint8]) -> None:
        """Resize (background outside the image), paint the background, split, normalise each plane by a LUT.

        Splitting the uint8 crop and normalising plane by plane writes NCHW directly: cheaper than a
        3-channel float LUT followed by an HWC→CHW transpose copy (4 bytes a sample moved twice).
        """
        out = self.out
        rows, cols = self._foreground_box()
        if out.color[rows, cols].size:
            cv2.remap(
                color,
                self._map1[rows, cols],
                None if self._map2 is None else self._map2[rows, cols],
                self._interp,
                dst=out.color[rows, cols],
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=self._bg_value,
            )
        if self.crop_spec.mode == "foreground":
            cv2.copyTo(self._bg_image, self._inv.view(np.uint8), dst=out.color)
        cv2.split(out.color, self._planes)
        for plane, lut, dst in zip(self._planes, self._luts, self._rgb_planes, strict=True):
            cv2.LUT(plane, lut, dst=dst)


__all__ = [
    "DEPTHLESS_REACH",
    "DEPTH_CODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_DEPTHLESS_REACH",
    "MAX_RUNS",
    "NOTCH_FIELDS",
    "RUN_CHECK_BUDGET",
    "CropError",
    "CropLayout",
    "CropOutput",
    "CropSpec",
    "DepthNotRegisteredError",
    "EnclosedDepthless",
    "RoiCropper",
    "RoiTest",
    "apply_depthless_rule",
    "bilinear_indices_q",
    "check_frame",
    "check_registered",
    "crop_layout",
    "depth_runs",
    "depthless_rule",
    "image_layout",
    "nearest_indices",
    "nearest_window",
    "normalisation",
    "roi_inequality",
    "roi_ray_table",
    "roi_silhouette",
    "roi_surface_points",
    "sample_nearest",
]
