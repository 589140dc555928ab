"""Rollout: a station follows its retained ``…/config/desired`` topic and installs the bundle it names, safely.

The desired payload (:class:`DesiredBundle`) names a bundle — the ONNX, its scoring file and the ROI, each an
``s3://`` URI with its sha256, and optionally golden crops. The agent, in its own thread:

1. downloads every file into ``<data_dir>/bundles/.staging-<bundle>/`` and checks each sha256: one mismatch and the
   bundle is **refused** (the station keeps its model; ``…/config/reported`` says why);
2. checks the files fit together with the start's own checks (the scoring file belongs to that ONNX, the ROI is
   the one the model was trained with: ``edge.core.scoring`` / ``calibration.roi``);
3. builds the engine here with the station's runtime (``ModelStage``: a TensorRT engine is built for this GPU)
   and runs the parity gate (:func:`edge.inspect.parity_gate`, the daemon's own) on the golden crops — the bundle's
   ``golden.npz``, else the station's stored ``plant.rollout.golden``; a failure **rolls back**: the staged files
   are deleted and the station stays on its bundle;
4. swaps atomically: ``<data_dir>/bundles/current`` is a symbolic link, replaced by ``rename(2)`` to point at
   ``bundles/<bundle>/`` (the previous target is kept as ``bundles/previous``);
5. asks the daemon to restart in order (exit code :data:`EXIT_ROLLOUT`, which systemd's ``Restart=on-failure``
   restarts): the new daemon runs the new bundle (:func:`bundle_config`) and reports ``running`` on
   ``…/config/reported``. A bundle that then fails the start checks is swapped back to ``previous``
   (:func:`roll_back_current`, which marks it so that the retained desired message does not install it again)
   and reported ``rolled_back``.

Trust: the sha256 values come from the desired message, so who may write ``…/config/desired`` decides what runs
(broker ACLs: only the release controller may publish there; docs/plant.md). Signing (``edge-sign``,
``release.public_key``) is not combined with rollout yet: the daemon's start checks refuse a config with both.

Bundle ↔ configured model: a bundle is one model; it replaces the ``onnx``/``scoring`` of the configured model
``plant.rollout.model`` (the only model when unset) and the config's ``roi`` (:func:`bundle_config`). The daemon
(``edge.daemon.preflight.preflight_bundle``, ``edge.daemon.app``) starts the agent, runs ``bundles/current`` and
rolls a failing one back.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calibration.roi import check_trained_with, load_roi
from edge.core.errors import EdgeError
from edge.core.scoring import ScoringFile, load_scoring
from edge.inspect import GOLDEN_NAME, ModelStage, parity_gate
from edge.plant.s3 import ObjectStore, S3Error, sha256_file
from engines.contract import ModelCard
from engines.export import card_from_onnx
from engines.runtime.base import EngineError
from engines.runtime.select import RunnerPlan, RuntimeConfig, engine_precision

if TYPE_CHECKING:
    from edge.daemon.config import EdgeConfig

log = logging.getLogger(__name__)

EXIT_ROLLOUT = 75  # EX_TEMPFAIL: the daemon stops in order so the service manager starts it on the new bundle
BUNDLES = "bundles"
FILES = {"onnx": "model.onnx", "scoring": "scoring.yaml", "roi": "roi.yaml", "golden": GOLDEN_NAME}
BUNDLE_NAME = r"^[A-Za-z0-9_.-]+$"
ROLLED_BACK = "ROLLED_BACK"  # in a bundle's folder: it failed the daemon's start checks (the file holds why)


class RolloutError(EdgeError):
    """A desired bundle cannot be installed; ``state`` is what the station reports (refused / rolled_back)."""

    def __init__(self, state: Literal["refused", "rolled_back"], problem: str, remedy: str) -> None:
        super().__init__(problem, remedy)
        self.state = state


class Artifact(BaseModel):
    """One file of a bundle: where it is, and its sha256 (64 hex)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(pattern=r"^s3://[^/]+/.+", description="s3://bucket/key")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file, lower-case hex")


