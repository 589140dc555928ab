"""OPC UA server (optional, off by default): the station's last inspection result and its state, for PLCs that read.

The address space follows the result model of the Machine Vision companion specification (OPC 40100-1) as far as
a station without the companion nodeset can: the nodeset itself is not loaded (its types are not shipped on PyPI),
so the nodes are plain ``BaseObjectType`` objects and ``BaseDataVariableType`` variables in our own namespace,
named as the spec names them. What is modelled (see ``docs/opcua.md``)::

    Objects/<system_name>                       the vision system (40100-1 MachineVisionSystemType's place)
      VisionStateMachine/CurrentState           LocalizedText: Preoperational | Operational | Halted | Error
      ResultManagement/
        LastResult/                             the fields of 40100-1 ResultDataType
          ResultId                String        UUIDv7 of the result
          CreationTime            DateTime      UTC
          IsPartial               Boolean       always False (one result per frame or part)
          ResultState             Int32         40001-101 ResultEvaluationEnum: 0 Undefined, 1 OK, 2 NotOK,
                                                3 NotDecidable
          ResultEvaluation        String        the same as its name
          InternalRecipeId        String        the model hash (RecipeId)
          InternalConfigurationId String        the scoring + ROI hash (ConfigurationId)
          ProcessingTimes/ProcessingDuration   Double, ms: the "total" stage (else the sum of the stages)
          ProcessingTimes/StageTimes           String: JSON {stage: ms}
          ResultContent           String        JSON {scores, latencies, camera_serial, evidence_uris}
          CameraSerial            String
          EvidenceUris            String[]
        ResultCount               UInt64        results published since start; written LAST on every update
    ResultReadyEventType (a BaseEventType subtype) raised by <system_name> on every result, its fields carrying
    ResultId, ResultState, ResultEvaluation, CreationTime, InternalRecipeId, InternalConfigurationId, ResultContent.

The server runs its own asyncio loop in a thread: :meth:`OpcUaServer.publish` hands a result to that loop and
returns at once, so a slow or absent client never holds up a verdict. A client that needs one result's fields
together reads ``ResultCount`` before and after the fields (equal: a consistent set) or subscribes to the event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds

from edge.core.errors import EdgeError
from edge.daemon.record import VerdictRecord
from edge.plant.opcua_config import OpcUaConfig
from edge.plant.record import configuration_id, new_result_id, processing_times, recipe_id

log = logging.getLogger(__name__)

# OPC 40001-101 ResultEvaluationEnum
RESULT_EVALUATION: dict[str, int] = {"Undefined": 0, "OK": 1, "NotOK": 2, "NotDecidable": 3}
STATES = ("Preoperational", "Operational", "Halted", "Error")
State = Literal["Preoperational", "Operational", "Halted", "Error"]


class OpcUaError(EdgeError):
    """The OPC UA server cannot start (port taken, bad address) or was used while not running."""


class InspectionResult(Protocol):
    """What the server reads from a result: the OPC 40100-1 result fields and ours (``edge.plant.record``'s names)."""

    @property
    def ResultId(self) -> str: ...  # noqa: N802 - OPC 40100-1's field names
    @property
    def CreationTime(self) -> datetime: ...  # noqa: N802
    @property
    def ResultState(self) -> str: ...  # noqa: N802 - "OK" | "NotOK" | "NotDecidable"
    @property
    def RecipeId(self) -> str: ...  # noqa: N802
    @property
    def ConfigurationId(self) -> str: ...  # noqa: N802
    @property
    def ProcessingTimes(self) -> Mapping[str, float]: ...  # noqa: N802
    @property
    def scores(self) -> Any: ...
    @property
    def latencies(self) -> Any: ...
    @property
    def camera_serial(self) -> str: ...
    @property
    def evidence_uris(self) -> Sequence[str]: ...


# Our verdicts in OPC 40001-101 words: ERROR (scoring failed) is a result the station could not decide.
RESULT_STATE: dict[str, str] = {"OK": "OK", "NG": "NotOK", "ERROR": "NotDecidable"}


@dataclass(frozen=True, slots=True)
class VerdictResult:
    """A daemon verdict as an :class:`InspectionResult`, for a daemon whose verdicts carry no plant record.

    ResultId is the verdict's own ``result_id`` (the UUIDv7 the daemon gives every verdict, the one the plant outbox
    publishes over MQTT and edge-ingest stores); RecipeId, ConfigurationId and ProcessingTimes are written by the
    same functions as :class:`edge.plant.record.ResultRecord`'s, so OPC UA and MQTT name a result the same way.
    """

    ResultId: str
    CreationTime: datetime
    ResultState: str
    RecipeId: str
    ConfigurationId: str
    ProcessingTimes: Mapping[str, float]
    scores: dict[str, dict[str, Any]]
    latencies: dict[str, float]
    camera_serial: str
    evidence_uris: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: VerdictRecord, camera_serial: str) -> VerdictResult:
        return cls(
            ResultId=record.result_id or new_result_id(),
            CreationTime=datetime.fromtimestamp(record.host_ts_ns / 1e9, UTC),
            ResultState=RESULT_STATE[record.verdict],
            RecipeId=recipe_id(dict(record.model_versions)),
            ConfigurationId=configuration_id(dict(record.scoring_versions), record.roi_version),
            ProcessingTimes=processing_times(dict(record.stage_ms)),
            scores={s.model: {"raw": s.raw, "score": s.score, "verdict": s.verdict} for s in record.scores},
            latencies={"publish_to_verdict_ms": record.stage_ms.get("total", 0.0)},
            camera_serial=camera_serial,
        )


