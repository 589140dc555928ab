"""The OPC UA server: a real asyncua client reads the last result and the station state, and gets the event."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import Client, ua

from edge.plant.opcua import OpcUaConfig, OpcUaError, OpcUaServer, result_values


@dataclass(frozen=True)
class Result:
    """A result with the fields ``edge.plant.record`` carries (the server takes any object that has them)."""

    ResultId: str = "018f6b1e-7c2a-7d3e-9a4b-0123456789ab"
    CreationTime: datetime = datetime(2026, 12, 4, 18, 0, 1, 250000, tzinfo=UTC)
    ResultState: str = "NotOK"
    RecipeId: str = "a1b2c3d4e5f6"
    ConfigurationId: str = "0f1e2d3c4b5a"
    ProcessingTimes: dict[str, float] = field(default_factory=lambda: {"crop": 1.5, "infer:ast": 24.0, "total": 27.5})
    scores: dict[str, float] = field(default_factory=lambda: {"ast": 3.2})
    latencies: dict[str, float] = field(default_factory=lambda: {"publish_to_verdict": 31.0})
    camera_serial: str = "123456789012"
    evidence_uris: tuple[str, ...] = ("s3://plant/line1/st1/2026/12/04/018f6b1e/color.png",)


@pytest.fixture
def server() -> Any:
    s = OpcUaServer(OpcUaConfig(enabled=True, port=0, system_name="Station1"))
    s.start()
    yield s
    s.close()


async def _read(endpoint: str, names: list[str]) -> dict[str, Any]:
    async with Client(endpoint, timeout=10) as client:
        idx = await client.get_namespace_index("urn:drumsight-edge:station")
        root = client.nodes.objects
        out: dict[str, Any] = {}
        for name in names:
            path = [f"{idx}:{p}" for p in ["Station1", *name.split("/")]]
            out[name] = await (await root.get_child(path)).read_value()
        return out


LAST = "ResultManagement/LastResult/"
NAMES = [LAST + n for n in ("ResultId", "CreationTime", "IsPartial", "ResultState", "ResultEvaluation",
         "InternalRecipeId", "InternalConfigurationId", "ProcessingTimes/ProcessingDuration",
         "ProcessingTimes/StageTimes", "ResultContent", "CameraSerial", "EvidenceUris")]  # fmt: skip


async def _until(endpoint: str, count: int) -> dict[str, Any]:
    """Read everything once ``ResultCount`` reached ``count`` (writes are asynchronous)."""
    for _ in range(100):
        got = await _read(endpoint, ["ResultManagement/ResultCount", "VisionStateMachine/CurrentState", *NAMES])
        if got["ResultManagement/ResultCount"] >= count:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"ResultCount never reached {count}: {got}")


def test_client_reads_last_result_and_state(server: OpcUaServer) -> None:
    before = asyncio.run(_until(server.endpoint, 0))
    assert before[LAST + "ResultEvaluation"] == "Undefined" and before[LAST + "ResultId"] == ""
    assert before["VisionStateMachine/CurrentState"].Text == "Preoperational"

    server.set_state("Operational")
    server.publish(Result(ResultId="first", ResultState="OK"))
    server.publish(Result())
    got = asyncio.run(_until(server.endpoint, 2))
    assert got["ResultManagement/ResultCount"] == 2
    assert got["VisionStateMachine/CurrentState"].Text == "Operational"
    assert got[LAST + "ResultId"] == Result.ResultId  # the last one, not the first
    assert got[LAST + "ResultState"] == 2 and got[LAST + "ResultEvaluation"] == "NotOK"
    assert got[LAST + "CreationTime"].replace(tzinfo=UTC) == Result.CreationTime
    assert got[LAST + "IsPartial"] is False
    assert got[LAST + "InternalRecipeId"] == "a1b2c3d4e5f6"
    assert got[LAST + "InternalConfigurationId"] == "0f1e2d3c4b5a"
    assert got[LAST + "ProcessingTimes/ProcessingDuration"] == 27.5
    assert json.loads(got[LAST + "ProcessingTimes/StageTimes"]) == {"crop": 1.5, "infer:ast": 24.0, "total": 27.5}
    content = json.loads(got[LAST + "ResultContent"])
    assert content["scores"] == {"ast": 3.2} and content["latencies"] == {"publish_to_verdict": 31.0}
    assert got[LAST + "CameraSerial"] == "123456789012"
    assert got[LAST + "EvidenceUris"] == list(Result().evidence_uris)


def test_result_ready_event_carries_the_result(server: OpcUaServer) -> None:
    async def scenario() -> list[Any]:
        events: list[Any] = []

        class Handler:
            def event_notification(self, event: Any) -> None:
                events.append(event)

        async with Client(server.endpoint, timeout=10) as client:
            idx = await client.get_namespace_index("urn:drumsight-edge:station")
            system = await client.nodes.objects.get_child(f"{idx}:Station1")
            event_type = await client.nodes.base_event_type.get_child(f"{idx}:ResultReadyEventType")
            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_events(system, event_type)
            await asyncio.sleep(0.3)
            server.publish(Result(ResultId="evented", ResultState="NotDecidable"))
            for _ in range(100):
                if events:
                    break
                await asyncio.sleep(0.05)
            await sub.delete()
        return events

    events = asyncio.run(scenario())
    assert len(events) == 1
    assert events[0].ResultId == "evented" and events[0].ResultState == 3
    assert events[0].ResultEvaluation == "NotDecidable"


def test_bad_results_are_counted_not_raised(server: OpcUaServer) -> None:
    server.publish(Result(ResultState="NG"))  # our internal word, not an OPC 40001-101 one
    server.publish(Result(CreationTime=datetime(2026, 12, 4)))  # no time zone
    assert server.failed == 2 and server.published == 0
    with pytest.raises(OpcUaError, match="not modelled"):
        server.set_state("Running")  # type: ignore[arg-type]


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        s = OpcUaServer(OpcUaConfig(enabled=True, port=sock.getsockname()[1]))
        with pytest.raises(OpcUaError, match=r"cannot listen.*free the port"):
            s.start()


def test_variant_types_match_the_spec() -> None:
    v = result_values(Result())
    assert v["ResultState"].VariantType == ua.VariantType.Int32
    assert v["CreationTime"].VariantType == ua.VariantType.DateTime
    assert v["IsPartial"].VariantType == ua.VariantType.Boolean