class DesiredBundle(BaseModel):
    """The payload of ``…/config/desired``: what this station should run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: str = Field(pattern=BUNDLE_NAME, description="bundle name, unique per release")
    onnx: Artifact = Field(description="the model (edge-train / edge-quantize ONNX)")
    scoring: Artifact = Field(description="its scoring.yaml")
    roi: Artifact = Field(description="the ROI the model was trained with (roi.yaml)")
    golden: Artifact | None = Field(None, description="golden.npz crops for the parity gate (else the station's)")


def bundles_dir(data_dir: Path) -> Path:
    return data_dir / BUNDLES


def current_bundle(data_dir: Path) -> Path | None:
    """The folder ``bundles/current`` points at, None before the first rollout."""
    link = bundles_dir(data_dir) / "current"
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.replace(link)  # rename(2): a reader sees the old or the new link, never none
    fd = os.open(link.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_current(data_dir: Path, folder: Path) -> None:
    """``bundles/current`` → ``folder`` (atomic); the old target becomes ``bundles/previous``."""
    root = bundles_dir(data_dir)
    old = current_bundle(data_dir)
    if old is not None and old != folder.resolve():
        _point(root / "previous", old)
    _point(root / "current", folder)


def roll_back_current(data_dir: Path, reason: str = "") -> Path | None:
    """Point ``current`` back at ``previous`` (after the current bundle failed at start); the folder it points at now.

    Without a previous bundle (the first rollout failed) ``current`` is removed and None returned: the station
    runs its configured files again. With ``reason``, the failed bundle's folder is marked :data:`ROLLED_BACK`
    (the agent then refuses to install that bundle again: publish a new bundle name instead).
    """
    root = bundles_dir(data_dir)
    failed = current_bundle(data_dir)
    if failed is not None and reason:
        (failed / ROLLED_BACK).write_text(reason + "\n", encoding="utf-8")
    previous = root / "previous"
    if not previous.is_symlink() or not previous.resolve().is_dir():
        (root / "current").unlink(missing_ok=True)
        return None
    target = previous.resolve()
    _point(root / "current", target)
    previous.unlink()
    return target


def rollout_model(config: EdgeConfig) -> int:
    """Index of the configured model a bundle replaces (``plant.rollout.model``, else the only model)."""
    name = config.plant.rollout.model
    if name is None:
        if len(config.models) != 1:
            raise EdgeError(
                f"plant.rollout.model is not set and the config has {len(config.models)} models",
                "name the model a bundle replaces: plant.rollout.model: <models[].name>",
            )
        return 0
    for i, m in enumerate(config.models):
        if m.name == name:
            return i
    raise EdgeError(
        f"plant.rollout.model: {name!r} is not a configured model ({', '.join(m.name for m in config.models)})",
        "set it to one of models[].name",
    )


def bundle_config(config: EdgeConfig, folder: Path) -> EdgeConfig:
    """``config`` running the bundle in ``folder``: its model.onnx and scoring.yaml replace those of the rollout model
    (:func:`rollout_model`, same name), its roi.yaml the config's ROI; everything else stays as configured."""
    out = config.model_copy(deep=True)
    model = out.models[rollout_model(config)]
    model.onnx, model.scoring = folder / FILES["onnx"], folder / FILES["scoring"]
    out.roi = folder / FILES["roi"]
    return out


StageFactory = Callable[[Path], ModelStage]


def station_stage(runtime: RuntimeConfig, data_dir: Path) -> StageFactory:
    """The daemon's way to put a model behind this station's runtime (TensorRT engines cached under data_dir)."""
    return lambda onnx: ModelStage(onnx, RunnerPlan(config=runtime, engine_dir=data_dir / "engines" / "rollout"))


