"""``edge-calibrate``: fit the drum's 3D ROI from a camera, a recording or the synthetic line, and write roi.yaml.

``--propose-from MODEL_DIR`` (a BAAD model folder from ``edge-train --crop image``) runs the model on the calibration
frames first: its predicted foreground, averaged over the frames, gives the drum's pixel (the centroid of the largest
region), which replaces ``--hint-pixel`` — a starting point for the geometric fit, whose result the engineer still
checks (the preview) and may adjust (``--set``/``--grow``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import ValidationError

from calibration.errors import CalibrationError
from calibration.fit import (
    CalibrationResult,
    Diagnostics,
    FitSettings,
    adjust_roi,
    compare_with_truth,
    parse_set,
    restat,
    roi_from_frames,
)
from calibration.preview import write_failure_preview, write_preview
from calibration.roi import RoiFile, load_roi, save_roi
from drivers.base import FrameSource
from drivers.synthetic.stations import DEFAULT_STATION, STATIONS
from edge.core.frame import Frame
from edge.crop import RoiCropper
from tools.entry import one_line_errors

PROG = "edge-calibrate"


def _floats(n: int) -> Callable[[str], tuple[float, ...]]:
    """argparse type for ``n`` comma-separated numbers."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(x) for x in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
        return vals

    return parse


def _pixel(text: str) -> tuple[int, int]:
    """argparse type for ``u,v`` pixel coordinates."""
    try:
        u, v = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected u,v (two integers, column and row), got {text!r}") from None
    return u, v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", type=Path, help="calibrate on a .bag/.db3 recording (depth aligned to colour)")
    src.add_argument("--serial", help="calibrate on the connected RealSense camera with this serial")
    src.add_argument("--synthetic-seed", type=int, help="calibrate on the synthetic line with this seed")
    src.add_argument("--from-roi", type=Path, help="adjust an existing roi.yaml with --set/--grow only (no frames)")
    p.add_argument("--clutter", choices=["low", "high"], default="low", help="synthetic clutter level")
    p.add_argument(
        "--station",
        choices=list(STATIONS),
        default=DEFAULT_STATION,
        help="synthetic station preset (default %(default)s)",
    )
    p.add_argument("--frames", type=int, default=5, help="frames whose depth is median-averaged (default 5)")
    p.add_argument("--skip", type=int, default=0, help="frames discarded first (live auto-exposure settling)")
    p.add_argument("--shape", choices=["cylinder", "box"], default="cylinder", help="ROI shape (default cylinder)")
    p.add_argument("--hint", type=_floats(3), help="x,y,z of a point on the drum (m, colour camera frame)")
    p.add_argument(
        "--hint-pixel", type=_pixel, help="u,v of a colour-image pixel on the drum (column, row); overrides --hint"
    )
    p.add_argument(
        "--propose-from",
        type=Path,
        metavar="MODEL_DIR",
        help="a BAAD model folder (edge-train --crop image): its predicted foreground on the frames picks the drum "
        "pixel (replaces --hint-pixel/--hint)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=FitSettings().margin_m,
        help="ROI margin in metres on every side; cover mounted components (default %(default)s)",
    )
    p.add_argument("--radius-range", type=_floats(2), default=(0.10, 0.60), help="sane radius lo,hi in m")
    p.add_argument("--length-range", type=_floats(2), default=(0.05, 1.50), help="sane length lo,hi in m")
    p.add_argument("--max-range", type=float, default=2.5, help="drop points farther than this (m)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override after the fit: center=x,y,z axis=x,y,z radius=R length=L extents=x,y,z margin=M (metres)",
    )
    p.add_argument("--grow", type=float, default=0.0, help="metres ADDED to the margin (grows every side)")
    p.add_argument("--out", type=Path, default=Path("roi.yaml"), help="ROI file to write (default roi.yaml)")
    p.add_argument("--preview", type=Path, help="also write a preview PNG here")
    return p


def _tool_version() -> str:
    try:
        return f"{PROG} {version('drumsight-edge')}"
    except PackageNotFoundError:
        return PROG


