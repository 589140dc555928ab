"""Rollout against real servers: the bundle in SeaweedFS S3, …/config/desired on Mosquitto, a real ONNX model.

A CPU station's engine is ONNX Runtime itself, which cannot drift from the ONNX Runtime reference; the parity
failure is therefore injected the way a bad TensorRT build shows itself: a runner whose anomaly maps are off by 50 %.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.daemon.mqtt import MqttConfig, MqttPublisher
from edge.inspect import GOLDEN_NAME, ModelStage
from edge.plant.rollout import (
    DesiredBundle,
    RolloutAgent,
    current_bundle,
    install_bundle,
    roll_back_current,
    swap_current,
)
from edge.plant.s3 import ObjectStore, S3Config
from engines.runtime.base import Runner, TensorSpec
from engines.runtime.ort import OrtRunner, OrtRunnerConfig
from engines.runtime.select import RuntimeConfig
from tests.daemon.conftest import DaemonAssets
from tests.servers import Mosquitto, SeaweedS3

PREFIX = "wuxi/assembly/L3/drum-07"


class DriftingRunner(Runner):
    """ONNX Runtime with its anomaly maps scaled by 1.5: what a miscompiled engine on one GPU looks like."""

    def __init__(self, onnx: Path) -> None:
        super().__init__("drifting")
        self.inner = OrtRunner(onnx, OrtRunnerConfig(intra_op_threads=1))

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        self.inner.activate()
        return self.inner.input_specs, self.inner.output_specs

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.infer(feed)
        out["anomaly_map"] *= 1.5
        return out

    def _deactivate_impl(self) -> None:
        self.inner.deactivate()


@pytest.fixture(scope="session")
def bucket(seaweed: SeaweedS3, daemon_assets: DaemonAssets) -> dict[str, tuple[str, str]]:
    """The assets' bundle uploaded to S3: key → (uri, sha256)."""
    seaweed.make_bucket("bundles")
    client = seaweed.client()
    files = {"onnx": daemon_assets.onnx, "scoring": daemon_assets.scoring, "roi": daemon_assets.roi,
             "golden": daemon_assets.onnx.with_name(GOLDEN_NAME)}  # fmt: skip
    out = {}
    for key, path in files.items():
        data = path.read_bytes()
        client.put_object(Bucket="bundles", Key=f"ast-2026-12/{path.name}", Body=data)
        out[key] = (f"s3://bundles/ast-2026-12/{path.name}", hashlib.sha256(data).hexdigest())
    return out


def desired(name: str, files: dict[str, tuple[str, str]], **wrong: str) -> DesiredBundle:
    return DesiredBundle.model_validate(
        {"bundle": name, **{k: {"uri": uri, "sha256": wrong.get(k, sha)} for k, (uri, sha) in files.items()}}
    )


@pytest.fixture(scope="session")
def objects(seaweed: SeaweedS3) -> ObjectStore:
    return ObjectStore(S3Config(endpoint_url=seaweed.endpoint, bucket="bundles", access_key_id="k",
                                secret_access_key="s"))  # fmt: skip


RUNTIME = RuntimeConfig(threads=1)


def station_on_first_bundle(data_dir: Path, files: dict[str, tuple[str, str]], objects: ObjectStore) -> Path:
    return install_bundle(desired("first", files), objects, data_dir, RUNTIME, ModelStage)


class Agent:
    """A rollout agent on a real MQTT v5 connection, and a listener on …/config/reported."""

    def __init__(self, port: int, objects: ObjectStore, data_dir: Path, **kw: Any) -> None:
        self.installed: list[Path] = []
        self.publisher = MqttPublisher(MqttConfig(enabled=True, host="127.0.0.1", port=port), v5=True)
        assert self.publisher.wait_connected(5)
        self.agent = RolloutAgent(self.publisher, PREFIX, objects, data_dir, RUNTIME,
                                  on_installed=self.installed.append, **kw)  # fmt: skip
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, m: self.reports.put(json.loads(m.payload))
        acked = threading.Event()
        self.client.on_subscribe = lambda *_a: acked.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{PREFIX}/config/reported", qos=1)
        assert acked.wait(5)
        self.agent.start()
        self.agent.started()
        assert self.next()["state"] == "running"

    def want(self, bundle: DesiredBundle | bytes) -> None:
        """The release command's job: a retained …/config/desired."""
        payload = bundle if isinstance(bundle, bytes) else bundle.model_dump_json().encode()
        self.client.publish(f"{PREFIX}/config/desired", payload, qos=1, retain=True).wait_for_publish(5)

    def next(self, timeout_s: float = 60) -> dict[str, Any]:
        return self.reports.get(timeout=timeout_s)

    def close(self) -> None:
        self.agent.stop()
        self.publisher.close()
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def station(
    tmp_path: Path, mosquitto: Mosquitto, objects: ObjectStore, bucket: dict[str, tuple[str, str]]
) -> Iterator[tuple[Path, Agent]]:
    data_dir = tmp_path / "data"
    station_on_first_bundle(data_dir, bucket, objects)
    agent = Agent(mosquitto.port, objects, data_dir)
    yield data_dir, agent
    agent.close()


