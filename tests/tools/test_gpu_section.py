"""``make bench``'s GPU section on a machine without a GPU: every row says why it did not run, and no target is set."""

from __future__ import annotations

import pytest
import torch

from tools.benchmarks.gpu import cuda_unavailable, run


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here: the section measures instead")
def test_without_a_gpu_every_row_names_its_reason() -> None:
    section = run(quick=True)
    assert section.targets == {}
    assert [row[0] for row in section.rows] == ["CudaRoiCropper", "PyTorch CUDA eager"]
    crop_reason, torch_reason = (row[-1] for row in section.rows)
    assert crop_reason == f"not run: {cuda_unavailable()}"
    assert torch_reason == f"not run: torch {torch.__version__} sees no CUDA GPU"
    assert "docs/benchmarks-gpu.md" in section.to_markdown()
