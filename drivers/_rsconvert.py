"""Conversions between pyrealsense2 objects and the project's frame types, shared by live and playback sources."""

from __future__ import annotations

import time
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pyrealsense2 as rs

from drivers.base import FrameBuffers
from drivers.errors import SourceError
from edge.core.frame import DistortionModel, Extrinsics, Frame, Intrinsics, StreamSpec

_MODEL_NAMES: dict[rs.distortion, DistortionModel] = {
    rs.distortion.none: "none",
    rs.distortion.brown_conrady: "brown_conrady",
    rs.distortion.inverse_brown_conrady: "inverse_brown_conrady",
    rs.distortion.modified_brown_conrady: "modified_brown_conrady",
}
_RS_MODELS: dict[DistortionModel, rs.distortion] = {name: model for model, name in _MODEL_NAMES.items()}

ColorCopy = Callable[[npt.NDArray[np.uint8], npt.NDArray[np.uint8]], None]


def _copy_rgb(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> None:
    np.copyto(dst, src)


def _copy_bgr(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> None:
    np.copyto(dst, src[..., ::-1])


def _copy_rgba(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> None:
    np.copyto(dst, src[..., :3])


def _copy_bgra(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> None:
    np.copyto(dst, src[..., 2::-1])


def _copy_yuyv(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> None:
    # The SDK exposes yuyv as one uint16 per pixel; a byte view (no copy) is the Y,U / Y,V pairs OpenCV reads.
    pairs = np.ascontiguousarray(src).view(np.uint8).reshape(dst.shape[0], dst.shape[1], 2)
    cv2.cvtColor(pairs, cv2.COLOR_YUV2RGB_YUYV, dst=dst)


# Every color format a D4xx or a recording may carry, each turned into RGB in the one copy out of the SDK buffer.
COLOR_COPIES: dict[rs.format, ColorCopy] = {
    rs.format.rgb8: _copy_rgb,
    rs.format.bgr8: _copy_bgr,
    rs.format.rgba8: _copy_rgba,
    rs.format.bgra8: _copy_bgra,
    rs.format.yuyv: _copy_yuyv,
}


def intrinsics_from_rs(intr: rs.intrinsics) -> Intrinsics:
    """Project intrinsics from the SDK's; models the geometry code cannot undistort are refused."""
    model = _MODEL_NAMES.get(intr.model)
    if model is None:
        raise SourceError(
            f"unsupported distortion model {intr.model} on a {intr.width}×{intr.height} stream",
            "use a D4xx depth camera (brown_conrady family); fisheye/f-theta lenses are not supported",
        )
    c = [float(x) for x in intr.coeffs]
    return Intrinsics(
        width=int(intr.width),
        height=int(intr.height),
        fx=float(intr.fx),
        fy=float(intr.fy),
        ppx=float(intr.ppx),
        ppy=float(intr.ppy),
        model=model,
        coeffs=(c[0], c[1], c[2], c[3], c[4]),
    )


def intrinsics_to_rs(intr: Intrinsics) -> rs.intrinsics:
    """SDK intrinsics for writers (``rs.software_device`` streams) built from the project's."""
    out = rs.intrinsics()
    out.width, out.height = intr.width, intr.height
    out.fx, out.fy, out.ppx, out.ppy = intr.fx, intr.fy, intr.ppx, intr.ppy
    out.model = _RS_MODELS[intr.model]
    out.coeffs = list(intr.coeffs)
    return out


def extrinsics_from_rs(ext: rs.extrinsics) -> Extrinsics:
    """The SDK stores the rotation column-major; the project's is row-major (``p_to = R @ p_from + t``)."""
    r = np.asarray(ext.rotation, dtype=np.float64).reshape(3, 3, order="F")
    t = [float(x) for x in ext.translation]
    return Extrinsics(rotation=tuple(float(x) for x in r.ravel()), translation=(t[0], t[1], t[2]))


def extrinsics_to_rs(ext: Extrinsics) -> rs.extrinsics:
    """SDK extrinsics (column-major rotation) from the project's row-major ones."""
    out = rs.extrinsics()
    out.rotation = [float(x) for x in np.asarray(ext.rotation).reshape(3, 3).ravel(order="F")]
    out.translation = list(ext.translation)
    return out


def video_profile(profiles: list[rs.stream_profile], stream: rs.stream) -> rs.video_stream_profile | None:
    """The first video profile of ``stream`` (index 0 first) among ``profiles``, or None."""
    matches = [p for p in profiles if p.stream_type() == stream and p.is_video_stream_profile()]
    matches.sort(key=lambda p: p.stream_index())
    return matches[0].as_video_stream_profile() if matches else None


def depth_registered_to_color(depth: rs.video_stream_profile, color: rs.video_stream_profile) -> bool:
    """True when depth already lies on the color pixel grid (same calibration, identity transform).

    Such streams (synthetic recordings, or a camera whose depth was registered upstream) must not go through
    ``rs.align``: measured on 2.59, align resamples even an identity mapping and changes 7–11 % of depth pixels.
    """
    same = intrinsics_from_rs(depth.get_intrinsics()).close_to(intrinsics_from_rs(color.get_intrinsics()), 1e-3)
    return same and extrinsics_from_rs(depth.get_extrinsics_to(color)).is_identity(tol=1e-5)


def stream_spec(
    depth: rs.video_stream_profile,
    color: rs.video_stream_profile,
    *,
    align_to_color: bool,
    serial: str,
    depth_scale: float,
    source: str,
) -> StreamSpec:
    """The spec of a depth+color stream; registered depth (aligned by us or already) takes the color calibration."""
    color_intr = intrinsics_from_rs(color.get_intrinsics())
    registered = align_to_color or depth_registered_to_color(depth, color)
    if registered:
        depth_intr, depth_to_color = color_intr, Extrinsics()
    else:
        depth_intr = intrinsics_from_rs(depth.get_intrinsics())
        depth_to_color = extrinsics_from_rs(depth.get_extrinsics_to(color))
    return StreamSpec(
        serial=serial,
        color_intrinsics=color_intr,
        depth_intrinsics=depth_intr,
        depth_to_color=depth_to_color,
        depth_scale=float(depth_scale),
        fps=float(color.fps()),
        depth_aligned_to_color=registered,
        color_format="rgb8",
        source=source,
    )


class StalePairFilter:
    """Drops framesets that repeat an already delivered frame.

    The SDK pipeline completes a frameset that lacks a stream with that stream's previous frame (measured on
    playback: (depth n+1, color n) before (depth n+1, color n+1)). Such a pair carries stale color and
    duplicates a frame; only pairs of two new frames pass.
    """

    def __init__(self) -> None:
        self._last: dict[rs.stream, tuple[int, float]] = {}

    def fresh(self, frames: rs.composite_frame) -> bool:
        """True when both the depth and the color frame of ``frames`` are new (a frame is its number + timestamp)."""
        keys = {}
        for frame in (frames.get_depth_frame(), frames.get_color_frame()):
            if not frame:
                return False
            key = (int(frame.get_frame_number()), float(frame.get_timestamp()))
            stream = frame.get_profile().stream_type()
            if self._last.get(stream) == key:
                return False
            keys[stream] = key
        self._last.update(keys)
        return True


def check_buffers(out: FrameBuffers, spec: StreamSpec) -> None:
    """Refuse destination buffers that do not match the stream, before any pixel is written."""
    if out.color.shape != spec.color_shape or out.depth.shape != spec.depth_shape:
        raise SourceError(
            f"frame buffers are color {out.color.shape} / depth {out.depth.shape}, "
            f"the stream is color {spec.color_shape} / depth {spec.depth_shape}",
            "size the ring-buffer slots from the source's spec (spec.color_shape, spec.depth_shape)",
        )


def frame_from_frameset(
    frames: rs.composite_frame, spec: StreamSpec, *, sequence: int, out: FrameBuffers | None = None
) -> Frame | None:
    """Copy one frameset out of the SDK exactly once (into ``out`` when given); None if it lacks depth or color.

    Color arrives as RGB whatever the stream's format, converted during that copy. ``device_ts_ns`` is the
    depth frame's timestamp: depth is the measurement the ROI and models work on.
    """
    depth, color = frames.get_depth_frame(), frames.get_color_frame()
    if not depth or not color:
        return None
    fmt = color.get_profile().format()
    copy_color = COLOR_COPIES.get(fmt)
    if copy_color is None:
        raise SourceError(
            f"color format {fmt} is not supported",
            f"stream color as one of {', '.join(str(f) for f in COLOR_COPIES)}",
        )
    if out is None:
        out = FrameBuffers(
            color=np.empty(spec.color_shape, dtype=np.uint8), depth=np.empty(spec.depth_shape, dtype=np.uint16)
        )
    else:
        check_buffers(out, spec)
    depth_px = np.asanyarray(depth.get_data())
    if depth_px.shape != spec.depth_shape:
        raise SourceError(
            f"a depth frame of shape {depth_px.shape} arrived on a {spec.depth_shape} stream",
            "restart the source; the camera changed its stream settings",
        )
    np.copyto(out.depth, depth_px)
    copy_color(np.asanyarray(color.get_data()), out.color)
    return Frame(
        color=out.color,
        depth=out.depth,
        spec=spec,
        color_frame_number=int(color.get_frame_number()),
        depth_frame_number=int(depth.get_frame_number()),
        device_ts_ns=round(depth.get_timestamp() * 1e6),
        host_ts_ns=time.time_ns(),
        sequence=sequence,
    )
