"""The crop for data from outside: public MVTec 3D-AD / MVTec AD folders, which have no camera stream and no ROI.

Such a folder gives a colour image and (MVTec 3D-AD) an organised point cloud per sample, from a camera this product
never calibrated, so :class:`edge.crop.RoiCropper` cannot run. :class:`SceneCropper` produces the same tensors
(``CropOutput``: rgb, xyz, mask, colour) with the same sampling rules, over the centred square window that holds the
whole image (a non-square image is padded with the background colour and no depth):

- ``full``: the whole scene; ``mask`` is 1 where the sampled point has depth (every pixel of an RGB-only folder);
- ``foreground``: the background plane removed, as AST and Shape-Guided preprocess MVTec 3D-AD
  (:func:`plane_foreground`); ``mask`` is that foreground, xyz is zeroed and colour painted the background outside it.
  It stands in for the ROI: a folder without a camera stream is cropped this way, and ``--roi`` is refused for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.errors import EdgeError
from edge.crop import CropLayout, CropOutput, CropSpec, Q, image_layout, normalisation


class SceneCropError(EdgeError):
    """A sample from outside cannot be cropped (no point cloud for the foreground, no background plane found)."""


@dataclass(frozen=True, slots=True)
class PlaneSettings:
    """Background-plane removal; the values are Shape-Guided's ``tools/preprocessing.py`` on MVTec 3D-AD (metres)."""

    border_px: int = 10  # the plane is fitted on the points of this image border ring
    fit_distance_m: float = 0.004  # RANSAC inlier distance (open3d segment_plane distance_threshold)
    ransac_n: int = 50  # points per RANSAC hypothesis
    iterations: int = 1000
    keep_above_m: float = 0.005  # foreground: farther than this from the plane, on the camera's side
    seed: int = 0  # open3d's RANSAC draws from its global generator: seeded for repeatable masks


@dataclass(frozen=True, slots=True)
class SceneFrame:
    """One sample from outside: colour H×W×3 uint8 RGB; xyz H×W×3 float32 metres (zeros: no point) or None."""

    color: npt.NDArray[np.uint8]
    xyz: npt.NDArray[np.float32] | None
    name: str = ""