def test_good_bundle_is_verified_gated_swapped_and_reported(
    station: tuple[Path, Agent], bucket: dict[str, tuple[str, str]]
) -> None:
    data_dir, agent = station
    agent.want(desired("ast-2026-12", bucket))
    report = agent.next()
    assert (report["bundle"], report["state"], report["running"]) == ("ast-2026-12", "installed", "ast-2026-12")
    current = current_bundle(data_dir)
    assert current is not None and current.name == "ast-2026-12" and [p.resolve() for p in agent.installed] == [current]
    assert sorted(p.name for p in current.iterdir()) == ["golden.npz", "model.onnx", "roi.yaml", "scoring.yaml"]
    assert (data_dir / "bundles" / "previous").resolve().name == "first"
    assert roll_back_current(data_dir) == (data_dir / "bundles" / "first").resolve()  # what a failed start does
    assert current_bundle(data_dir) == (data_dir / "bundles" / "first").resolve()


def test_wrong_hash_is_refused_and_the_station_keeps_its_model(
    station: tuple[Path, Agent], bucket: dict[str, tuple[str, str]]
) -> None:
    data_dir, agent = station
    agent.want(desired("ast-2026-12", bucket, scoring="0" * 64))
    report = agent.next()
    assert report["state"] == "refused" and "sha256" in report["error"] and report["running"] == "first"
    assert current_bundle(data_dir) == (data_dir / "bundles" / "first").resolve() and agent.installed == []
    assert sorted(p.name for p in (data_dir / "bundles").iterdir()) == ["current", "first"]  # nothing staged left
    agent.want(b'{"bundle": "x"}')
    assert agent.next()["state"] == "refused"


def test_parity_failure_rolls_back(
    tmp_path: Path, mosquitto: Mosquitto, objects: ObjectStore, bucket: dict[str, tuple[str, str]]
) -> None:
    data_dir = tmp_path / "data"
    station_on_first_bundle(data_dir, bucket, objects)
    agent = Agent(mosquitto.port, objects, data_dir, make_stage=lambda p: ModelStage(p, runner=DriftingRunner(p)))
    try:
        agent.want(desired("ast-2026-12", bucket))
        report = agent.next()
        assert report["state"] == "rolled_back" and "parity gate failed" in report["error"], report
        assert report["running"] == "first" and current_bundle(data_dir) == (data_dir / "bundles" / "first").resolve()
        assert not (data_dir / "bundles" / "ast-2026-12").exists() and agent.installed == []
    finally:
        agent.close()


def test_bundle_without_golden_uses_the_stations_stored_golden_crops(
    tmp_path: Path, objects: ObjectStore, bucket: dict[str, tuple[str, str]], daemon_assets: DaemonAssets
) -> None:
    data_dir = tmp_path / "data"
    files = {k: v for k, v in bucket.items() if k != "golden"}
    with pytest.raises(Exception, match="no golden crops"):
        install_bundle(desired("no-golden", files), objects, data_dir, RUNTIME, ModelStage)
    assert current_bundle(data_dir) is None
    stored = tmp_path / "golden.npz"
    shutil.copyfile(daemon_assets.onnx.with_name(GOLDEN_NAME), stored)
    folder = install_bundle(desired("no-golden", files), objects, data_dir, RUNTIME, ModelStage,
                            golden=stored)  # fmt: skip
    assert current_bundle(data_dir) == folder.resolve() and (folder / GOLDEN_NAME).read_bytes() == stored.read_bytes()
    swap_current(data_dir, folder)  # swapping to the running bundle again changes nothing
    assert current_bundle(data_dir) == folder.resolve()