def open_source(args: argparse.Namespace) -> FrameSource:
    """The requested frame source; drivers are imported only when used."""
    n = args.skip + args.frames
    if args.recording is not None:
        from drivers.playback import PlaybackSource, PlaybackSourceConfig  # noqa: PLC0415

        return PlaybackSource(PlaybackSourceConfig(path=args.recording, align_to_color=True))
    if args.serial is not None:
        from drivers.realsense import RealSenseSource, RealSenseSourceConfig  # noqa: PLC0415

        return RealSenseSource(RealSenseSourceConfig(serial=args.serial, align_to_color=True))
    from drivers.synthetic import SyntheticSource, SyntheticSourceConfig  # noqa: PLC0415

    cfg = SyntheticSourceConfig(
        seed=args.synthetic_seed,
        n_frames=n,
        clutter=args.clutter,
        defect_rate=0.0,
        frames_per_part=n,
        station=args.station,
    )
    return SyntheticSource(cfg)


def collect_frames(source: FrameSource, n: int, skip: int) -> list[Frame]:
    """``skip`` frames dropped, then ``n`` kept (arrays owned by us: read without ring-buffer targets)."""
    frames: list[Frame] = []
    with source:
        for i, frame in enumerate(source.frames()):
            if i >= skip:
                frames.append(frame)
            if len(frames) == n:
                break
    if len(frames) < n:
        raise CalibrationError(
            f"the source delivered {len(frames)} usable frames, {n} were requested",
            "use a longer recording, a smaller --frames or --skip",
        )
    return frames


def _report(roi: RoiFile, out: Path) -> None:
    shape = roi.shape
    dims = (
        f"cylinder radius {shape.radius_m:.4f} m, length {shape.length_m:.4f} m"
        if shape.type == "cylinder"
        else "box " + " × ".join(f"{e:.4f}" for e in shape.extents_m) + " m"
    )
    print(f"wrote {out} (ROI version {roi.version}): {dims}, margin {roi.margin_m:.4f} m")
    if shape.type == "cylinder" and shape.notches:
        sectors = ", ".join(
            f"{n.angle_from_deg:.0f}…{n.angle_to_deg:.0f}° z {n.z_from_m * 1000:.0f}…{n.z_to_m * 1000:.0f} mm "
            f"r {n.radius_m:.4f} m"
            for n in shape.notches
        )
        print(f"radial notches (a support touches the drum there; outer radius near the shell): {sectors}")
    if roi.acceptance is None:
        print("acceptance: not measured (adjusted without frames; recalibrate to measure)")
        return
    a = roi.acceptance
    print(
        f"acceptance: points inside {a.points_inside}, fill rate {a.fill_rate:.1%}, "
        f"fit residual {a.fit_residual_m * 1000:.2f} mm over {a.n_frames} frames"
    )


def _truth_report(result: CalibrationResult, frames: Sequence[Frame]) -> None:
    """On synthetic frames the true drum is known: say how close the fit came."""
    truth = frames[-1].truth
    if truth is None or truth.drum is None or truth.drum_mask is None:
        return
    c = compare_with_truth(result, truth.drum, truth.drum_mask)
    axis = (
        f", axis error {c.axis_error_deg:.3f}°, radius error {c.radius_error_m * 1000:.2f} mm"
        if result.roi.shape.type == "cylinder"
        else ""
    )
    print(f"against truth: mask IoU {c.iou:.4f}{axis}, centre error {c.center_error_m * 1000:.1f} mm")


def settings_from_args(args: argparse.Namespace) -> FitSettings:
    """Fit settings from the command line; out-of-range values are refused with the option named."""
    try:
        return FitSettings(
            shape=args.shape,
            hint=args.hint,
            hint_pixel=args.hint_pixel,
            margin_m=args.margin,
            radius_range_m=args.radius_range,
            length_range_m=args.length_range,
            max_range_m=args.max_range,
            tool_version=_tool_version(),
        )
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise CalibrationError(f"invalid calibration settings: {details}", "fix the named option") from None