def _valid_points(xyz: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Points with depth: z > 0 (NaN compares False; MVTec 3D-AD stores missing points as zeros)."""
    with np.errstate(invalid="ignore"):
        valid: npt.NDArray[np.bool_] = np.asarray(xyz[..., 2] > 0) & np.isfinite(xyz[..., :2]).all(axis=2)
    return valid


def plane_foreground(xyz: npt.NDArray[np.float32], settings: PlaneSettings | None = None) -> npt.NDArray[np.bool_]:
    """H×W foreground of an organised point cloud, with the background plane removed.

    1. RANSAC plane (open3d ``segment_plane``) through the valid points of the ``border_px`` image border ring, where
       MVTec 3D-AD scenes show only the table/background;
    2. candidates: valid points more than ``keep_above_m`` from that plane on the camera's side (a point below the
       plane is background seen through a hole, never the object);
    3. keep the largest 8-connected region of candidates in the image grid. Shape-Guided keeps the largest DBSCAN
       cluster (eps 6 mm); in an organised cloud neighbouring pixels are the nearest points, so connectivity on the
       grid gives the same object at a fraction of DBSCAN's cost (it runs on every read of a sample).
    """
    import open3d as o3d  # noqa: PLC0415  (the calibrate extra; only folders from outside need it)

    s = settings or PlaneSettings()
    h, w = xyz.shape[:2]
    valid = _valid_points(xyz)
    ring = np.ones((h, w), dtype=np.bool_)
    b = min(s.border_px, h // 2, w // 2)
    ring[b : h - b, b : w - b] = False
    border = xyz[ring & valid].astype(np.float64)
    if len(border) < max(s.ransac_n, 3):
        raise SceneCropError(
            f"{len(border)} points with depth in the {s.border_px}-px image border: too few to fit the background "
            "plane",
            "use --crop full for this data (the scene must show the background plane along the image border)",
        )
    o3d.utility.random.seed(s.seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(border))
    (a, bb, c, d), _ = cloud.segment_plane(s.fit_distance_m, s.ransac_n, s.iterations)
    normal = np.array([a, bb, c], dtype=np.float64)
    if d < 0:  # orient the normal towards the camera (the origin is on the positive side)
        normal, d = -normal, -d
    dist = xyz @ normal.astype(np.float32) + np.float32(d)  # float32: µm resolution at a few metres; NaN → False
    with np.errstate(invalid="ignore"):
        candidates = (valid & (dist > s.keep_above_m)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), dtype=np.bool_)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    out: npt.NDArray[np.bool_] = labels == largest
    return out


scene_layout = image_layout  # the whole image: the same window as the ``image`` crop mode of a camera stream


class SceneCropper:
    """:class:`edge.crop.RoiCropper`'s outputs for samples without a camera stream (see the module docstring).

    ``crop`` fills ``out`` (reused buffers, like RoiCropper) and returns it; the window is set by the first image
    and every later one must have that size.
    """

    def __init__(self, crop: CropSpec, plane: PlaneSettings | None = None) -> None:
        self.crop_spec, self.plane = crop, plane or PlaneSettings()
        self.layout: CropLayout | None = None
        self.scale, self.offset = normalisation(crop)
        n = crop.size
        self.out = CropOutput(
            rgb=np.zeros((1, 3, n, n), dtype=np.float32),
            xyz=np.zeros((1, 3, n, n), dtype=np.float32),
            mask=np.zeros((n, n), dtype=np.bool_),
            color=np.zeros((n, n, 3), dtype=np.uint8),
        )

    def _layout_for(self, h: int, w: int) -> CropLayout:
        if self.layout is None:
            self.layout = scene_layout(w, h, self.crop_spec.size)
            qx, qy = self.layout.bilinear_q()
            n = self.crop_spec.size
            mx = np.broadcast_to((qx / Q).astype(np.float32)[None, :], (n, n))
            my = np.broadcast_to((qy / Q).astype(np.float32)[:, None], (n, n))
            self._maps = cv2.convertMaps(np.ascontiguousarray(mx), np.ascontiguousarray(my), cv2.CV_16SC2)
        elif (self.layout.width, self.layout.height) != (w, h):
            raise SceneCropError(
                f"image of {w}×{h} after images of {self.layout.width}×{self.layout.height}",
                "keep one image size per data set (resize the odd samples, or split the folder)",
            )
        return self.layout

    def _nearest(self, image: npt.NDArray[np.generic], fill: float) -> npt.NDArray[np.generic]:
        """``image`` (H×W or H×W×C) at the window's nearest sample pixels; ``fill`` outside the image."""
        assert self.layout is not None
        lay = self.layout
        ix, iy = lay.nearest()
        vx, vy = (ix >= 0) & (ix < lay.width), (iy >= 0) & (iy < lay.height)
        out = np.full((lay.size, lay.size, *image.shape[2:]), fill, dtype=image.dtype)
        out[np.ix_(vy, vx)] = image[np.ix_(iy[vy], ix[vx])]
        return out

    def crop(self, frame: SceneFrame) -> CropOutput:
        """Crop one sample into the preallocated outputs (returned; overwritten by the next call)."""
        h, w = frame.color.shape[:2]
        if frame.xyz is not None and frame.xyz.shape != (h, w, 3):
            raise SceneCropError(
                f"{frame.name or 'a sample'}: point cloud {frame.xyz.shape} does not match the image {(h, w, 3)}",
                "pair each rgb/NNN.png with an xyz/NNN.tiff of the same size",
            )
        self._layout_for(h, w)
        out, fg = self.out, self.crop_spec.mode == "foreground"
        if frame.xyz is None:
            if fg:
                raise SceneCropError(
                    f"{frame.name or 'a sample'} has no point cloud (no xyz/), so its background plane cannot be "
                    "removed",
                    "use --crop full for RGB-only data",
                )
            keep = np.ones((h, w), dtype=np.bool_)
            out.xyz[...] = 0.0
            out.mask[...] = self._nearest(keep, False)
        else:
            # Sampling is nearest, so per-pixel tests commute with it: only the foreground (connectivity) needs
            # the full-resolution cloud.
            xyz = np.asarray(self._nearest(frame.xyz, 0.0), dtype=np.float32)
            keep_s = self._nearest(plane_foreground(frame.xyz, self.plane), False) if fg else _valid_points(xyz)
            out.mask[...] = keep_s
            out.xyz[0] = np.where(out.mask[..., None], np.nan_to_num(xyz), np.float32(0)).transpose(2, 0, 1)
        bg = tuple(float(c) for c in self.crop_spec.background_rgb)
        map1, map2 = self._maps
        cv2.remap(frame.color, map1, map2, cv2.INTER_LINEAR, dst=out.color, borderMode=cv2.BORDER_CONSTANT,
                  borderValue=bg)  # fmt: skip
        if fg:
            out.color[~out.mask] = self.crop_spec.background_rgb
        rgb = out.color.astype(np.float32) * self.scale + self.offset
        out.rgb[0] = rgb.transpose(2, 0, 1)
        return out
