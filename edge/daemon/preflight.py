"""Every check a start needs before a child is spawned, in one place: ``--check-config`` and the start both call it.

The checks are the per-frame stage's own (``calibration.roi``: camera binding and the ROI a model was trained
with; ``edge.core.scoring``: the scoring file belongs to its ONNX; ``engines.export``: the model card), run here
in the main process so a mismatch is one line and exit 2 instead of a crash loop of the inference child.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.roi import RoiFile, check_trained_with, load_roi
from drivers import create_source
from drivers.realsense import RealSenseSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import StreamSpec
from edge.core.scoring import load_scoring
from edge.daemon.config import EdgeConfig, missing_files
from engines.contract import ModelCard
from engines.export import card_from_onnx


class PreflightError(EdgeError):
    """The config names files that do not fit together (or do not exist); ``lines`` holds one line per problem."""

    def __init__(self, lines: list[str]) -> None:
        lines = [" ".join(part.strip() for part in line.splitlines()) for line in lines]  # e.g. a YAML error's
        super().__init__("; ".join(lines), "fix the files named above, then run --check-config again")
        self.lines = lines


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks read: the source's stream (``None`` when a live camera was not opened), ROI, model cards."""

    spec: StreamSpec | None
    roi: RoiFile
    cards: dict[str, ModelCard]


def preflight(config: EdgeConfig, *, open_camera: bool) -> Preflight:
    """Run every start check; raise :class:`PreflightError` listing each problem (``key: message``).

    A live camera that cannot be opened raises its own (source) error instead: that is not a config problem,
    and the service manager should retry the start.

    Recordings and the synthetic line are always opened (their stream is read from them). A live camera is
    opened only with ``open_camera`` (the start, which needs its stream anyway); otherwise (``--check-config``,
    perhaps while the daemon holds the camera) only the serial the source names is compared with the ROI's.
    There is no engine manifest to check yet: the daemon runs ONNX files only (``models[].onnx``).
    """
    if missing := missing_files(config):
        raise PreflightError(missing)
    problems: list[str] = []
    try:
        roi = load_roi(config.roi)
    except EdgeError as err:
        raise PreflightError([f"roi: {err}"]) from None
    spec = _check_source(config, roi, open_camera, problems)
    cards: dict[str, ModelCard] = {}
    for i, model in enumerate(config.models):
        key = f"models.{i} ({model.name})"
        try:
            load_scoring(model.scoring).check_artefact(model.onnx)
            cards[model.name] = card = card_from_onnx(model.onnx)
            check_trained_with(roi, card.roi_version, model.onnx)
        except EdgeError as err:
            problems.append(f"{key}: {err}")
    if problems:
        raise PreflightError(problems)
    return Preflight(spec, roi, cards)


def _check_source(config: EdgeConfig, roi: RoiFile, open_camera: bool, problems: list[str]) -> StreamSpec | None:
    source = config.source
    live = isinstance(source, RealSenseSourceConfig)
    serial = source.serial if isinstance(source, RealSenseSourceConfig) else None
    if serial is not None and serial != roi.camera.serial:
        problems.append(
            f"source.serial: camera {serial!r} is not the one the ROI was calibrated on "
            f"({roi.camera.serial!r}) — recalibrate with edge-calibrate on this camera, or set its serial"
        )
        return None
    if live and not open_camera:
        return None
    try:
        with create_source(source) as opened:
            spec = opened.spec
    except EdgeError as err:
        if live:  # a camera not (yet) there is not a config error: the start fails with exit 1 and is retried
            raise
        problems.append(f"source: {err}")
        return None
    try:
        roi.check_camera(spec)
    except EdgeError as err:
        problems.append(f"roi: {err}")
    return spec
