"""`edge-record`: record a synthetic line or a live camera to a RealSense .db3, and export MVTec 3D-AD datasets."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pyrealsense2 as rs
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from drivers.errors import DeviceNotFoundError, SourceError
from drivers.labels import LabelWriter, attach_labels, bind_labels, labels_dir_for, labels_for_recording
from drivers.mvtec import MvtecExportConfig, MvtecWriter
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from drivers.realsense import connected_serials
from drivers.recorder import check_output_path, record_frames
from drivers.synthetic import STATIONS, SyntheticSource, SyntheticSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from tools.entry import one_line_errors

_STDERR = Console(stderr=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-record",
        description="Record RGB-D frames to a RealSense .db3 (synthetic line or live camera), optionally exporting "
        "an MVTec 3D-AD dataset; or export a labelled recording.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", choices=("synthetic", "realsense"), help="what to record")
    what.add_argument("--from-recording", type=Path, metavar="DB3", help="export this labelled recording (--mvtec)")
    p.add_argument("--out", type=Path, help="recording to write (.db3; a synthetic one gets <out>.labels/ beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing recording / dataset")
    p.add_argument(
        "--compress",
        action="store_true",
        help="LZ4-compress the frames: about half the size, but playback reads ~4x slower",
    )
    syn = p.add_argument_group("synthetic line")
    syn.add_argument("--seed", type=int, help="seed of the synthetic line (default 0)")
    syn.add_argument("--station", choices=list(STATIONS), help="station preset (default rail, the original line)")
    syn.add_argument("--frames", type=int, default=60, help="frames to render (default 60)")
    syn.add_argument("--clutter", help='background activity: 0..1 or "none", "low", "high"')
    syn.add_argument("--defect-rate", type=float, help="share of parts with a defect")
    syn.add_argument(
        "--frames-per-part", type=int, help="frames per part (default 1; with --from-recording: from its labels)"
    )
    syn.add_argument("--gap-frames", type=int, help="empty-station frames between parts")
    syn.add_argument("--width", type=int, help="image width (default 640)")
    syn.add_argument("--height", type=int, help="image height (default 480)")
    cam = p.add_argument_group("live camera")
    cam.add_argument("--serial", help="camera serial (default: the only connected camera)")
    cam.add_argument("--seconds", type=float, default=10.0)
    exp = p.add_argument_group("MVTec 3D-AD export")
    exp.add_argument("--mvtec", type=Path, metavar="DIR", help="also write an MVTec 3D-AD dataset under DIR")
    exp.add_argument("--labels", type=Path, help="labels sidecar of --from-recording (default <DB3>.labels)")
    exp.add_argument("--class-name", default="drum")
    exp.add_argument("--every-frame", action="store_true", help="export every frame, not one per part")
    return p


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_STDERR
    )


class _Sink(Protocol):
    def write(self, frame: Frame) -> object: ...


def _tee(frames: Iterable[Frame], sinks: list[_Sink], progress: Progress) -> Iterator[Frame]:
    """Pass frames on (to the recorder) while labels, dataset and progress bar see each one."""
    task = progress.tasks[0].id
    for frame in frames:
        for sink in sinks:
            sink.write(frame)
        progress.advance(task)
        yield frame


def _mvtec(args: argparse.Namespace, frames_per_part: int, source: str, seed: int | None) -> MvtecWriter:
    config = MvtecExportConfig(
        class_name=args.class_name,
        frames_per_part=frames_per_part,
        every_frame=args.every_frame,
        overwrite=args.overwrite,
    )
    return MvtecWriter(args.mvtec, config, source=source, seed=seed)


def _number_or_name(value: str | None) -> float | str | None:
    """``--clutter 0.3`` is a number, ``--clutter high`` a named level."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return value


def _synthetic_config(args: argparse.Namespace) -> SyntheticSourceConfig:
    given = {
        "seed": args.seed,
        "n_frames": args.frames,
        "width": args.width,
        "height": args.height,
        "clutter": _number_or_name(args.clutter),
        "defect_rate": args.defect_rate,
        "frames_per_part": args.frames_per_part,
        "gap_frames": args.gap_frames,
        "station": args.station,
    }
    try:
        return SyntheticSourceConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise EdgeError(f"invalid synthetic settings ({wrong})", "see `edge-record --help`") from err


