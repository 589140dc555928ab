"""Every check a start needs before a child is spawned, in one place: ``--check-config`` and the start both call it.

The checks are the per-frame stage's own (``calibration.roi``: camera binding and the ROI a model was trained
with; ``edge.core.scoring``: the scoring file belongs to its ONNX; ``engines.export``: the model card), run here
in the main process so a mismatch is one line and exit 2 instead of a crash loop of the inference child.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from calibration.roi import RoiFile, check_trained_with, load_roi
from drivers import create_source
from drivers.realsense import RealSenseSourceConfig
from edge.core.errors import EdgeError
from edge.core.frame import StreamSpec
from edge.core.scoring import load_scoring
from edge.daemon.config import EdgeConfig, missing_files
from edge.daemon.mqtt import MqttError, tls_context
from edge.daemon.release import ReleaseError, ReleaseState, verify_release
from edge.plant.rollout import bundle_config, current_bundle, roll_back_current, rollout_model
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


@dataclass(frozen=True, slots=True)
class BundleStart:
    """Which rollout bundle a start runs (``""``: the configured files), and the one it swapped out, if any."""

    bundle: str = ""
    rolled_back: tuple[str, str] | None = None  # (bundle, why) when the current bundle failed the start checks


def rollout_problems(config: EdgeConfig) -> list[str]:
    """What ``plant.rollout.enabled`` needs and the config lacks, one line."""
    r = config.plant.rollout
    if not r.enabled:
        return []
    lacks = [k for k, ok in (("plant.enabled: true", config.plant.enabled), ("mqtt.enabled: true",
             config.mqtt.enabled), ("a plant.s3 store", config.plant.s3 is not None)) if not ok]  # fmt: skip
    problems = []
    if lacks:
        problems.append(f"plant.rollout.enabled: true needs {', '.join(lacks)} (bundles are named on MQTT and "
                        "downloaded from S3) — set them, or plant.rollout.enabled: false")  # fmt: skip
    if config.release.public_key is not None:
        problems.append("plant.rollout.enabled: true cannot be combined with release.public_key yet (a rolled-out "
                        "bundle is not signed with edge-sign) — remove one of them")  # fmt: skip
    if r.golden is not None and not r.golden.is_file():
        problems.append(f"plant.rollout.golden: file {r.golden} does not exist")
    try:
        rollout_model(config)
    except EdgeError as err:
        problems.append(str(err))
    return problems


def preflight_bundle(config: EdgeConfig, *, open_camera: bool, roll_back: bool) -> tuple[EdgeConfig, Preflight,
                                                                                          BundleStart]:  # fmt: skip
    """:func:`preflight` of what this start runs: with ``plant.rollout`` on, the bundle ``<data_dir>/bundles/current``
    points at (:func:`edge.plant.rollout.bundle_config`), else the configured files.

    A current bundle that fails the checks is swapped back to the previous one (``roll_back``, a start; the
    configured files when there is none) and that is checked in turn; without ``roll_back`` (``--check-config``)
    its problems are raised. Returns the config to run, its checks and which bundle runs.
    """
    if problems := rollout_problems(config):
        raise PreflightError(problems)
    data_dir = config.storage.data_dir
    rolled_back: tuple[str, str] | None = None
    while True:
        folder = current_bundle(data_dir) if config.plant.rollout.enabled else None
        effective = bundle_config(config, folder) if folder is not None else config
        try:
            checked = preflight(effective, open_camera=open_camera)
        except (PreflightError, ReleaseError) as err:
            if folder is None:
                raise
            if not roll_back:
                lines = err.lines if isinstance(err, PreflightError) else [str(err)]
                raise PreflightError([f"bundle {folder.name} ({folder}): {line}" for line in lines]) from None
            why = "; ".join(err.lines) if isinstance(err, PreflightError) else str(err)
            rolled_back = rolled_back or (folder.name, f"bundle {folder.name} failed the start checks: {why}")
            roll_back_current(data_dir, why)
            continue
        if folder is not None:  # the bundle's name is its release name (config_changes, logs)
            checked = replace(checked, release=replace(checked.release, release=folder.name))
        return effective, checked, BundleStart(folder.name if folder is not None else "", rolled_back)


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