def _json(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic models, dataclasses and mappings included)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses  # noqa: PLC0415

        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def result_values(result: InspectionResult) -> dict[str, ua.Variant]:
    """The LastResult variables of ``result`` (browse name → typed value); raises OpcUaError on an unknown state."""
    state = str(result.ResultState)
    if state not in RESULT_EVALUATION:
        raise OpcUaError(
            f"result {result.ResultId}: ResultState {state!r} is not an OPC 40001-101 ResultEvaluation",
            f"use one of {', '.join(RESULT_EVALUATION)}",
        )
    times = {str(k): float(v) for k, v in result.ProcessingTimes.items()}
    created = result.CreationTime
    if created.tzinfo is None:
        raise OpcUaError(f"result {result.ResultId}: CreationTime {created} has no time zone", "give it in UTC")
    content = {
        "scores": _json(result.scores),
        "latencies": _json(result.latencies),
        "camera_serial": result.camera_serial,
        "evidence_uris": list(result.evidence_uris),
    }
    return {
        "ResultId": ua.Variant(str(result.ResultId), ua.VariantType.String),
        "CreationTime": ua.Variant(created.astimezone(UTC), ua.VariantType.DateTime),
        "IsPartial": ua.Variant(False, ua.VariantType.Boolean),
        "ResultState": ua.Variant(RESULT_EVALUATION[state], ua.VariantType.Int32),
        "ResultEvaluation": ua.Variant(state, ua.VariantType.String),
        "InternalRecipeId": ua.Variant(str(result.RecipeId), ua.VariantType.String),
        "InternalConfigurationId": ua.Variant(str(result.ConfigurationId), ua.VariantType.String),
        "ProcessingDuration": ua.Variant(times.get("total", sum(times.values())), ua.VariantType.Double),
        "StageTimes": ua.Variant(json.dumps(times, sort_keys=True), ua.VariantType.String),
        "ResultContent": ua.Variant(json.dumps(content, sort_keys=True, default=str), ua.VariantType.String),
        "CameraSerial": ua.Variant(str(result.camera_serial), ua.VariantType.String),
        "EvidenceUris": ua.Variant([str(u) for u in result.evidence_uris], ua.VariantType.String),
    }


# Initial values: what a client reads before the first result (an empty, Undefined result).
_EMPTY: dict[str, ua.Variant] = {
    "ResultId": ua.Variant("", ua.VariantType.String),
    "CreationTime": ua.Variant(datetime(1601, 1, 1, tzinfo=UTC), ua.VariantType.DateTime),
    "IsPartial": ua.Variant(False, ua.VariantType.Boolean),
    "ResultState": ua.Variant(0, ua.VariantType.Int32),
    "ResultEvaluation": ua.Variant("Undefined", ua.VariantType.String),
    "InternalRecipeId": ua.Variant("", ua.VariantType.String),
    "InternalConfigurationId": ua.Variant("", ua.VariantType.String),
    "ProcessingDuration": ua.Variant(0.0, ua.VariantType.Double),
    "StageTimes": ua.Variant("{}", ua.VariantType.String),
    "ResultContent": ua.Variant("{}", ua.VariantType.String),
    "CameraSerial": ua.Variant("", ua.VariantType.String),
    "EvidenceUris": ua.Variant([], ua.VariantType.String),
}
_IN_PROCESSING_TIMES = ("ProcessingDuration", "StageTimes")
_EVENT_FIELDS = ("ResultId", "ResultState", "ResultEvaluation", "CreationTime", "InternalRecipeId",
                 "InternalConfigurationId", "ResultContent")  # fmt: skip