def install_bundle(
    desired: DesiredBundle,
    objects: ObjectStore,
    data_dir: Path,
    runtime: RuntimeConfig,
    make_stage: StageFactory,
    *,
    golden: Path | None = None,
) -> Path:
    """Download, verify, check, build and gate ``desired``; swap it in. Raises RolloutError (nothing swapped)."""
    root = bundles_dir(data_dir)
    final = root / desired.bundle
    staging = root / f".staging-{desired.bundle}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for key, name in FILES.items():
            artifact: Artifact | None = getattr(desired, key)
            if artifact is None:
                continue
            path = staging / name
            try:
                objects.get(artifact.uri, path)
            except S3Error as err:
                raise RolloutError("refused", f"bundle {desired.bundle}: {err.problem}", err.remedy) from None
            if (digest := sha256_file(path)) != artifact.sha256:
                raise RolloutError(
                    "refused",
                    f"bundle {desired.bundle}: {key} {artifact.uri} has sha256 {digest[:12]}…, the desired message "
                    f"says {artifact.sha256[:12]}…",
                    "re-upload the file or fix the sha256 in …/config/desired; the station keeps its bundle",
                )
        if desired.golden is None and golden is not None:
            shutil.copyfile(golden, staging / GOLDEN_NAME)
        _gate(desired.bundle, staging, runtime, make_stage)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except RolloutError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except (EdgeError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise RolloutError(
            "rolled_back", f"bundle {desired.bundle}: {err}", "fix the bundle and publish it again"
        ) from None
    swap_current(data_dir, final)
    return final


def check_files(onnx: Path, scoring_path: Path, roi_path: Path) -> tuple[ScoringFile, ModelCard]:
    """The start's checks on a bundle's files (the scoring file belongs to that ONNX, the ROI is the one it was trained
    with); raises the check's EdgeError. The agent runs them on staged files, ``edge-rollout`` before publishing."""
    scoring = load_scoring(scoring_path)
    scoring.check_artefact(onnx)
    card = card_from_onnx(onnx)
    check_trained_with(load_roi(roi_path), card.roi_version, onnx)
    return scoring, card


def _gate(bundle: str, folder: Path, runtime: RuntimeConfig, make_stage: StageFactory) -> None:
    """The start's checks on the staged files, then the engine built here against ONNX Runtime on golden crops."""
    onnx = folder / FILES["onnx"]
    scoring, card = check_files(onnx, folder / FILES["scoring"], folder / FILES["roi"])
    if not (folder / GOLDEN_NAME).is_file():
        raise RolloutError(
            "rolled_back", f"bundle {bundle}: no golden crops for the parity gate",
            "ship golden.npz in the bundle (edge-train writes it) or set plant.rollout.golden",
        )  # fmt: skip
    norm = scoring.normalisation
    stage = make_stage(onnx)
    try:
        if stage.choice.fallback:  # the stage's own gate failed (a TensorRT/torch engine) and it fell back
            failures = [stage.choice.fallback]
        else:
            threshold = norm.mean + scoring.threshold.value * norm.std
            try:
                report = parity_gate(onnx, card, stage.runner, engine_precision(card, runtime), threshold)
            except EngineError as err:  # golden crops that do not fit the model (another model's, unreadable)
                raise RolloutError(
                    "rolled_back", f"bundle {bundle}: the parity gate cannot run on the golden crops: {err}",
                    "ship the golden.npz edge-train wrote beside this model.onnx",
                ) from None  # fmt: skip
            failures = [f for p in report.pairs for f in p.failures]
    finally:
        stage.close()
    if failures:
        raise RolloutError(
            "rolled_back", f"bundle {bundle}: parity gate failed on this station: {'; '.join(failures)}",
            "the engine built here does not reproduce ONNX Runtime on the golden crops; the station keeps its bundle",
        )  # fmt: skip


class RolloutAgent:
    """Follows ``…/config/desired`` through ``publisher`` and installs bundles in a background thread."""

    def __init__(
        self,
        publisher: Any,  # edge.daemon.mqtt.MqttPublisher (follow / send)
        topic_prefix: str,
        objects: ObjectStore,
        data_dir: Path,
        runtime: RuntimeConfig,
        *,
        make_stage: StageFactory | None = None,
        golden: Path | None = None,
        on_installed: Callable[[Path], None] = lambda _p: None,
    ) -> None:
        self.publisher = publisher
        self.desired_topic = f"{topic_prefix}/config/desired"
        self.reported_topic = f"{topic_prefix}/config/reported"
        self.objects = objects
        self.data_dir = data_dir
        self.runtime = runtime
        self.make_stage = make_stage or station_stage(runtime, data_dir)
        self.golden = golden
        self.on_installed = on_installed
        self.last: dict[str, Any] = {}
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="plant-rollout", daemon=True)

    def start(self) -> None:
        """Follow ``…/config/desired`` (the broker delivers the retained message on every connect)."""
        self._thread.start()
        self.publisher.follow(self.desired_topic, self._queue.put)

    def started(self, rolled_back: tuple[str, str] | None = None) -> None:
        """The station scores with its bundle: report ``running``, or ``rolled_back`` (bundle, why) when the start
        swapped a failed bundle out (``running`` then names the one that runs)."""
        if rolled_back is not None:
            self.report(rolled_back[0], "rolled_back", rolled_back[1])
        else:
            current = current_bundle(self.data_dir)
            self.report(current.name if current is not None else "", "running", "")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop following; an install under way gets ``timeout_s`` to finish (its staging folder is removed on the
        next try if the process exits first)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("event=rollout_stop_timeout action=exit_anyway waited_s=%.0f", timeout_s)

    def report(self, bundle: str, state: str, error: str) -> None:
        """Publish the retained ``…/config/reported`` (what runs, or why a desired bundle was not installed)."""
        current = current_bundle(self.data_dir)
        self.last = {"bundle": bundle, "state": state, "error": error, "at": time.time(),
                     "running": current.name if current is not None else ""}  # fmt: skip
        self.publisher.send(self.reported_topic, json.dumps(self.last), qos=1, retain=True)

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            if self.handle(payload):
                return  # installed: the daemon restarts on it; nothing else is installed before that

    def handle(self, payload: bytes) -> bool:
        """Install the bundle ``payload`` names, unless it already runs; report the outcome; True if installed."""
        try:
            desired = DesiredBundle.model_validate_json(payload)
        except ValidationError as err:
            log.error("event=rollout_refused reason='invalid desired message' error=%r", str(err).splitlines()[0])
            self.report("", "refused", f"invalid desired message: {str(err).splitlines()[0]}")
            return False
        current = current_bundle(self.data_dir)
        if current is not None and current.name == desired.bundle:
            return False  # already running it (the retained message is delivered again on every connect)
        marked = bundles_dir(self.data_dir) / desired.bundle / ROLLED_BACK
        if marked.is_file():  # it failed the start checks here once: installing it again would loop restarts
            why = marked.read_text(encoding="utf-8").strip()
            log.error("event=rollout_rolled_back bundle=%s reason='failed the start checks before' error=%r",
                      desired.bundle, why)  # fmt: skip
            self.report(desired.bundle, "rolled_back", f"bundle {desired.bundle} failed the start checks on this "
                        f"station before ({why}); publish the fixed bundle under a new name")  # fmt: skip
            return False
        log.info("event=rollout_start bundle=%s", desired.bundle)
        try:
            folder = install_bundle(
                desired, self.objects, self.data_dir, self.runtime, self.make_stage, golden=self.golden
            )
        except RolloutError as err:
            log.error("event=rollout_%s bundle=%s error=%r", err.state, desired.bundle, str(err))
            self.report(desired.bundle, err.state, str(err))
            return False
        except Exception as err:  # a bug must not end the agent's thread: the station stays on its bundle
            log.exception("event=rollout_rolled_back bundle=%s reason='unexpected error'", desired.bundle)
            shutil.rmtree(bundles_dir(self.data_dir) / f".staging-{desired.bundle}", ignore_errors=True)
            self.report(desired.bundle, "rolled_back", f"unexpected error: {err!r}")
            return False
        log.warning("event=rollout_installed bundle=%s action=restart", desired.bundle)
        self.on_installed(folder)  # the daemon stops in order (a flag): the report still goes out
        self.report(desired.bundle, "installed", "")
        return True
