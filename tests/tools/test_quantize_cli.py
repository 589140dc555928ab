"""``edge-quantize`` on the toy family: reproducible Q/DQ ONNX, its card, scoring binding, refusals, parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.core.scoring import ScoringError, file_sha256, load_scoring
from edge.inspect import ModelStage, golden_feeds
from engines._registry import register_family
from engines._trt_compat import build_mode, onnx_precision, qdq_uint8
from engines.build import BuildSettings, build_engine, engine_filename
from engines.build import card_from_onnx as card_from_onnx_proto
from engines.export import card_from_onnx
from engines.manifest import BuildEnvironment, EngineManifest, check_engine, sha256_file, write_manifest
from engines.quantize import QUANT_KEY, calibration_indices, quantization_record
from engines.runtime.base import EngineError
from engines.runtime.select import RunnerPlan, RuntimeConfig, engine_precision
from tests.engines._toy import TOY_FAMILY, make_mvtec
from tools import parity, quantize, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, roi, edge-train folder) of a toy model trained for 2 epochs."""
    register_family(TOY_FAMILY, replace=True)
    tmp = tmp_path_factory.mktemp("quantize")
    root, roi, _ = make_mvtec(tmp)
    out = tmp / "fp32"
    args = ["--model", "toy", "--preset", "tiny", "--data", str(root), "--roi", str(roi), "--out", str(out)]
    assert train.main([*args, "--epochs", "2", "--batch-size", "4", "--seed", "0"]) == 0
    return root, roi, out


def _quantize(trained: tuple[Path, Path, Path], out: Path, *extra: str) -> int:
    root, roi, model_dir = trained
    argv = ["--model-dir", str(model_dir), "--data", str(root), "--roi", str(roi), "--out", str(out)]
    return quantize.main([*argv, "--frames", "4", *extra])


