"""A daemon with OPC UA on: a real asyncua client reads its last verdict and its state while it scores a line."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import Client

from tests.daemon.test_daemon import _db, _free_port, daemon

NS = "urn:drumsight-edge:station"


async def _read(endpoint: str) -> dict[str, Any]:
    async with Client(endpoint, timeout=10) as client:
        idx = await client.get_namespace_index(NS)
        station = await client.nodes.objects.get_child(f"{idx}:Line1Station")

        async def value(path: str) -> Any:
            return await (await station.get_child([f"{idx}:{p}" for p in path.split("/")])).read_value()

        last = "ResultManagement/LastResult/"
        return {
            "count": await value("ResultManagement/ResultCount"),
            "state": (await value("VisionStateMachine/CurrentState")).Text,
            "id": await value(last + "ResultId"),
            "evaluation": await value(last + "ResultEvaluation"),
            "recipe": await value(last + "InternalRecipeId"),
            "configuration": await value(last + "InternalConfigurationId"),
            "duration": await value(last + "ProcessingTimes/ProcessingDuration"),
        }


def test_daemon_serves_its_last_verdict_over_opcua(make_config: Callable[..., Path]) -> None:
    port = _free_port()
    source = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2}
    opcua = {"enabled": True, "port": port, "system_name": "Line1Station"}
    config = make_config(source=source, opcua=opcua)
    endpoint = f"opc.tcp://127.0.0.1:{port}/"
    with daemon(config) as d:
        d.wait_for(r"event=opcua_serving")
        d.wait_for(r"event=ready", timeout_s=60)
        deadline = time.monotonic() + 30
        while (got := asyncio.run(_read(endpoint)))["count"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    assert got["count"] >= 3, got
    assert got["state"] == "Operational"
    assert uuid.UUID(got["id"]).version == 7
    assert got["evaluation"] in ("OK", "NotOK")
    assert got["duration"] > 0
    with sqlite3.connect(_db(config)) as db:
        models, scoring, roi = db.execute(
            "SELECT model_versions_json, scoring_versions_json, roi_version FROM verdicts ORDER BY id DESC LIMIT 1"
        ).fetchone()
        (same_id,) = db.execute("SELECT count(*) FROM verdicts WHERE result_id = ?", (got["id"],)).fetchone()
    assert same_id == 1, "OPC UA's ResultId is the verdict's result_id (the one the plant outbox publishes)"
    assert got["recipe"] == f"ast-tiny@{json.loads(models)['ast-tiny']}", "the model hash the database records"
    assert got["configuration"] == f"ast-tiny@{json.loads(scoring)['ast-tiny']},roi@{roi}"
