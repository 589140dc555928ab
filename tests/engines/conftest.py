"""Fixtures of the engine tests (shared helpers that are not fixtures live in ``_toy.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny graphs run faster on one thread than on two contended ones: 2 threads on 2 shared cores spin, 10-20×
    slower when other jobs load them. A module asks for it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
