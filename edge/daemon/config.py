"""The daemon's one config file (``edge.yaml``): a pydantic-validated tree whose errors name key, value and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from drivers import SourceConfig
from drivers.playback import PlaybackSourceConfig
from drivers.realsense import RealSenseSourceConfig
from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.ringbuf import RingPolicy
from edge.daemon.mqtt import MqttConfig
from edge.daemon.release import ReleaseConfig
from edge.plant.config import PlantConfig
from edge.plant.opcua_config import OpcUaConfig
from engines.runtime.select import RuntimeConfig

SCHEMA_VERSION = 1


class ConfigError(EdgeError):
    """The config file is missing, unreadable or invalid; ``lines`` holds one message per problem."""

    def __init__(self, problem: str, remedy: str = "", lines: list[str] | None = None) -> None:
        super().__init__(problem, remedy)
        self.lines = lines or [str(self)]


class ModelConfig(EdgeModel):
    """One exported model and the scoring file fitted for it."""

    type: Literal["model"] = Field("model", description="discriminator (one kind today: an ONNX model)")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:/-]+$", description="unique name used in records/metrics")
    onnx: Path = Field(description="model.onnx written by edge-train (relative paths: from the config file)")
    scoring: Path = Field(description="scoring.yaml fitted for exactly that ONNX file")
    mask_iou_floor: float = Field(
        0.8, ge=0.0, le=1.0, description="a model with a foreground output (BAAD) run with an ROI: its predicted "
        "mask's IoU against the ROI mask below this raises edge_foreground_mask_alarm (camera or drum support moved)",
    )  # fmt: skip
    mask_iou_frames: int = Field(
        3, ge=1, description="consecutive scored frames below mask_iou_floor before the alarm is raised (and above "
        "it before it is cleared)",
    )  # fmt: skip


class GatingConfig(EdgeModel):
    """Which frames are scored: a drum must fill the ROI crop; per_part scores each drum once when it is still."""

    type: Literal["gating"] = Field("gating", description="discriminator")
    min_roi_fill: float = Field(0.2, ge=0.0, le=1.0, description="share of the crop inside the ROI below which a "
                                "frame shows no drum and is gated (not scored)")  # fmt: skip
    mode: Literal["per_frame", "per_part"] = Field(
        "per_frame", description="per_frame: score every frame with a drum; per_part: score each drum once"
    )
    stable_frames: int = Field(
        2, ge=1, description="per_part: consecutive drum frames before the part is scored (its Nth frame)"
    )


class StorageConfig(EdgeModel):
    """Where verdicts and evidence go."""

    type: Literal["storage"] = Field("storage", description="discriminator")
    data_dir: Path = Field(Path("/var/lib/edge-daemon"), description="results.db and evidence/ live here")
    evidence_quota_mb: float = Field(1024.0, gt=0, description="evidence stops (verdicts go on) past this size")
    sample_ok_every: int = Field(0, ge=0, description="also keep evidence of every Nth OK verdict (0: NG only)")
    evidence_ng_reserve: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the evidence quota only NG (and ERROR) evidence may use: sampled "
        "OK evidence stays within the rest, so it can never starve NG parts"
    )  # fmt: skip
    retention_days: float | None = Field(
        None, gt=0, description="delete verdicts older than this many days (None: keep them all)"
    )
    max_db_mb: float | None = Field(
        None, gt=0, description="delete the oldest verdicts while results.db uses more than this (None: no limit)"
    )
    pending_max: int = Field(
        10000, ge=1, description="verdicts held in memory while results.db cannot be written; more are counted lost"
    )
    outage_limit_s: float = Field(
        60.0, gt=0, description="results.db unwritable longer than this: the daemon stops in order and exits 1"
    )


class MetricsConfig(EdgeModel):
    """The Prometheus endpoint."""

    type: Literal["metrics"] = Field("metrics", description="discriminator")
    enabled: bool = Field(True, description="serve /metrics over HTTP")
    host: str = Field("127.0.0.1", description="bind address (keep it on localhost unless a firewall guards it)")
    port: int = Field(9108, ge=1, le=65535, description="TCP port")


class RingConfig(EdgeModel):
    """The shared-memory ring between the capture and inference processes."""

    type: Literal["ring"] = Field("ring", description="discriminator")
    slots: int = Field(4, ge=2, le=64, description="frames the ring holds")
    policy: Literal["auto", "latest", "lossless"] = Field(
        "auto", description="auto: latest for a live camera (drop the oldest), lossless for recordings/synthetic"
    )


class SupervisionConfig(EdgeModel):
    """Child restarts: a crashed process is restarted at most ``max_restarts`` times per ``window_s``."""

    type: Literal["supervision"] = Field("supervision", description="discriminator")
    max_restarts: int = Field(5, ge=0, description="restarts allowed per process within the window")
    window_s: float = Field(60.0, gt=0, description="sliding window of the restart budget (seconds)")
    drain_timeout_s: float = Field(30.0, gt=0, description="on shutdown, wait this long for the ring to drain")


class EdgeConfig(EdgeModel):
    """Root of ``edge.yaml``."""

    schema_version: Literal[1] = Field(description="config layout version; this build reads 1")
    source: SourceConfig = Field(description="where frames come from (realsense | playback | synthetic)")
    roi: Path | None = Field(
        None, description="roi.yaml written by edge-calibrate; may be left out when every model is of crop mode "
        "'image' (BAAD, which learns the foreground itself); with it such a model's mask is checked against the ROI",
    )  # fmt: skip
    models: list[ModelConfig] = Field(min_length=1, description="models scored on every gated-in frame or part")
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="engine backend (auto | tensorrt | onnxruntime | torch), device, "
        "precision, threads, crop device"
    )  # fmt: skip
    latency_budget_ms: float = Field(200.0, gt=0, description="frames slower than this, publish to verdict, are late")
    gating: GatingConfig = Field(default_factory=GatingConfig, description="part gating")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="results and evidence")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="verdict JSON over MQTT (off by default)")
    opcua: OpcUaConfig = Field(
        default_factory=OpcUaConfig, description="last result and station state over OPC UA (off by default)"
    )
    ring: RingConfig = Field(default_factory=RingConfig, description="shared-memory ring")
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig, description="restart budget")
    release: ReleaseConfig = Field(
        default_factory=ReleaseConfig, description="signed model + scoring + ROI bundles (off without public_key)"
    )
    plant: PlantConfig = Field(
        default_factory=PlantConfig, description="results to the plant over MQTT v5 + S3 (off by default)"
    )

    @model_validator(mode="after")
    def _unique_model_names(self) -> EdgeConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dupes)}")
        if self.plant.enabled and not self.mqtt.enabled:
            raise ValueError("plant.enabled needs mqtt.enabled (results reach the plant over MQTT)")
        return self

    def ring_policy(self) -> RingPolicy:
        """``auto`` resolves to latest for a live camera (never stall it) and lossless for files and synthetic."""
        if self.ring.policy != "auto":
            return RingPolicy(self.ring.policy)
        return RingPolicy.LATEST if isinstance(self.source, RealSenseSourceConfig) else RingPolicy.LOSSLESS

    def resolved(self, base: Path) -> EdgeConfig:
        """A copy whose relative file paths are taken from ``base`` (the config file's folder)."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        cfg = self.model_copy(deep=True)
        cfg.roi = fix(cfg.roi) if cfg.roi is not None else None
        cfg.storage.data_dir = fix(cfg.storage.data_dir)
        for m in cfg.models:
            m.onnx, m.scoring = fix(m.onnx), fix(m.scoring)
        if isinstance(cfg.source, PlaybackSourceConfig):
            cfg.source.path = fix(cfg.source.path)
        if (tls := cfg.mqtt.tls) is not None:
            tls.ca_file = fix(tls.ca_file)
            tls.cert_file = fix(tls.cert_file) if tls.cert_file is not None else None
            tls.key_file = fix(tls.key_file) if tls.key_file is not None else None
        cfg.release.manifest = fix(cfg.release.manifest)
        if cfg.plant.rollout.golden is not None:
            cfg.plant.rollout.golden = fix(cfg.plant.rollout.golden)
        if cfg.release.public_key is not None:
            cfg.release.public_key = fix(cfg.release.public_key)
        return cfg


def _yaml_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the composed YAML (None if not found)."""
    node, line = root, None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == key), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        elif isinstance(key, str) and not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            continue  # a union tag (e.g. "playback") pydantic inserts into the path
        else:
            break
    return line


def _describe(loc: tuple[int | str, ...], err: Any, root: yaml.Node | None, path: Path) -> str:
    key = ".".join(str(p) for p in loc) or "<root>"
    line = _yaml_line(root, loc)
    where = f"{path}:{line}" if line else str(path)
    value = "missing" if err["type"] == "missing" else f"got {err.get('input')!r}"
    return f"{where}: {key}: {err['msg']} ({value})"


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> tuple[int | str, ...]:
    """Drop the discriminator tags pydantic inserts into union paths (``source.playback.path`` → ``source.path``)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and isinstance(part, str) and node.get("type") == part:
            continue
        out.append(part)
        node = _child(node, part)
    return tuple(out)


def parse_config(text: str, path: Path) -> EdgeConfig:
    """Validate YAML text; every problem becomes one line ``file:line: key.path: message (got value)``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err}", "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping", "start from deploy/edge.example.yaml")
    try:
        return EdgeConfig.model_validate(data).resolved(path.parent.resolve())
    except ValidationError as err:
        lines = [_describe(_clean_loc(tuple(e["loc"]), data), e, root, path) for e in err.errors()]
        raise ConfigError(f"{path}: {len(lines)} invalid setting(s)", "fix the keys named above", lines) from None


def missing_files(config: EdgeConfig) -> list[str]:
    """Files the config names that do not exist (``--check-config`` reports them; start-up would fail on them)."""
    named = [("roi", config.roi)] if config.roi is not None else []
    named += [(f"models.{i}.{k}", getattr(m, k)) for i, m in enumerate(config.models) for k in ("onnx", "scoring")]
    if isinstance(config.source, PlaybackSourceConfig):
        named.append(("source.path", config.source.path))
    return [f"{key}: file {path} does not exist" for key, path in named if not path.is_file()]


def load_config(path: Path) -> EdgeConfig:
    """Read and validate ``edge.yaml``; raises ConfigError with one line per problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", "pass --config with an existing edge.yaml") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}", "check its permissions and encoding") from None
    return parse_config(text, path)
