"""`edge-build` as a real subprocess where TensorRT is absent: one-line errors, exit 2, nothing written."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from _tool import run_tool
from onnx import TensorProto, helper, numpy_helper

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def edge_build(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_tool("build", *args, timeout=60)


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["rgb", "w"], ["anomaly_map"], pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 8, 8])],
        [w],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-build: error: "), run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    return lines[0]


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here, so its absence cannot be tested")
def test_refuses_without_tensorrt(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "engines"
    line = one_line_error(edge_build("--onnx", tiny_onnx, "--out-dir", out, "--model", "tiny", "--tag", "t"))
    assert "TensorRT is not installed" in line and "pip install 'drumsight-edge[gpu]'" in line
    assert not out.exists()
    line = one_line_error(edge_build("--onnx", tiny_onnx, "--out-dir", out, "--model", "tiny", "--tag", "t", "--force"))
    assert "TensorRT is not installed" in line


def test_missing_onnx_and_bad_card(tiny_onnx: Path, tmp_path: Path) -> None:
    base = ["--out-dir", tmp_path, "--model", "tiny", "--tag", "t"]
    line = one_line_error(edge_build("--onnx", tmp_path / "none.onnx", *base))
    assert "does not exist" in line and "--onnx" in line
    card = tmp_path / "card.json"
    card.write_text("{broken")
    line = one_line_error(edge_build("--onnx", tiny_onnx, "--card", card, *base))
    assert "cannot read the model card" in line


def test_bad_precision_is_an_argparse_error(tiny_onnx: Path, tmp_path: Path) -> None:
    run = edge_build("--onnx", tiny_onnx, "--out-dir", tmp_path, "--model", "m", "--tag", "t", "--precision", "fp8")
    assert run.returncode == 2 and "invalid choice: 'fp8'" in run.stderr
