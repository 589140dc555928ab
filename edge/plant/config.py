"""The ``plant:`` section of ``edge.yaml``: where the station stands, its object store, outbox limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge.core.config import EdgeModel
from edge.plant.record import StationId
from edge.plant.s3 import S3Config

_NAME = r"^[A-Za-z0-9_.-]*$"


class RolloutConfig(EdgeModel):
    """The station follows its retained ``…/config/desired`` and runs the bundle installed there (off by default).

    A bundle (ONNX + scoring + ROI) replaces one configured model's ``onnx``/``scoring`` and the config's ``roi``;
    the other configured models, if any, keep their files and must fit the bundle's ROI (docs/plant.md).
    """

    type: Literal["rollout"] = Field("rollout", description="section discriminator")
    enabled: bool = Field(
        False, description="follow …/config/desired and run <data_dir>/bundles/current (needs plant.enabled, "
        "mqtt.enabled and plant.s3)",
    )  # fmt: skip
    model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:/-]+$", description="name of the configured model (models[].name) a bundle "
        "replaces; None: the config's only model",
    )  # fmt: skip
    golden: Path | None = Field(
        None, description="golden.npz for the parity gate of a bundle that ships none (relative: from the config file)"
    )


class PlantConfig(EdgeModel):
    """The station as part of a plant: results to MQTT v5 through the outbox, evidence to S3 (off by default)."""

    type: Literal["plant"] = Field("plant", description="section discriminator")
    enabled: bool = Field(False, description="send results to the plant (needs mqtt.enabled); off: one station alone")
    site: str = Field("", pattern=_NAME, description="plant (site) name: first level of every topic and S3 key")
    area: str = Field("", pattern=_NAME, description="area of the plant: second topic level")
    line: str = Field("", pattern=_NAME, description="production line: third topic level")
    station: str = Field("", pattern=_NAME, description="station name, unique within its line: fourth level")
    s3: S3Config | None = Field(None, description="object store for evidence (None: results go without evidence)")
    outbox_max: int = Field(
        100_000, ge=1, description="results kept waiting for the plant; past it the oldest are given up (alarm)"
    )
    outbox_alarm_after_s: float = Field(
        300.0, gt=0, description="raise the outbox alarm when the oldest waiting result is older than this"
    )
    send_window: int = Field(64, ge=1, le=1000, description="results sent before waiting for the broker's acks")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="models rolled out over …/config/desired (off by default)"
    )

    @model_validator(mode="after")
    def _named(self) -> PlantConfig:
        if self.enabled:
            missing = [k for k in ("site", "area", "line", "station") if not getattr(self, k)]
            if missing:
                raise ValueError(f"plant.enabled needs {', '.join(missing)} (the station's topic levels)")
        return self

    def station_id(self) -> StationId:
        return StationId(site=self.site, area=self.area, line=self.line, station=self.station)