def _run_synthetic(args: argparse.Namespace) -> str:
    if args.out is None and args.mvtec is None:
        raise EdgeError("nothing to write", "pass --out FILE.db3 and/or --mvtec DIR")
    config = _synthetic_config(args)
    if args.out is not None:
        check_output_path(args.out, overwrite=args.overwrite)
    meta = {"source": "synthetic", "seed": config.seed, "frames_per_part": config.frames_per_part}
    meta["synthetic"] = config.model_dump()
    labels = LabelWriter(labels_dir_for(args.out), overwrite=args.overwrite, meta=meta) if args.out else None
    mvtec = _mvtec(args, config.frames_per_part, "", config.seed) if args.mvtec else None  # source: the spec's
    sinks: list[_Sink] = [s for s in (labels, mvtec) if s is not None]
    try:
        with SyntheticSource(config) as source, _progress() as progress:
            progress.add_task("rendering", total=args.frames)
            frames = _tee(source.frames(), sinks, progress)
            if args.out is not None:
                summary = record_frames(frames, args.out, source.spec, overwrite=args.overwrite, compress=args.compress)
                bind_labels(labels_dir_for(args.out), summary.path, summary.n_frames, summary.first_device_ts_ns,
                            summary.last_device_ts_ns)  # fmt: skip
                done = f"{summary.n_frames} frames → {summary.path} ({summary.size_bytes / 2**20:.1f} MiB)"
            else:
                done = f"{sum(1 for _ in frames)} frames rendered"
    finally:
        if labels is not None:
            labels.close()
    if mvtec is not None:
        mvtec.close()
        done += f"; MVTec: {_counts(mvtec)}"
    return done


def _counts(mvtec: MvtecWriter) -> str:
    c = mvtec.summary.counts
    return f"{mvtec.root} " + ", ".join(f"{split}/{kind}={n}" for split, per in c.items() for kind, n in per.items())


def _run_from_recording(args: argparse.Namespace) -> str:
    if args.mvtec is None:
        raise EdgeError("--from-recording needs --mvtec DIR", "say where to write the MVTec 3D-AD dataset")
    labels = labels_for_recording(args.from_recording, args.labels)
    frames_per_part = args.frames_per_part or int(labels.meta.get("frames_per_part", 1))
    mvtec = _mvtec(args, frames_per_part, f"playback:{args.from_recording}", labels.meta.get("seed"))
    with _progress() as progress:
        progress.add_task("exporting", total=len(labels))
        with PlaybackSource(PlaybackSourceConfig(path=args.from_recording)) as playback:
            for _ in _tee(attach_labels(playback.frames(), labels), [mvtec], progress):
                pass
    mvtec.close()
    return f"MVTec: {_counts(mvtec)}"


def _run_realsense(args: argparse.Namespace) -> str:
    if args.out is None:
        raise EdgeError("--source realsense needs --out FILE.db3", "say where to write the recording")
    serials = connected_serials()
    listed = ", ".join(serials) or "none"
    if args.serial is None and len(serials) > 1:
        raise SourceError(f"several RealSense cameras connected ({listed})", "pass --serial with the one to record")
    serial = args.serial or (serials[0] if serials else None)
    if serial is None or serial not in serials:
        what = f"RealSense camera {serial}" if serial else "RealSense camera"
        raise DeviceNotFoundError(
            f"no {what} found (connected: {listed})",
            "connect the camera to a USB3 port, or pass --serial with one of the connected serials",
        )
    path = check_output_path(args.out, overwrite=args.overwrite)
    config = rs.config()
    config.enable_device(serial)
    config.enable_stream(rs.stream.depth, rs.format.z16, 30)
    config.enable_stream(rs.stream.color, rs.format.rgb8, 30)
    config.enable_record_to_file(str(path))
    pipe = rs.pipeline()
    try:
        pipe.start(config)
    except RuntimeError as err:
        raise SourceError(f"camera {serial} cannot record to {path} ({err})", "check the camera and path") from err
    n = 0
    try:
        with _progress() as progress:
            task = progress.add_task("recording", total=None)
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                ok, _ = pipe.try_wait_for_frames(1000)
                n += int(ok)
                progress.advance(task, int(ok))
    finally:
        pipe.stop()
    return f"{n} framesets from camera {serial} → {path}"


@one_line_errors("edge-record: error")
def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-record` console script; EdgeErrors exit 2 with one line, no traceback."""
    args = _parser().parse_args(argv)
    if args.from_recording is not None:
        done = _run_from_recording(args)
    elif args.source == "synthetic":
        done = _run_synthetic(args)
    else:
        done = _run_realsense(args)
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