class OpcUaServer:
    """An asyncua server in its own thread: ``start()``, then ``publish(result)`` / ``set_state(...)``, ``close()``."""

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config
        self.published = 0
        self.failed = 0  # results the server could not take (an invalid field): logged, counted, never raised
        self.port = config.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self.state: State = "Preoperational"
        self._state: Node | None = None
        self._count: Node | None = None
        self._event: Any = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.config.host}:{self.port}/"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server thread and wait until clients can connect; raises OpcUaError if it cannot listen."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="opcua", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout_s)
        except (OSError, TimeoutError) as err:
            self._stop_loop()
            raise OpcUaError(
                f"OPC UA server cannot listen on {self.config.host}:{self.config.port}: {err}",
                "free the port or set opcua.port / opcua.host to an address this machine can bind",
            ) from None
        log.info("event=opcua_serving endpoint=%s namespace=%s", self.endpoint, self.config.namespace)

    async def _start(self) -> None:
        c = self.config
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{c.host}:{c.port}/")
        server.set_server_name("drumsight-edge station")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(c.namespace)
        system = await server.nodes.objects.add_object(idx, c.system_name)
        machine = await system.add_object(idx, "VisionStateMachine")
        self._state = await machine.add_variable(
            idx, "CurrentState", ua.Variant(ua.LocalizedText("Preoperational"), ua.VariantType.LocalizedText)
        )
        management = await system.add_object(idx, "ResultManagement")
        last = await management.add_object(idx, "LastResult")
        times = await last.add_object(idx, "ProcessingTimes")
        for name, value in _EMPTY.items():
            parent = times if name in _IN_PROCESSING_TIMES else last
            self._nodes[name] = await parent.add_variable(idx, name, value)
        self._count = await management.add_variable(idx, "ResultCount", ua.Variant(0, ua.VariantType.UInt64))
        event_type = await server.create_custom_event_type(
            idx, "ResultReadyEventType", ObjectIds.BaseEventType,
            [(name, _EMPTY[name].VariantType) for name in _EVENT_FIELDS],
        )  # fmt: skip
        self._event = await server.get_event_generator(event_type, system.nodeid)
        await server.start()
        self._server = server
        if server.bserver is not None:
            self.port = int(server.bserver.port)  # the port the OS chose, for port 0

    def publish(self, result: InspectionResult) -> None:
        """Make ``result`` the last result (returns at once; a bad field is logged and counted, never raised)."""
        try:
            values = result_values(result)
        except (OpcUaError, AttributeError, TypeError, ValueError) as err:
            self.failed += 1
            log.error("event=opcua_result_refused error=%r", str(err))
            return
        self._submit(self._write(values))

    def set_state(self, state: State) -> None:
        """Set the vision state machine's CurrentState (returns at once)."""
        if state not in STATES:
            raise OpcUaError(f"OPC UA state {state!r} is not modelled", f"use one of {', '.join(STATES)}")
        self.state = state
        self._submit(self._write_state(state))

    def _submit(self, coro: Any) -> None:
        if self._loop is None or self._server is None:
            coro.close()
            raise OpcUaError("the OPC UA server is not running", "call start() first")
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.add_done_callback(self._log_failure)

    def _log_failure(self, future: Future[None]) -> None:
        if not future.cancelled() and (err := future.exception()) is not None:
            self.failed += 1
            log.error("event=opcua_write_failed error=%r", str(err))

    async def _write(self, values: dict[str, ua.Variant]) -> None:
        assert self._server is not None and self._count is not None
        for name, value in values.items():
            await self._server.write_attribute_value(self._nodes[name].nodeid, ua.DataValue(value))
        self.published += 1
        await self._server.write_attribute_value(
            self._count.nodeid, ua.DataValue(ua.Variant(self.published, ua.VariantType.UInt64))
        )
        event = self._event.event
        for name in _EVENT_FIELDS:
            setattr(event, name, values[name].Value)
        event.Message = ua.LocalizedText(f"result {values['ResultId'].Value}: {values['ResultEvaluation'].Value}")
        await self._event.trigger()

    async def _write_state(self, state: str) -> None:
        assert self._server is not None and self._state is not None
        value = ua.Variant(ua.LocalizedText(state), ua.VariantType.LocalizedText)
        await self._server.write_attribute_value(self._state.nodeid, ua.DataValue(value))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop serving (clients see the connection close) and end the thread."""
        if self._loop is None:
            return
        if self._server is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout_s)
            except (OSError, TimeoutError) as err:
                log.warning("event=opcua_stop_failed error=%r", str(err))
            self._server = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
        self._loop = None