@pytest.fixture(scope="module")
def int8_dir(trained: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model-int8"
    assert _quantize(trained, out) == 0
    return out


def test_same_calibration_frames_give_the_same_onnx_bytes(
    trained: tuple[Path, Path, Path], int8_dir: Path, tmp_path: Path
) -> None:
    assert _quantize(trained, tmp_path / "again") == 0
    assert file_sha256(tmp_path / "again" / "model.onnx") == file_sha256(int8_dir / "model.onnx")
    assert _quantize(trained, tmp_path / "other", "--seed", "5") == 0  # another draw of crops: other ranges
    first = quantization_record(int8_dir / "model.onnx")
    other = quantization_record(tmp_path / "other" / "model.onnx")
    assert first is not None and other is not None
    assert first["calibration"]["samples"] != other["calibration"]["samples"]
    assert file_sha256(tmp_path / "other" / "model.onnx") != file_sha256(int8_dir / "model.onnx")


def test_calibration_draw_is_seeded_sorted_and_bounded() -> None:
    assert calibration_indices(10, 4, 0) == calibration_indices(10, 4, 0)
    assert calibration_indices(10, 4, 0) == sorted(calibration_indices(10, 4, 0))
    assert calibration_indices(3, 32, 0) == [0, 1, 2]


def test_int8_onnx_is_qdq_with_its_card_and_record(trained: tuple[Path, Path, Path], int8_dir: Path) -> None:
    _, _, model_dir = trained
    fp32_card, card = card_from_onnx(model_dir / "model.onnx"), card_from_onnx(int8_dir / "model.onnx")
    assert fp32_card.precision == "fp32" and card.precision == "int8"
    assert {**card.to_dict(), "precision": "fp32"} == fp32_card.to_dict(), "only the precision differs"
    proto = onnx.load(str(int8_dir / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights_q = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert any(a.name == "axis" for n in weights_q for a in n.attribute), "per-channel weight scales carry an axis"
    zero_points = [i for i in proto.graph.initializer if i.name.endswith("_zero_point") and "bias" not in i.name]
    assert zero_points and all(onnx.numpy_helper.to_array(z).dtype.name == "int8" for z in zero_points)
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points), "symmetric: TensorRT needs zero point 0"
    meta = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(meta[QUANT_KEY])
    assert record["source_sha256"] == file_sha256(model_dir / "model.onnx")
    assert record["format"] == "QDQ" and len(record["calibration"]["samples"]) == 4
    sidecar = json.loads((int8_dir / "model.onnx.json").read_text())
    assert sidecar["card"]["precision"] == "int8" and sidecar["sha256"] == file_sha256(int8_dir / "model.onnx")
    assert (int8_dir / "golden.npz").read_bytes() == (model_dir / "golden.npz").read_bytes()


def test_scoring_is_refit_and_bound_to_the_int8_onnx(trained: tuple[Path, Path, Path], int8_dir: Path) -> None:
    _, _, model_dir = trained
    scoring = load_scoring(int8_dir / "scoring.yaml")
    assert scoring.model.artefact_sha256 == file_sha256(int8_dir / "model.onnx")
    scoring.check_artefact(int8_dir / "model.onnx")
    fp32_scoring = load_scoring(model_dir / "scoring.yaml")
    assert scoring.normalisation != fp32_scoring.normalisation, "fitted on the INT8 model's own scores"
    with pytest.raises(ScoringError, match="fitted for"):
        fp32_scoring.check_artefact(int8_dir / "model.onnx")


def _cpu() -> RunnerPlan:
    return RunnerPlan(RuntimeConfig(backend="onnxruntime", device="cpu"))


def test_refusals_name_the_problem(
    trained: tuple[Path, Path, Path], int8_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, roi, model_dir = trained
    assert quantize.main(["--model-dir", str(int8_dir), "--data", str(root), "--roi", str(roi),
                          "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "already a int8 model" in capsys.readouterr().err
    other_root, _, _ = make_mvtec(tmp_path / "other-data", n=12)
    assert _quantize((other_root, roi, model_dir), tmp_path / "y") == 2
    assert "is not the data" in capsys.readouterr().err
    assert _quantize((root, roi, model_dir), model_dir) == 2
    assert "folder of its own" in capsys.readouterr().err
    assert not (tmp_path / "y" / "model.onnx").exists()


def test_int8_runs_through_the_one_inference_path(int8_dir: Path, trained: tuple[Path, Path, Path]) -> None:
    _, _, model_dir = trained
    feeds = golden_feeds(int8_dir / "model.onnx", card_from_onnx(int8_dir / "model.onnx"))[0]
    int8, fp32 = ModelStage(int8_dir / "model.onnx", _cpu()), ModelStage(model_dir / "model.onnx", _cpu())
    try:
        assert int8.card.precision == "int8" and int8.choice.backend == "onnxruntime"
        a = np.array([int8.run(f)[0] for f in feeds])
        b = np.array([fp32.run(f)[0] for f in feeds])
    finally:
        int8.close()
        fp32.close()
    assert not np.array_equal(a, b), "the INT8 graph computes in integers, not fp32"
    assert np.corrcoef(a, b)[0, 1] > 0.9, "yet ranks the golden crops like fp32"


def test_tensorrt_builds_the_qdq_onnx_as_explicit_int8(int8_dir: Path, trained: tuple[Path, Path, Path]) -> None:
    """Whatever precision the runtime asks for, an INT8 ONNX is built as INT8 from its own Q/DQ scales."""
    _, _, model_dir = trained
    card = card_from_onnx(int8_dir / "model.onnx")
    for asked in ("fp16", "fp32", "int8"):
        assert engine_precision(card, RuntimeConfig(precision=asked)) == "int8"
    assert engine_precision(card_from_onnx(model_dir / "model.onnx"), RuntimeConfig(precision="fp16")) == "fp16"
    floats, has_qdq = onnx_precision(onnx.load(str(int8_dir / "model.onnx")))
    assert has_qdq
    for trt in ("10.3.0", "11.0.0"):
        mode = build_mode(trt, "int8", floats, has_qdq)
        assert mode.strongly_typed and not mode.calibrate, "explicit quantization: no TensorRT calibrator"
        with pytest.raises(EngineError, match="Q/DQ nodes"):
            build_mode(trt, "fp16", floats, has_qdq)


def test_parity_reports_int8_deviation_from_fp32(
    int8_dir: Path, trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, model_dir = trained
    report = tmp_path / "parity.json"
    argv = ["--onnx", str(int8_dir / "model.onnx"), "--reference-onnx", str(model_dir / "model.onnx")]
    code = parity.main([*argv, "--report", str(report)])
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    with np.load(int8_dir / "golden.npz") as z:
        n = len(z["rgb"])
    assert data["samples"] == n and data["feeds"].startswith(f"{n} golden crops"), "golden.npz beside the ONNX"
    assert data["precision"] == {"reference": "fp32", "candidate": "int8"}
    pair = data["pairs"][0]
    score = next(o for o in pair["outputs"] if o["name"] == "image_score")
    assert 0 < score["max_rel"] < 0.5, "quantised, so not bit-equal, yet close to fp32"
    assert "int8" in out and code == (0 if pair["passed"] else 1)


def test_uint8_activations_for_the_cpu_are_refused_by_the_tensorrt_build(
    trained: tuple[Path, Path, Path], int8_dir: Path, tmp_path: Path
) -> None:
    assert _quantize(trained, tmp_path / "u8", "--activations", "uint8") == 0
    u8 = tmp_path / "u8" / "model.onnx"
    record = quantization_record(u8)
    assert record is not None and record["activations"] == "uint8 asymmetric"
    assert qdq_uint8(onnx.load(str(u8))) and not qdq_uint8(onnx.load(str(int8_dir / "model.onnx")))
    settings = BuildSettings(precision="int8")
    with pytest.raises(EngineError, match="uint8") as err:
        build_engine(u8, tmp_path / "engines", model="toy", tag="t", settings=settings)
    assert "--activations int8" in err.value.remedy


def test_an_int8_engine_manifest_is_checked_like_an_fp32_one(
    trained: tuple[Path, Path, Path], int8_dir: Path, tmp_path: Path
) -> None:
    """The manifest of an engine built from the Q/DQ ONNX carries its int8 card; the fp32 ONNX in its place or
    another precision asked for is stale (rebuild, or refuse when rebuilding is not allowed)."""
    _, _, model_dir = trained
    int8_onnx = int8_dir / "model.onnx"
    env = BuildEnvironment(tensorrt_version="10.3.0", cuda_version="12.6", driver_version="12.6", gpu_name="Orin",
                           compute_capability="8.7", platform="")  # fmt: skip
    engine = tmp_path / engine_filename("toy", "tiny-foreground", "int8", "8.7", "10.3.0")
    engine.write_bytes(b"\x00plan" * 100)
    card = card_from_onnx_proto(onnx.load(str(int8_onnx)))
    assert card is not None and card["precision"] == "int8"
    write_manifest(engine, EngineManifest(
        model="toy", tag="tiny-foreground", precision="int8", environment=env, onnx_file=int8_onnx.name,
        onnx_sha256=sha256_file(int8_onnx), engine_file=engine.name, engine_sha256=sha256_file(engine),
        strongly_typed=True, flags=[], card=card,
    ))  # fmt: skip
    assert check_engine(engine, int8_onnx, env, allow_rebuild=False, precision="int8").action == "use"
    fp32 = check_engine(engine, model_dir / "model.onnx", env, allow_rebuild=False, precision="int8")
    assert fp32.action == "refuse" and any("ONNX" in r for r in fp32.reasons)
    fp16 = check_engine(engine, int8_onnx, env, allow_rebuild=True, precision="fp16")
    assert fp16.action == "rebuild" and any("precision" in r for r in fp16.reasons)


def test_keep_first_leaves_the_input_layers_in_fp32(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    assert _quantize(trained, tmp_path / "k1", "--keep-first", "1") == 0
    record = quantization_record(tmp_path / "k1" / "model.onnx")
    proto = onnx.load(str(tmp_path / "k1" / "model.onnx"))
    assert record is not None and len(record["kept_fp32"]) == 1 and record["settings"]["keep_first"] == 1
    (kept,) = [n for n in proto.graph.node if n.name == record["kept_fp32"][0]]
    weights = {i.name for i in proto.graph.initializer}
    assert kept.op_type == "Conv" and kept.input[1] in weights, "its weight is the fp32 initializer, not a DQ output"


def test_keep_node_leaves_the_named_layers_in_fp32(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``--keep-node REGEX`` keeps the quantisable nodes whose name matches it in fp32 (here the output conv)."""
    assert _quantize(trained, tmp_path / "kd", "--keep-first", "0", "--keep-node", r"dec") == 0
    record = quantization_record(tmp_path / "kd" / "model.onnx")
    assert record is not None and record["settings"]["keep_nodes"] == ["dec"]
    assert len(record["kept_fp32"]) == 1 and "dec" in record["kept_fp32"][0]
    proto = onnx.load(str(tmp_path / "kd" / "model.onnx"))
    weights = {i.name for i in proto.graph.initializer}
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    assert convs[record["kept_fp32"][0]].input[1] in weights, "the kept conv reads its fp32 initializer"
    assert any(n.input[1] not in weights for name, n in convs.items() if "enc" in name), "the other conv is quantised"
