"""`edge-rollout`: publish a model bundle to stations — upload it to S3, write their retained ``…/config/desired``.

```
edge-rollout --bundle ast-edge-2026-12 --model-dir out/ast-edge --roi roi.yaml \\
    --s3-endpoint http://s3.plant:8333 --bucket drumsight-models --host broker.plant \\
    --station wuxi/assembly/L3/drum-07 --wait 900
```

Checks the files fit together first (the station's own checks: the scoring file belongs to the ONNX, the ROI is
the one the model was trained with), uploads ``model.onnx``, ``scoring.yaml``, ``golden.npz`` (when the model folder
has it) and the ROI as ``roi.yaml`` to ``s3://<bucket>/<bundle>/``, then publishes the desired message (MQTT v5,
QoS 1, retained) to every ``--station`` (``site/area/line/station``). With ``--wait S`` it then waits up to S
seconds for each station's ``…/config/reported``: ``running`` the bundle, or ``refused`` / ``rolled_back`` with
the reason. One line per station; exit 0 when every station runs it (or without ``--wait``), 1 when one refused,
rolled back or did not answer in time, 2 for a problem found before anything was published. S3 keys: boto3's
usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``). The wave procedure: docs/plant.md.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.core.errors import EdgeError
from edge.inspect import GOLDEN_NAME
from edge.plant.rollout import BUNDLE_NAME, FILES, DesiredBundle, check_files
from edge.plant.s3 import ObjectStore, S3Config, sha256_file

PROG = "edge-rollout"
FINAL = ("running", "refused", "rolled_back")  # a station's answer to a desired bundle ("installed": restarting)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle name, unique per release ([A-Za-z0-9_.-]+)")
    p.add_argument("--model-dir", type=Path, required=True, help="edge-train/edge-quantize folder: model.onnx, "
                   "scoring.yaml and golden.npz")  # fmt: skip
    p.add_argument("--roi", type=Path, required=True, help="roi.yaml the model was trained with")
    p.add_argument("--bucket", required=True, help="S3 bucket of the bundles (it must exist)")
    p.add_argument("--s3-endpoint", help="http(s)://host:port of an S3-compatible store (default: AWS)")
    p.add_argument("--s3-region", default="us-east-1", help="S3 region name")
    p.add_argument("--host", default="localhost", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--station", action="append", required=True, metavar="SITE/AREA/LINE/STATION",
                   help="a station to roll out to (repeat for a wave)")  # fmt: skip
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for every station's "
                   "report (0: publish and exit)")  # fmt: skip
    return p


def bundle_files(model_dir: Path, roi: Path) -> dict[str, Path]:
    """Key of :data:`edge.plant.rollout.FILES` → local file; golden only when the model folder has one."""
    files = {"onnx": model_dir / FILES["onnx"], "scoring": model_dir / FILES["scoring"], "roi": roi}
    if (model_dir / GOLDEN_NAME).is_file():
        files["golden"] = model_dir / GOLDEN_NAME
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise EdgeError(f"bundle files missing: {', '.join(missing)}", "point --model-dir at an edge-train folder "
                        "and --roi at the roi.yaml the model was trained with")  # fmt: skip
    check_files(files["onnx"], files["scoring"], files["roi"])
    return files


def upload(bundle: str, files: dict[str, Path], objects: ObjectStore) -> DesiredBundle:
    """Put every file at ``<bundle>/<name>`` in the store; the desired message naming them with their sha256."""
    doc: dict[str, Any] = {"bundle": bundle}
    for key, path in files.items():
        uri = objects.put(f"{bundle}/{FILES[key]}", path.read_bytes())
        doc[key] = {"uri": uri, "sha256": sha256_file(path)}
    return DesiredBundle.model_validate(doc)


class Release:
    """One MQTT v5 connection: listens to the stations' reports, publishes their desired bundle."""

    def __init__(self, host: str, port: int, stations: list[str]) -> None:
        self.stations = stations
        self.reports: queue.Queue[tuple[str, dict[str, Any], bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        try:
            self.client.connect(host, port)
        except OSError as err:
            raise EdgeError(f"MQTT broker {host}:{port} cannot be reached: {err}", "check --host/--port") from None
        self.client.loop_start()
        self.client.subscribe([(f"{s}/config/reported", 1) for s in stations])
        if not subscribed.wait(10):
            self.close()
            raise EdgeError(f"MQTT broker {host}:{port} did not acknowledge the subscription", "check the broker")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            report = json.loads(msg.payload)
        except ValueError:
            return
        self.reports.put((msg.topic.removesuffix("/config/reported"), report, bool(msg.retain)))

    def publish(self, desired: DesiredBundle) -> None:
        payload = desired.model_dump_json(exclude_none=True)
        for s in self.stations:
            self.client.publish(f"{s}/config/desired", payload, qos=1, retain=True).wait_for_publish(10)

    def wait(self, bundle: str, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Each station's final report on ``bundle`` (running / refused / rolled_back) within ``timeout_s``."""
        out: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < len(self.stations) and (left := deadline - time.monotonic()) > 0:
            try:
                station, report, retained = self.reports.get(timeout=left)
            except queue.Empty:
                break
            if retained:  # an old report; it counts only when the station already runs this bundle
                if report.get("state") == "running" and report.get("running") == bundle:
                    out[station] = report
            elif report.get("bundle") == bundle and report.get("state") in FINAL:
                out[station] = report
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bad = [s for s in args.station if len(s.split("/")) != 4 or any(c in s for c in "#+")]
    if bad:
        print(f"{PROG}: --station must be site/area/line/station without wildcards, got {bad}", file=sys.stderr)
        return 2
    if not re.fullmatch(BUNDLE_NAME, args.bundle):
        print(f"{PROG}: --bundle {args.bundle!r} must match {BUNDLE_NAME} (it becomes a folder and S3 key)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        files = bundle_files(args.model_dir, args.roi)
        objects = ObjectStore(S3Config(endpoint_url=args.s3_endpoint, bucket=args.bucket, region=args.s3_region))
        desired = upload(args.bundle, files, objects)
        release = Release(args.host, args.port, args.station)
    except (EdgeError, ValueError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        release.publish(desired)
        print(f"{PROG}: desired {args.bundle} published to {len(args.station)} station(s)", flush=True)
        if args.wait <= 0:
            return 0
        got = release.wait(args.bundle, args.wait)
    finally:
        release.close()
    failed = 0
    for s in args.station:
        r = got.get(s)
        if r is None:
            print(f"{s}: no report on {args.bundle} within {args.wait:.0f} s")
        else:
            print(f"{s}: {r['state']} {args.bundle}" + (f": {r['error']}" if r.get("error") else ""))
        failed += r is None or r["state"] != "running"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
