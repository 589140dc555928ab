"""``edge-quantize``: an ``edge-train`` folder's fp32 ONNX → a Q/DQ INT8 ONNX with its own scoring file.

Calibrates ONNX Runtime static quantization (QDQ, int8 symmetric, per-channel weights: ``engines/quantize.py``) on a
seeded draw of good training crops of the data and ROI the model was trained on (both are checked against its
card), then refits ``scoring.yaml`` for the INT8 model on validation/good exactly as ``edge-train`` does (same
false-alarm rate and margin as the fp32 scoring file), bound to the INT8 ONNX's sha256. Writes into ``--out``:
``model.onnx`` (+ ``.json`` sidecar), ``scoring.yaml`` and ``golden.npz`` (the fp32 folder's golden crops: the
TensorRT parity gate of an INT8 engine built from this ONNX). The folder is a model folder like ``edge-train``'s:
the daemon, ``edge-bench`` and ``edge-parity`` take it as they take the fp32 one. Exit 0 done, 2 a problem the user
can fix (one line on stderr).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from calibration.roi import load_roi
from edge.core.scoring import ModelIdentity, fit_scoring, load_scoring, save_scoring
from edge.inspect import GOLDEN_NAME
from engines.datasets import open_dataset
from engines.export import card_from_onnx
from engines.quantize import QuantizeError, QuantizeSettings, calibration_feeds, quantize_onnx
from tools.entry import one_line_errors
from tools.train import cpu_stage, evaluate_test, verdict_counts

PROG = "edge-quantize"
ONNX_FILE, SCORING_FILE = "model.onnx", "scoring.yaml"


def build_parser() -> argparse.ArgumentParser:
    d = QuantizeSettings()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="edge-train output folder (model.onnx, scoring.yaml)")
    p.add_argument("--data", type=Path, required=True, help="the data the model was trained on (MVTec folder, .db3)")
    p.add_argument("--labels", type=Path, help="labels sidecar of a recording (default <recording>.labels)")
    p.add_argument("--roi", type=Path, required=True, help="the roi.yaml the model was trained with")
    p.add_argument("--out", type=Path, required=True, help="output folder of the INT8 model")
    p.add_argument("--frames", type=int, default=d.frames, help=f"calibration crops (default {d.frames})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the calibration draw (default {d.seed})")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument(
        "--op-types", default=",".join(d.op_types), help=f"operators to quantise (default {','.join(d.op_types)})"
    )
    p.add_argument(
        "--calibrate-method", choices=("minmax", "percentile", "entropy"), default=d.calibrate_method,
        help=f"activation ranges (default {d.calibrate_method})",
    )  # fmt: skip
    p.add_argument(
        "--keep-first", type=int, metavar="N",
        help="the first N quantisable nodes (the layers on the raw inputs) stay fp32 (default: the family's measured "
        "value, ast 12, else 0)",
    )  # fmt: skip
    p.add_argument(
        "--keep-node", action="append", metavar="REGEX", dest="keep_nodes",
        help="quantisable nodes whose name matches this regular expression stay fp32 (repeatable; default: the "
        "family's measured list, engines.quantize.KEEP_NODES)",
    )  # fmt: skip
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    p.add_argument(
        "--activations", choices=("int8", "uint8"), default=d.activations,
        help="int8 (default): symmetric, the Q/DQ ONNX TensorRT builds from; uint8: ONNX Runtime's fast x86 CPU path "
        "(TensorRT refuses it)",
    )  # fmt: skip
    p.add_argument("--allow-mismatch", action="store_true", help="use an ROI calibrated on another camera")
    return p


def settings_from_args(args: argparse.Namespace) -> QuantizeSettings:
    """The quantisation settings a parsed command line asks for (the family defaults not yet resolved)."""
    return QuantizeSettings(
        frames=args.frames, seed=args.seed, per_channel=not args.per_tensor, reduce_range=args.reduce_range,
        op_types=tuple(t.strip() for t in args.op_types.split(",") if t.strip()),
        calibrate_method=args.calibrate_method, activations=args.activations, keep_first=args.keep_first,
        keep_nodes=None if args.keep_nodes is None else tuple(args.keep_nodes),
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, float]:
    """The whole run; returns the metrics it printed."""
    fp32_onnx, fp32_scoring_path = args.model_dir / ONNX_FILE, args.model_dir / SCORING_FILE
    for path in (fp32_onnx, fp32_scoring_path):
        if not path.is_file():
            raise QuantizeError(f"{args.model_dir} has no {path.name}", "pass a folder written by edge-train")
    if args.out.resolve() == args.model_dir.resolve():
        raise QuantizeError("--out is the fp32 model's folder", "write the INT8 model into a folder of its own")
    fp32_scoring = load_scoring(fp32_scoring_path)
    fp32_scoring.check_artefact(fp32_onnx)
    card = card_from_onnx(fp32_onnx)
    settings = settings_from_args(args)
    roi = load_roi(args.roi)
    if card.roi_version and card.roi_version != roi.version:
        raise QuantizeError(
            f"{fp32_onnx} was trained with ROI version {card.roi_version}, {args.roi} is version {roi.version}",
            "calibrate on the ROI the model was trained with",
        )
    crop = card.crop_spec()
    data = open_dataset(args.data, roi, crop, labels_dir=args.labels, allow_mismatch=args.allow_mismatch)
    if card.data_hash and data.data_hash != card.data_hash:
        raise QuantizeError(
            f"{args.data} (data hash {data.data_hash[:12]}…) is not the data {fp32_onnx} was trained on "
            f"({card.data_hash[:12]}…)",
            "calibrate on the training data of the model (the --data given to edge-train)",
        )
    train_split = data.split("train")
    feeds, picked = calibration_feeds(train_split, data.good("train"), card, settings)
    calibration = {"data_hash": data.data_hash, "split": "train/good", "samples": picked}
    int8_onnx = quantize_onnx(fp32_onnx, args.out / ONNX_FILE, feeds, settings, calibration=calibration)
    identity = ModelIdentity.of(card, int8_onnx)
    val, good_val = data.split("validation"), data.good("validation")
    stage = cpu_stage(int8_onnx)
    try:
        raw_val = stage.raw_scores(val[i] for i in good_val)
    finally:
        stage.close()
    t = fp32_scoring.threshold
    scoring = fit_scoring(
        raw_val, identity, data_hash=data.data_hash, false_alarm_rate=t.false_alarm_rate or 0.01, margin=t.margin
    )
    save_scoring(scoring, args.out / SCORING_FILE)
    golden = args.model_dir / GOLDEN_NAME
    if golden.is_file():
        shutil.copyfile(golden, args.out / GOLDEN_NAME)
    metrics = {"calibration_frames": float(len(picked)), "threshold": scoring.threshold.value}
    metrics |= {f"int8_{k}": v for k, v in evaluate_test(int8_onnx, data, card, scoring).items()}
    metrics |= {f"fp32_{k}": v for k, v in evaluate_test(fp32_onnx, data, card, fp32_scoring).items()}
    _print_summary(args.out, metrics)
    return metrics


def _print_summary(out: Path, metrics: dict[str, float]) -> None:
    def auroc(prefix: str) -> str:
        v = metrics.get(f"{prefix}_image_auroc")
        return "n/a (test split lacks a class)" if v is None else f"{v:.4f}"

    lines = [
        f"calibrated on {int(metrics['calibration_frames'])} good training crops; threshold (z) "
        f"{metrics['threshold']:.3f}",
        f"test image AUROC int8 {auroc('int8')}, fp32 {auroc('fp32')}",
    ]
    if "int8_test_good" in metrics:
        lines.append(verdict_counts(metrics, "test int8", prefix="int8_"))
    lines.append(f"wrote {out / ONNX_FILE}, {out / SCORING_FILE}")
    for line in lines:
        print(f"{PROG}: {line}")


@one_line_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 done, 2 a fixable problem (one line on stderr)."""
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
