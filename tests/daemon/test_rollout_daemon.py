"""Rollout through the real daemon: ``edge-daemon`` as a subprocess with ``plant.rollout`` on, real Mosquitto and
SeaweedFS S3, the desired message written by ``edge-rollout`` (the documented release command), and the test in
the role of systemd: it starts the daemon again after exit 75, as ``Restart=on-failure`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import shutil
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.daemon.config import ConfigError, load_config
from edge.daemon.main import main
from edge.daemon.store import read_summary
from edge.inspect import GOLDEN_NAME, ModelStage
from edge.plant.record import ResultRecord
from edge.plant.rollout import EXIT_ROLLOUT, ROLLED_BACK, current_bundle, install_bundle, swap_current
from edge.plant.s3 import ObjectStore, S3Config
from engines.runtime.select import RuntimeConfig
from tests.daemon.conftest import DaemonAssets
from tests.daemon.test_daemon import Daemon, daemon
from tests.plant.test_outbox import Listener
from tests.servers import Mosquitto, SeaweedS3
from tools import rollout

PREFIX = "wuxi/assembly/L3/drum-07"
BUCKET = "drumsight-models"
# An endless line paced like a camera (10 fps keeps the shared CI machine's load low); the ROI fits it (seed 0).
SOURCE = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2,
          "fps": 10, "realtime": True}  # fmt: skip


def recipe(onnx: Path) -> str:
    """The RecipeId a verdict of the configured model ``ast-tiny`` carries when ``onnx`` decides it."""
    return f"ast-tiny@{hashlib.sha256(onnx.read_bytes()).hexdigest()[:12]}"


class Plant:
    """The plant side of one station: its reports and results as they arrive over MQTT."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reports = Listener(port, f"{PREFIX}/config/reported")
        self.results = Listener(port, f"{PREFIX}/inspection/v1/result")

    def report(self, timeout_s: float = 60) -> dict[str, Any]:
        msgs = self.reports.take(1, timeout_s)
        assert msgs, f"no …/config/reported within {timeout_s} s"
        return dict(json.loads(msgs[0].payload))

    def recipes(self, n: int, timeout_s: float = 30) -> list[str]:
        """The RecipeId of the next ``n`` results (older ones already queued are taken first: drain before)."""
        got = [ResultRecord.model_validate_json(m.payload).RecipeId for m in self.results.take(n, timeout_s)]
        assert len(got) == n, f"{len(got)} of {n} results within {timeout_s} s"
        return got

    def drain(self) -> None:
        while True:
            try:
                self.results.got.get_nowait()
            except queue.Empty:
                return

    def want(self, payload: dict[str, Any]) -> None:
        """Write …/config/desired by hand (for the broken bundles edge-rollout would refuse to publish)."""
        client = Listener(self.port, f"{PREFIX}/config/none").client
        client.publish(f"{PREFIX}/config/desired", json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()

    def close(self) -> None:
        self.reports.close()
        self.results.close()


@pytest.fixture
def plant(mosquitto: Mosquitto, seaweed: SeaweedS3) -> Iterator[Plant]:
    seaweed.make_bucket(BUCKET)
    p = Plant(mosquitto.port)
    yield p
    p.close()


@pytest.fixture
def station(make_config: Callable[..., Path], mosquitto: Mosquitto, seaweed: SeaweedS3) -> Path:
    """edge.yaml of a plant station with rollout on; its configured model is the daemon assets' AST."""
    s3 = {"endpoint_url": seaweed.endpoint, "bucket": BUCKET, "access_key_id": "k", "secret_access_key": "s"}
    plant = {"enabled": True, "site": "wuxi", "area": "assembly", "line": "L3", "station": "drum-07", "s3": s3,
             "rollout": {"enabled": True}}  # fmt: skip
    return make_config(source=SOURCE, mqtt={"enabled": True, "host": "127.0.0.1", "port": mosquitto.port},
                       plant=plant)  # fmt: skip


def release(name: str, model_dir: Path, roi: Path, port: int, endpoint: str, wait_s: float = 0) -> list[str]:
    """``edge-rollout`` as the docs give it: (exit code, output lines)."""
    argv = ["--bundle", name, "--model-dir", str(model_dir), "--roi", str(roi), "--s3-endpoint", endpoint,
            "--bucket", BUCKET, "--host", "127.0.0.1", "--port", str(port), "--station", PREFIX,
            "--wait", str(wait_s)]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = rollout.main(argv)
    return [str(code), *out.getvalue().splitlines()]


def stop(d: Daemon) -> int:
    d.proc.send_signal(signal.SIGTERM)
    return d.finish()


def test_desired_bundle_restarts_the_daemon_on_it_with_no_verdict_lost(
    station: Path, plant: Plant, seaweed: SeaweedS3, daemon_assets: DaemonAssets, second_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # edge-rollout takes boto3's usual chain
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    data = station.parent / "data"
    with daemon(station) as d:
        first = plant.report()
        assert (first["state"], first["bundle"], first["running"]) == ("running", "", "")  # its configured files
        assert set(plant.recipes(2)) == {recipe(daemon_assets.onnx)}
        waited: list[list[str]] = []  # edge-rollout --wait, as a release engineer runs it, while "systemd" restarts
        waiter = threading.Thread(
            target=lambda: waited.append(
                release("ast-2026-12", second_model, daemon_assets.roi, plant.port, seaweed.endpoint, wait_s=90)
            )
        )
        waiter.start()
        assert d.finish() == EXIT_ROLLOUT, "\n".join(d.lines[-30:])
    installed = plant.report()
    assert (installed["state"], installed["running"]) == ("installed", "ast-2026-12"), installed
    d.wait_for(r"event=stop_requested reason=rollout bundle=ast-2026-12")
    # The orderly stop drained the ring and sent every verdict: nothing lost on the way to the new bundle.
    final = d.wait_for(r"event=ring_final written=(\d+) delivered=(\d+)")
    summary = read_summary(data / "results.db")
    c = summary["counters"]
    assert summary["finished_ns"] is not None and c["verdicts_lost"] == 0
    assert c["scored"] + c["gated"] + c["waiting"] == int(final.group(2)) == int(final.group(1)), (final.groups(), c)
    with sqlite3.connect(data / "results.db") as conn:
        unsent = conn.execute("SELECT COUNT(*) FROM verdicts WHERE published_at IS NULL OR published_at <= 0")
        assert unsent.fetchone()[0] == 0
    current = current_bundle(data)
    assert current is not None and current.name == "ast-2026-12"
    plant.drain()
    with daemon(station) as d:  # systemd's restart
        running = plant.report()
        assert (running["state"], running["bundle"], running["running"]) == ("running", "ast-2026-12", "ast-2026-12")
        d.wait_for(r"event=rollout_bundle bundle='ast-2026-12' model=ast-tiny")
        d.wait_for(r"event=release_start signed=no release='ast-2026-12'")
        got = plant.recipes(6)
        assert got[-1] == recipe(second_model / "model.onnx") != recipe(daemon_assets.onnx), got
        waiter.join(30)
        assert waited == [["0", "edge-rollout: desired ast-2026-12 published to 1 station(s)",
                           f"{PREFIX}: running ast-2026-12"]]  # fmt: skip
        assert stop(d) == 0, "\n".join(d.lines[-30:])
    with sqlite3.connect(data / "results.db") as conn:
        row = conn.execute("SELECT release, digests_json FROM config_changes ORDER BY id DESC LIMIT 1").fetchone()
    assert row[0] == "ast-2026-12" and json.loads(row[1])["model:ast-tiny"] == hashlib.sha256(
        (second_model / "model.onnx").read_bytes()).hexdigest()  # fmt: skip


def test_refused_and_rolled_back_bundles_leave_the_daemon_on_its_model(
    station: Path, plant: Plant, seaweed: SeaweedS3, daemon_assets: DaemonAssets, second_model: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A wrong sha256 is refused, golden crops that do not fit the ONNX fail the parity gate: both leave the daemon
    scoring with its model (same RecipeId before and after), and it never restarts."""
    objects = ObjectStore(S3Config(endpoint_url=seaweed.endpoint, bucket=BUCKET, access_key_id="k",
                                   secret_access_key="s"))  # fmt: skip
    with np.load(second_model / GOLDEN_NAME) as z:  # the right inputs at the wrong size: another model's crops
        wrong = {k: np.zeros((2, z[k].shape[1], 8, 8), np.float32) for k in z.files}
    np.savez(tmp_path / GOLDEN_NAME, **wrong)
    files = {"onnx": second_model / "model.onnx", "scoring": second_model / "scoring.yaml", "roi": daemon_assets.roi,
             "golden": tmp_path / GOLDEN_NAME}  # fmt: skip
    desired = rollout.upload("ast-bad", files, objects).model_dump(mode="json")
    mine = recipe(daemon_assets.onnx)
    with daemon(station) as d:
        assert plant.report()["state"] == "running"
        assert set(plant.recipes(2)) == {mine}
        plant.want({**desired, "bundle": "ast-wrong-hash", "scoring": {**desired["scoring"], "sha256": "0" * 64}})
        refused = plant.report()
        assert (refused["state"], refused["running"]) == ("refused", ""), refused
        assert "sha256" in refused["error"]
        plant.want(desired)
        rolled = plant.report()
        assert (rolled["state"], rolled["bundle"], rolled["running"]) == ("rolled_back", "ast-bad", ""), rolled
        assert "golden crops" in rolled["error"]
        plant.drain()
        assert set(plant.recipes(3)) == {mine}  # verdicts go on, from the same model
        assert d.proc.poll() is None and current_bundle(station.parent / "data") is None
        assert stop(d) == 0, "\n".join(d.lines[-30:])


def test_a_current_bundle_that_fails_the_start_checks_is_rolled_back_to_the_previous(
    station: Path, plant: Plant, seaweed: SeaweedS3, daemon_assets: DaemonAssets, second_model: Path
) -> None:
    """Two installed bundles; the current one's scoring file then belongs to another ONNX (a bundle the station's
    start checks refuse): the daemon swaps back to the previous bundle, runs it and reports why; the desired message
    naming the failed bundle does not install it again (that would loop restarts)."""
    objects = ObjectStore(S3Config(endpoint_url=seaweed.endpoint, bucket=BUCKET, access_key_id="k",
                                   secret_access_key="s"))  # fmt: skip
    data = station.parent / "data"
    model_dir = daemon_assets.onnx.parent
    for name, folder in (("ast-old", model_dir), ("ast-new", second_model)):
        files = {"onnx": folder / "model.onnx", "scoring": folder / "scoring.yaml", "roi": daemon_assets.roi,
                 "golden": folder / GOLDEN_NAME}  # fmt: skip
        desired = rollout.upload(name, files, objects)
        install_bundle(desired, objects, data, RuntimeConfig(threads=1), ModelStage)
    (data / "bundles" / "ast-new" / "scoring.yaml").write_bytes(daemon_assets.scoring.read_bytes())
    with daemon(station) as d:
        report = plant.report()
        assert (report["state"], report["bundle"], report["running"]) == ("rolled_back", "ast-new", "ast-old"), report
        assert "failed the start checks" in report["error"] and "scoring" in report["error"]
        d.wait_for(r"event=rollout_rolled_back bundle=ast-new running='ast-old'")
        assert set(plant.recipes(2)) == {recipe(daemon_assets.onnx)}
        plant.want(desired.model_dump(mode="json", exclude_none=True))  # the retained desired of ast-new, again
        again = plant.report()
        assert (again["state"], again["bundle"], again["running"]) == ("rolled_back", "ast-new", "ast-old"), again
        assert "failed the start checks on this station before" in again["error"]
        assert d.proc.poll() is None, "no install, no restart"
        assert stop(d) == 0, "\n".join(d.lines[-30:])
    current = current_bundle(data)
    assert current is not None and current.name == "ast-old"
    assert (data / "bundles" / "ast-new" / ROLLED_BACK).is_file()  # the retained desired will not install it again


def test_rollout_config_problems_are_one_line_each_and_check_config_rolls_nothing_back(
    make_config: Callable[..., Path], daemon_assets: DaemonAssets, second_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(make_config(plant={"rollout": {"enabled": True, "model": "two words"}}))
    assert len(info.value.lines) == 1 and "plant.rollout.model" in info.value.lines[0]
    assert "'two words'" in info.value.lines[0]
    alone = make_config(plant={"rollout": {"enabled": True, "model": "other"}})
    assert main(["--config", str(alone), "--check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "plant.rollout.enabled: true needs plant.enabled: true, mqtt.enabled: true, a plant.s3 store" in err[0]
    assert "plant.rollout.model: 'other' is not a configured model (ast-tiny)" in err[1]
    s3 = {"endpoint_url": "http://127.0.0.1:9", "bucket": BUCKET}
    plant = {"enabled": True, "site": "wuxi", "area": "assembly", "line": "L3", "station": "drum-07", "s3": s3,
             "rollout": {"enabled": True}}  # fmt: skip
    config = make_config(mqtt={"enabled": True, "host": "127.0.0.1", "port": 9}, plant=plant)
    data = config.parent / "data"
    for name, folder in (("ast-old", daemon_assets.onnx.parent), ("ast-new", second_model)):
        (data / "bundles" / name).mkdir(parents=True)
        for f in ("model.onnx", "scoring.yaml", GOLDEN_NAME):
            shutil.copyfile(folder / f, data / "bundles" / name / f)
        shutil.copyfile(daemon_assets.roi, data / "bundles" / name / "roi.yaml")
        swap_current(data, data / "bundles" / name)
    assert main(["--config", str(config), "--check-config"]) == 0
    assert "rollout bundle 'ast-new'" in capsys.readouterr().out
    (data / "bundles" / "ast-new" / "roi.yaml").unlink()
    assert main(["--config", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bundle ast-new" in err[0] and "roi: file" in err[0], err
    assert current_bundle(data) == (data / "bundles" / "ast-new").resolve(), "--check-config changes nothing"


def test_edge_rollout_refuses_before_publishing_and_reports_a_silent_station(
    plant: Plant, seaweed: SeaweedS3, daemon_assets: DaemonAssets, second_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert release("two words", second_model, daemon_assets.roi, plant.port, seaweed.endpoint)[0] == "2"
    assert "--bundle 'two words' must match" in capsys.readouterr().err
    mixed = tmp_path / "mixed"  # the second model with the first model's scoring file: the station would refuse it
    mixed.mkdir()
    shutil.copyfile(second_model / "model.onnx", mixed / "model.onnx")
    shutil.copyfile(daemon_assets.scoring, mixed / "scoring.yaml")
    assert release("ast-mixed", mixed, daemon_assets.roi, plant.port, seaweed.endpoint)[0] == "2"
    assert "scoring file was fitted for" in capsys.readouterr().err
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=BUCKET, Prefix="ast-mixed/"), "nothing uploaded"
    out = release("ast-quiet", second_model, daemon_assets.roi, plant.port, seaweed.endpoint, wait_s=1)
    assert out == ["1", "edge-rollout: desired ast-quiet published to 1 station(s)",
                   f"{PREFIX}: no report on ast-quiet within 1 s"]  # fmt: skip
