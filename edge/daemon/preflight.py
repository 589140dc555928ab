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
from edge.daemon.mqtt import MqttError, tls_context
from edge.daemon.release import ReleaseState, verify_release
from engines.contract import ModelCard
from engines.export import card_from_onnx
from engines.runtime.base import EngineError
from engines.runtime.select import Choice, resolve


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
    roi: RoiFile | None  # None: no ROI file (every model of crop mode 'image')
    cards: dict[str, ModelCard]
    runtime: Choice  # the engine runtime this machine gives the models
    release: ReleaseState  # the verified bundle (sha256 per file; signed when release.public_key is set)


def preflight(config: EdgeConfig, *, open_camera: bool) -> Preflight:
    """Run every start check; raise :class:`PreflightError` listing each problem (``key: message``).

    A live camera that cannot be opened raises its own (source) error instead: that is not a config problem,
    and the service manager should retry the start.

    Recordings and the synthetic line are always opened (their stream is read from them). A live camera is
    opened only with ``open_camera`` (the start, which needs its stream anyway); otherwise (``--check-config``,
    perhaps while the daemon holds the camera) only the serial the source names is compared with the ROI's.
    The runtime must be available here (``runtime.backend`` resolved: a TensorRT asked for without tensorrt is a
    config problem), MQTT TLS files must load, and the release check (:func:`edge.daemon.release.verify_release`)
    runs last and raises its own ReleaseError. TensorRT engines themselves are built or checked against their
    manifest by the inference child (``engines.build.ensure_engine``), which may take minutes on a first start.
    """
    if missing := missing_files(config):
        raise PreflightError(missing)
    problems: list[str] = []
    try:
        roi = load_roi(config.roi) if config.roi is not None else None
    except EdgeError as err:
        raise PreflightError([f"roi: {err}"]) from None
    spec = _check_source(config, roi, open_camera, problems)
    cards: dict[str, ModelCard] = {}
    for i, model in enumerate(config.models):
        key = f"models.{i} ({model.name})"
        try:
            load_scoring(model.scoring).check_artefact(model.onnx)
            cards[model.name] = card = card_from_onnx(model.onnx)
            if roi is not None and card.crop_mode != "image":  # 'image' (BAAD): the ROI only checks the mask
                check_trained_with(roi, card.roi_version, model.onnx)
            elif card.crop_mode != "image":
                problems.append(
                    f"{key}: {model.onnx} is of crop mode {card.crop_mode!r} and needs an ROI, and the config names "
                    "no roi — add roi: <roi.yaml from edge-calibrate>, or run a model of crop mode 'image' (BAAD)"
                )
        except EdgeError as err:
            problems.append(f"{key}: {err}")
    runtime: Choice | None = None
    try:
        runtime = resolve(config.runtime)
    except EngineError as err:
        problems.append(str(err))  # reads "runtime … is not available here: …"
    if config.mqtt.enabled and config.mqtt.tls is not None:
        try:
            tls_context(config.mqtt.tls)  # CA, certificate and key must load before anything starts
        except MqttError as err:
            problems.append(f"mqtt.tls: {err}")
    if problems or runtime is None:
        raise PreflightError(problems)
    return Preflight(spec, roi, cards, runtime, verify_release(config))


def _check_source(config: EdgeConfig, roi: RoiFile | None, open_camera: bool, problems: list[str]) -> StreamSpec | None:
    source = config.source
    live = isinstance(source, RealSenseSourceConfig)
    serial = source.serial if isinstance(source, RealSenseSourceConfig) else None
    if roi is not None and serial is not None and serial != roi.camera.serial:
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
        if roi is not None:
            roi.check_camera(spec)
    except EdgeError as err:
        problems.append(f"roi: {err}")
    return spec
