"""The result record a station sends to the plant: OPC 40100-1's result fields plus ours, one pydantic model.

Every consumer reads this one model: the MQTT outbox publishes it as JSON, ``edge-ingest`` writes it into
PostgreSQL, and the OPC UA server exposes the last one. The OPC 40100-1 names keep their spelling (``ResultId``,
``CreationTime``, ``ResultState``, ``RecipeId``, ``ConfigurationId``, ``ProcessingTimes``); our own fields are
snake_case.

``ResultState`` follows OPC 40001-101's ``ResultEvaluationEnum``: OK → ``OK``, NG → ``NotOK``, and our ERROR (a
frame whose scoring failed) → ``NotDecidable`` (the part was seen but no decision could be made); ``Undefined``
is never sent by a station.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import uuid6
from pydantic import BaseModel, ConfigDict, Field

from edge.daemon.record import RecordVerdict, VerdictRecord

RESULT_SCHEMA_VERSION = 1
ResultStateName = Literal["Undefined", "OK", "NotOK", "NotDecidable"]
STATE_OF_VERDICT: dict[RecordVerdict, ResultStateName] = {"OK": "OK", "NG": "NotOK", "ERROR": "NotDecidable"}


def new_result_id() -> str:
    """A new UUIDv7 (RFC 9562) as text: time-ordered, so ids sort in creation order, and unique across stations."""
    return str(uuid6.uuid7())


def recipe_id(model_versions: dict[str, str]) -> str:
    """The models that decided, ``name@sha256`` (12 hex) sorted and comma-joined: OPC 40100's InternalRecipeId."""
    return ",".join(f"{name}@{digest}" for name, digest in sorted(model_versions.items()))


def configuration_id(scoring_versions: dict[str, str], roi_version: str) -> str:
    """The scoring files and the ROI, ``name@sha256`` sorted, then ``roi@…``: OPC 40100's InternalConfigurationId."""
    parts = [f"{name}@{digest}" for name, digest in sorted(scoring_versions.items())]
    return ",".join([*parts, f"roi@{roi_version}"])


def processing_times(stage_ms: dict[str, float]) -> dict[str, float]:
    """Coarse stage → ms: every ``infer:<model>`` summed into ``infer``; other stages as they are."""
    out: dict[str, float] = {}
    for stage, ms in stage_ms.items():
        key = "infer" if stage.startswith("infer:") else stage
        out[key] = out.get(key, 0.0) + float(ms)
    return out


class ResultScore(BaseModel):
    """One model's opinion of the part."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: float = Field(description="the graph's raw anomaly score")
    score: float = Field(description="the score normalised by the model's scoring file (threshold at 0.5)")
    verdict: Literal["OK", "NG"] = Field(description="this model's own verdict")


class ResultRecord(BaseModel):
    """One inspection result as the plant sees it (MQTT payload, PostgreSQL row, OPC UA result)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(1, description="payload layout version (RESULT_SCHEMA_VERSION)")
    ResultId: str = Field(description="UUIDv7 of this result; consumers deduplicate on it")
    CreationTime: datetime = Field(description="when the frame was scored (host clock, UTC)")
    ResultState: ResultStateName = Field(description="OK | NotOK | NotDecidable (OPC 40001-101 ResultEvaluationEnum)")
    RecipeId: str = Field(description="the models that decided, name@sha256 (InternalRecipeId)")
    ConfigurationId: str = Field(description="scoring files and ROI, name@sha256 (InternalConfigurationId)")
    ProcessingTimes: dict[str, float] = Field(description="coarse stage → milliseconds (crop, infer, score, total)")
    site: str = Field(description="plant (site) of the station")
    area: str = Field(description="area of the plant")
    line: str = Field(description="production line")
    station: str = Field(description="station name, unique within its line")
    sequence: int = Field(description="the daemon's frame sequence number (restarts with the daemon)")
    kind: Literal["frame", "part"] = Field(description="a scored frame, or a part scored once (gating.mode)")
    part_id: int | None = Field(description="part number under per_part gating")
    verdict: RecordVerdict = Field(description="the daemon's own verdict: OK | NG | ERROR")
    scores: dict[str, ResultScore] = Field(description="model name → its scores")
    latencies: dict[str, float] = Field(description="every stage → milliseconds, per model for inference")
    camera_serial: str = Field(description="serial number of the camera that took the frame")
    evidence_uris: list[str] = Field(description="s3:// URIs of the uploaded evidence files (empty: none kept)")
    error: str = Field("", description="why scoring failed (ERROR verdicts)")

    @property
    def topic_prefix(self) -> str:
        return f"{self.site}/{self.area}/{self.line}/{self.station}"

    @classmethod
    def of(
        cls,
        record: VerdictRecord,
        *,
        station: StationId,
        camera_serial: str,
        evidence_uris: list[str] | None = None,
    ) -> ResultRecord:
        """The plant record of one daemon verdict (``record.result_id`` must be set)."""
        if not record.result_id:
            raise ValueError(f"verdict {record.sequence} has no result_id")
        return cls(
            ResultId=record.result_id,
            CreationTime=datetime.fromtimestamp(record.host_ts_ns / 1e9, tz=UTC),
            ResultState=STATE_OF_VERDICT[record.verdict],
            RecipeId=recipe_id(record.model_versions),
            ConfigurationId=configuration_id(record.scoring_versions, record.roi_version),
            ProcessingTimes=processing_times(record.stage_ms),
            site=station.site,
            area=station.area,
            line=station.line,
            station=station.station,
            sequence=record.sequence,
            kind=record.kind,
            part_id=record.part_id,
            verdict=record.verdict,
            scores={s.model: ResultScore(raw=s.raw, score=s.score, verdict=s.verdict) for s in record.scores},
            latencies=dict(record.stage_ms),
            camera_serial=camera_serial,
            evidence_uris=evidence_uris or [],
            error=record.error,
        )


class StationId(BaseModel):
    """Where a station stands: the four levels of its MQTT topics (``{site}/{area}/{line}/{station}/…``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="plant (site) name")
    area: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="area of the plant")
    line: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="production line")
    station: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="station name, unique within its line")

    @property
    def prefix(self) -> str:
        """``site/area/line/station``: the root of every topic of this station."""
        return f"{self.site}/{self.area}/{self.line}/{self.station}"

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}"
