"""edge-build logic that runs without a GPU: TensorRT 10/11 precision paths, ONNX precision detection, engine
names, the card carried in the ONNX metadata, and the clear refusal when TensorRT is absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines._trt_compat import BuildMode, build_mode, onnx_precision, trt_major
from engines.build import CARD_METADATA_KEY, BuildSettings, build_engine, card_from_onnx, engine_filename
from engines.contract import ModelCard
from engines.runtime.base import EngineError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def conv_onnx(weight_type: int, qdq: bool = False, card: ModelCard | None = None) -> onnx.ModelProto:
    """x (1×3×8×8) → Conv → y, weights of ``weight_type``, optionally behind a Q/DQ pair."""
    dtype = np.float16 if weight_type == TensorProto.FLOAT16 else np.float32
    w = numpy_helper.from_array(np.ones((1, 3, 3, 3), dtype), "w")
    nodes, inits, src = [], [w], "x"
    if qdq:
        scale = numpy_helper.from_array(np.array(0.1, dtype), "s")
        zero = numpy_helper.from_array(np.array(0, np.int8), "z")
        inits += [scale, zero]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
        nodes += [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        src = "dq"
    nodes.append(helper.make_node("Conv", [src, "w"], ["y"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", weight_type, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", weight_type, [1, 1, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if card is not None:
        helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card.to_dict())})
    onnx.checker.check_model(model)
    return model


def test_onnx_precision_detection() -> None:
    assert onnx_precision(conv_onnx(TensorProto.FLOAT)) == ("fp32", False)
    assert onnx_precision(conv_onnx(TensorProto.FLOAT16)) == ("fp16", False)
    assert onnx_precision(conv_onnx(TensorProto.FLOAT, qdq=True)) == ("fp32", True)


def test_tensorrt_10_uses_builder_flags() -> None:
    assert build_mode("10.3.0", "fp32", "fp32", False) == BuildMode(False, (), False)
    assert build_mode("10.3.0", "fp16", "fp32", False) == BuildMode(False, ("FP16",), False)
    assert build_mode("10.13.0.35", "int8", "fp32", False) == BuildMode(False, ("INT8", "FP16"), True)
    # a typed or quantised ONNX is honoured as typed, like TensorRT 11 would
    assert build_mode("10.3.0", "int8", "fp32", True) == BuildMode(True, (), False)
    assert build_mode("10.3.0", "fp16", "fp16", False) == BuildMode(True, (), False)


def test_tensorrt_11_is_strongly_typed_and_refuses_what_the_onnx_does_not_say() -> None:
    assert build_mode("11.4.0", "fp16", "fp16", False) == BuildMode(True, (), False)
    assert build_mode("11.4.0", "fp32", "fp32", False) == BuildMode(True, (), False)
    assert build_mode("11.4.0", "int8", "fp32", True) == BuildMode(True, (), False)
    with pytest.raises(EngineError, match="this ONNX is fp32") as err:
        build_mode("11.4.0", "fp16", "fp32", False)
    assert "convert_float_to_float16" in str(err.value)
    with pytest.raises(EngineError, match="Q/DQ") as err:
        build_mode("11.0.0", "int8", "fp32", False)
    assert "edge-quantize" in str(err.value)
    with pytest.raises(EngineError, match="cannot build it as fp32"):
        build_mode("11.4.0", "fp32", "fp16", False)


def test_old_tensorrt_is_refused() -> None:
    with pytest.raises(EngineError, match=r"TensorRT 8\.5\.2 is too old"):
        build_mode("8.5.2", "fp16", "fp32", False)


def test_engine_filename() -> None:
    assert trt_major("10.13.0.35") == 10
    assert engine_filename("ast", "edge", "fp16", "8.7", "10.3.0") == "ast.edge.fp16.sm87.trt10.engine"
    assert engine_filename("ast", "run7", "int8", "12.0", "11.4.0") == "ast.run7.int8.sm120.trt11.engine"


def test_card_travels_in_the_onnx_metadata() -> None:
    card = ModelCard("ast", "edge", 256, ("rgb", "xyz", "mask"), "foreground", (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert ModelCard.from_dict(card_from_onnx(conv_onnx(TensorProto.FLOAT, card=card)) or {}) == card
    assert card_from_onnx(conv_onnx(TensorProto.FLOAT)) is None


def test_card_key_is_the_exporters() -> None:
    from engines.export import CARD_KEY

    assert CARD_KEY == CARD_METADATA_KEY


def test_settings_are_strict() -> None:
    with pytest.raises(ValueError, match="precision"):
        BuildSettings(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workspace"):
        BuildSettings(workspace_mib=0)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here, so its absence cannot be tested")
def test_build_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_onnx(TensorProto.FLOAT), str(path))
    with pytest.raises(EngineError, match="TensorRT is not installed") as err:
        build_engine(path, tmp_path, model="tiny", tag="t", settings=BuildSettings())
    assert "drumsight-edge[gpu]" in str(err.value)
    assert not list(tmp_path.glob("*.engine"))
