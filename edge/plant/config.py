"""The ``plant:`` section of ``edge.yaml``: where the station stands, its object store, outbox limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge.core.config import EdgeModel
from edge.plant.record import StationId
from edge.plant.s3 import S3Config

_NAME = r"^[A-Za-z0-9_.-]*$"


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

    @model_validator(mode="after")
    def _named(self) -> PlantConfig:
        if self.enabled:
            missing = [k for k in ("site", "area", "line", "station") if not getattr(self, k)]
            if missing:
                raise ValueError(f"plant.enabled needs {', '.join(missing)} (the station's topic levels)")
        return self

    def station_id(self) -> StationId:
        return StationId(site=self.site, area=self.area, line=self.line, station=self.station)