def propose_hint_pixel(frames: Sequence[Frame], model_dir: Path) -> tuple[tuple[int, int], float]:
    """The drum pixel (u, v) BAAD proposes, and the share of the image its mask covers: the model (ONNX Runtime,
    through ``edge.inspect.ModelStage``) on every frame's whole image, foreground probabilities averaged, > 0.5, the
    largest 8-connected region's centroid mapped back to colour-image pixels."""
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from edge.inspect import FOREGROUND_THRESHOLD, ModelStage  # noqa: PLC0415  (runtime only when asked for)

    onnx = model_dir / "model.onnx"
    if not onnx.is_file():
        raise CalibrationError(f"{onnx} does not exist", "pass the folder edge-train wrote for a BAAD model")
    stage = ModelStage(onnx)
    try:
        card = stage.card
        if card.crop_mode != "image" or "foreground" not in card.outputs:
            raise CalibrationError(
                f"{onnx} is a {card.family} model of crop mode {card.crop_mode!r} without a foreground output",
                "train BAAD with edge-train --model baad --crop image and pass its folder",
            )
        crop = card.crop_spec("image")
        cropper = RoiCropper(frames[0].spec, None, crop)
        total = np.zeros((card.input_size, card.input_size), dtype=np.float64)
        for frame in frames:
            out = cropper.crop(frame)
            stage.run({"rgb": out.rgb, "xyz": out.xyz, "mask": out.mask.astype(np.float32)[None, None]})
            total += stage.outputs["foreground"][0, 0]
    finally:
        stage.close()
    fg = (total / len(frames) > FOREGROUND_THRESHOLD).astype(np.uint8)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        raise CalibrationError(
            f"BAAD sees no foreground in the {len(frames)} frames", "show a drum to the camera, or give --hint-pixel"
        )
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    cx, cy = centroids[best]
    lay = cropper.layout
    u = round(lay.x0 + (cx + 0.5) * lay.side / lay.size - 0.5)
    v = round(lay.y0 + (cy + 0.5) * lay.side / lay.size - 0.5)
    u, v = min(max(u, 0), lay.width - 1), min(max(v, 0), lay.height - 1)
    return (u, v), float(stats[best, cv2.CC_STAT_AREA]) / fg.size


def run(args: argparse.Namespace) -> None:
    sets = dict(parse_set(item) for item in args.set)
    if args.from_roi is not None:
        if args.preview is not None:
            raise CalibrationError("--preview needs calibration frames", "drop --preview or calibrate from a source")
        roi = adjust_roi(load_roi(args.from_roi), sets, args.grow)
        save_roi(roi, args.out)
        _report(roi, args.out)
        return
    settings = settings_from_args(args)
    frames = collect_frames(open_source(args), args.frames, args.skip)
    if args.propose_from is not None:
        pixel, share = propose_hint_pixel(frames, args.propose_from)
        print(f"BAAD proposes the drum at pixel {pixel[0]},{pixel[1]} (its mask covers {share:.1%} of the crop)")
        settings = settings.model_copy(update={"hint_pixel": pixel, "hint": None})
    try:
        result = roi_from_frames(frames, settings)
    except CalibrationError as e:
        if not isinstance(e.diagnostics, Diagnostics):
            raise
        if args.preview is not None:
            write_failure_preview(e.diagnostics, args.preview)
            more = f"; every candidate and why it was rejected is drawn in {args.preview}"
        else:
            more = "; add --preview PATH.png to see every candidate and why it was rejected"
        raise type(e)(e.problem, e.remedy + more) from None
    if sets or args.grow:
        result = restat(result, adjust_roi(result.roi, sets, args.grow))
    save_roi(result.roi, args.out)
    _report(result.roi, args.out)
    _truth_report(result, frames)
    if args.preview is not None:
        write_preview(result, args.preview)
        print(f"wrote preview {args.preview}")


@one_line_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 with a one-line message on any error a user can fix."""
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.skip < 0:
        print(f"{PROG}: --frames must be ≥ 1 and --skip ≥ 0", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
