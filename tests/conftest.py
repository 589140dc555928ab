"""Fixtures every test folder can use: real servers on loopback (tests/servers.py), torch on one thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Mosquitto, Postgres, SeaweedS3


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto broker; the test may ``stop()`` and ``start()`` it again (same port)."""
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session (a few seconds to start); tests use their own buckets."""
    server = SeaweedS3(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session; tests create their own databases."""
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module: tiny graphs run faster on one thread than on two contended ones (2 threads
    on 2 shared cores spin, 10-20× slower when other jobs load them). Asked for with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # only the modules that ask for it pay for importing torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
