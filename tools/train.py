"""``edge-train``: train a model family on an MVTec folder or a labelled recording, export ONNX, fit scoring.yaml.

Outputs under ``--out``: ``model.safetensors`` (weights + card + training info), ``model.onnx`` (+ ``.json``
sidecar), ``scoring.yaml`` (normalisation and threshold fitted on validation/good) and ``state/`` (resumable
training state: after Ctrl-C or a crash, rerun the same command with ``--resume``). ``--device auto`` trains on a
CUDA GPU when torch sees one; export, parity and the scoring fit always run on the CPU (ONNX Runtime). Exit codes:
0 done, 2 a problem the user can fix (one line on stderr), 3 paused by ``--stop-after`` (resume later), 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from calibration.roi import load_roi
from edge.core.errors import EdgeError
from edge.core.scoring import ModelIdentity, Scorer, ScoringFile, fit_scoring, save_scoring
from edge.inspect import GOLDEN_NAME, ModelStage, mask_iou
from engines._registry import get_family
from engines.checkpoint import TrainInfo, load_state, save_checkpoint, save_state, utc_now
from engines.contract import FitSettings, FitsValidation, ModelCard, ModelFamily
from engines.datasets import Batches, Dataset, Sample, open_dataset
from engines.export import check_onnx, onnx_from_model
from engines.runtime.select import RunnerPlan, RuntimeConfig
from tools.entry import one_line_errors

PROG = "edge-train"
STATE_FILE = "state.safetensors"
_STDERR = Console(stderr=True)
GOLDEN_GOOD, GOLDEN_DEFECTS = 8, 4  # crops kept for the GPU parity gate (golden.npz)


class TrainError(EdgeError):
    """The training run cannot start or continue as asked (bad option, stale state, too little data)."""


class TrainingPaused(Exception):  # noqa: N818  (a requested stop, not an error)
    """Raised after ``--stop-after`` saved epochs: the state is on disk, ``--resume`` continues."""


class CliTrainContext:
    """TrainContext of the CLI: a rich progress bar, and state in ``<out>/state/`` tied to the run's card.

    Beside the family's state it saves torch's RNG and the number of passes made over the training batches, so a
    resumed run draws the same random numbers and shuffle orders as an uninterrupted one.
    """

    def __init__(
        self,
        state_dir: Path,
        card: ModelCard,
        progress: Progress,
        batches: Batches,
        *,
        resume: bool,
        stop_after: int | None,
    ) -> None:
        self.path = state_dir / STATE_FILE
        self.card, self.bar, self.batches, self.resume = card, progress, batches, resume
        self.stop_after, self.saved = stop_after, 0
        self._tasks: dict[str, TaskID] = {}

    def progress(self, phase: str, done: int, total: int, **metrics: float) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if phase not in self._tasks:
            self._tasks[phase] = self.bar.add_task(phase, total=total, metrics=text)
        self.bar.update(self._tasks[phase], completed=done, total=total, metrics=text)

    def save_state(self, phase: str, epoch: int, state: Mapping[str, Any]) -> None:
        import torch  # noqa: PLC0415  (training-only dependency)

        wrapped = {"family": state, "torch_rng": torch.get_rng_state()}
        save_state(self.path, phase, epoch, wrapped, {"card": self.card.to_dict(), "passes": self.batches.passes})
        self.saved += 1
        if self.stop_after is not None and self.saved >= self.stop_after:
            raise TrainingPaused(f"paused after {phase} epoch {epoch}")

    def resume_state(self) -> tuple[str, int, dict[str, Any]] | None:
        if not self.resume:
            return None
        import torch  # noqa: PLC0415  (training-only dependency)

        phase, epoch, state, extra = load_state(self.path)
        if extra.get("card") != self.card.to_dict():
            raise TrainError(
                f"the state in {self.path} belongs to another run (card {extra.get('card')})",
                "resume with the same --model/--preset/--crop/--option/--roi/--data, or start without --resume",
            )
        torch.set_rng_state(state["torch_rng"])
        self.batches.passes = int(extra["passes"])
        return phase, epoch, state["family"]


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value) if value else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model family (e.g. ast)")
    p.add_argument("--preset", default="edge", help="preset of the family (default edge)")
    p.add_argument(
        "--data", type=Path, required=True, help="MVTec 3D-AD/AD folder (our export or a public one) or a .db3/.bag"
    )
    p.add_argument("--labels", type=Path, help="labels sidecar of a recording (default <recording>.labels)")
    p.add_argument(
        "--roi",
        type=Path,
        help="roi.yaml of the camera the data was recorded with (required, except for a folder without dataset.json: "
        "public data is cropped whole, or with its background plane removed in --crop foreground)",
    )
    p.add_argument(
        "--crop",
        choices=["foreground", "full", "image"],
        default="foreground",
        help="crop mode (default foreground; image: the whole camera image, for BAAD, whose mask the ROI supervises)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--device",
        default="auto",
        help="torch device of the training loop: auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N",
    )
    p.add_argument("--resume", action="store_true", help="continue the run saved in <out>/state/")
    p.add_argument("--stop-after", type=int, metavar="N", help="pause after N saved epochs (exit 3; --resume later)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="family option")
    p.add_argument("--false-alarm-rate", type=float, default=0.01, help="target for the threshold (default 0.01)")
    p.add_argument("--allow-mismatch", action="store_true", help="use an ROI calibrated on another camera")
    return p


def card_from_args(family: ModelFamily, args: argparse.Namespace) -> ModelCard:
    """The card an edge-train command line resolves to (the family's preset defaults filled in)."""
    if args.preset not in family.presets:
        raise TrainError(
            f"model {family.name!r} has no preset {args.preset!r}", f"choose one of: {', '.join(family.presets)}"
        )
    return family.card(args.preset, args.crop, **dict(args.option))


def _seed(seed: int, threads: int) -> None:
    import torch  # noqa: PLC0415  (training-only dependency, imported once the arguments are valid)

    random.seed(seed)
    np.random.seed(seed)  # families may use the legacy global generator
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def resolve_device(name: str) -> str:
    """The torch device to train on; refuses a GPU that torch cannot use, naming why, before any work starts."""
    import torch  # noqa: PLC0415  (training-only dependency)

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TrainError(f"--device {name!r} is not a torch device ({err})", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise TrainError(f"--device {name!r}: only cpu and cuda are supported", "use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise TrainError(
            f"--device {name}, but torch {torch.__version__} ({build}) sees no CUDA GPU",
            "train with --device cpu, or on a machine with an NVIDIA GPU and a CUDA build of torch",
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainError(
            f"--device {name}, but torch sees {torch.cuda.device_count()} GPU(s)", "pick an index below that count"
        )
    return str(device)


def cpu_stage(onnx_path: Path) -> ModelStage:
    """The exported model in ONNX Runtime on the CPU, through the product's one inference path: scores fitted
    here are what the edge runtime sees, not PyTorch's numbers."""
    return ModelStage(onnx_path, RunnerPlan(RuntimeConfig(backend="onnxruntime", device="cpu", threads=0)))


def _write_golden(path: Path, samples: Sequence[Sample], card: ModelCard) -> None:
    """Real crops (validation goods, then test defects) beside the ONNX: the parity gate a GPU engine must pass
    before it goes live (``edge.inspect.parity_gate``)."""
    if len(samples) == 0:
        return
    arrays = {k: np.stack([np.asarray(s[k], np.float32) for s in samples]) for k in card.inputs}
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def evaluate_test(onnx_path: Path, data: Dataset, card: ModelCard, scoring: ScoringFile) -> dict[str, float]:
    """Test-split metrics with the fitted scoring: image AUROC (both classes needed) and verdict counts; for a model
    with a foreground output trained with an ROI (BAAD) also its mask IoU against the ROI mask on test/good."""
    test = data.split("test")
    if len(test) == 0:
        return {}
    stage = cpu_stage(onnx_path)
    ious: list[float] = []
    try:
        raw = stage.raw_scores(test[i] for i in range(len(test)))
        if "foreground" in card.outputs and card.roi_version:
            for i in data.good("test"):
                sample = test[i]
                stage.run({k: sample[k][None] for k in card.inputs})
                ious.append(mask_iou(stage.outputs["foreground"][0, 0], sample["mask"][0] > 0.5))
    finally:
        stage.close()
    labels = np.ones(len(test), dtype=np.int64)
    labels[data.good("test")] = 0
    scorer = Scorer(scoring)
    ng = np.array([scorer.score(r)[1] == "NG" for r in raw])
    metrics = {
        "test_good": float((labels == 0).sum()),
        "test_defect": float((labels == 1).sum()),
        "false_alarms": float((ng & (labels == 0)).sum()),
        "misses": float((~ng & (labels == 1)).sum()),
    }
    if ious:
        metrics |= {"mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious))}
    if 0 < labels.sum() < labels.size:
        try:
            from sklearn.metrics import roc_auc_score  # noqa: PLC0415  (evaluation-only dependency)
        except ImportError:
            _STDERR.print(f"{PROG}: scikit-learn is not installed: no AUROC (pip install scikit-learn)")
            return metrics
        metrics["image_auroc"] = float(roc_auc_score(labels, raw))
    return metrics


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        console=_STDERR,
    )


def _prepare(args: argparse.Namespace) -> tuple[ModelFamily, ModelCard, Dataset]:
    """Family, card (with ROI version and data hash) and data; refuses what cannot be trained before training."""
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.threads < 1:
        raise TrainError("--epochs, --batch-size and --threads must be ≥ 1 and --lr > 0", "fix the argument")
    if args.stop_after is not None and args.stop_after < 1:
        raise TrainError(f"--stop-after {args.stop_after} is not positive", "pass N ≥ 1 (or leave it out)")
    state = args.out / "state" / STATE_FILE
    if state.exists() and not args.resume:
        raise TrainError(
            f"{state.parent} holds the state of an earlier run",
            "pass --resume to continue it, or choose another --out (or delete the state folder)",
        )
    if args.resume and not state.exists():
        raise TrainError(f"--resume, but {state} does not exist", "run without --resume to start afresh")
    args.device = resolve_device(args.device)
    family = get_family(args.model)
    card = card_from_args(family, args)
    roi = load_roi(args.roi) if args.roi is not None else None
    crop = card.crop_spec()
    data = open_dataset(args.data, roi, crop, labels_dir=args.labels, allow_mismatch=args.allow_mismatch)
    n_val = len(data.good("validation"))
    if len(data.split("train")) == 0 or n_val < 2:
        raise TrainError(
            f"{args.data} has {len(data.split('train'))} training and {n_val} normal validation samples",
            "export more good parts: training needs ≥ 1 and the threshold fit ≥ 2 validation/good samples",
        )
    roi_version = roi.version if roi is not None else ""  # "": cropped without an ROI (data from outside)
    return family, dataclasses.replace(card, roi_version=roi_version, data_hash=data.data_hash), data


def _fit(family: ModelFamily, card: ModelCard, data: Dataset, args: argparse.Namespace) -> tuple[Any, dict[str, float]]:
    """Seeded training with progress bar and resumable state, then the family's validation fit when it has one
    (``engines.contract.FitsValidation``, on the validation/good samples); returns the trained model (eval mode)
    and the numbers the validation fit reported (prefixed ``validation_fit_``)."""
    _seed(args.seed, args.threads)
    model = family.build(card)
    settings = FitSettings(args.epochs, args.batch_size, args.lr, args.seed, args.threads, args.device)
    train = Batches(data.split("train"), args.batch_size, shuffle=True, seed=args.seed)
    fitted: dict[str, float] = {}
    with _progress() as bar:
        ctx = CliTrainContext(args.out / "state", card, bar, train, resume=args.resume, stop_after=args.stop_after)
        family.fit(model, train, settings, ctx)
        if isinstance(family, FitsValidation):
            val = data.split("validation")
            normal = Batches([val[i] for i in data.good("validation")], args.batch_size)
            reported = family.fit_validation(model, normal, settings, ctx)
            fitted = {f"validation_fit_{k}": float(v) for k, v in reported.items()}
    model.eval()
    return model, fitted


def run(args: argparse.Namespace) -> dict[str, float]:
    """The whole run; returns the metrics it printed."""
    started = utc_now()
    family, card, data = _prepare(args)
    out: Path = args.out
    counts = ", ".join(
        f"{s} {sum(k.values())} ({', '.join(f'{n} {c}' for n, c in k.items())})" for s, k in data.kinds.items()
    )
    head = f"{PROG}: {card.family}/{card.preset} {card.input_size}px {card.crop_mode} on {args.device}; data {counts}"
    _STDERR.print(head, soft_wrap=True)
    model, fitted = _fit(family, card, data, args)
    onnx_path = onnx_from_model(model, card, out / "model.onnx")
    val, good_val = data.split("validation"), data.good("validation")
    first = val[good_val[0]]
    parity = check_onnx(model, onnx_path, {k: first[k][None] for k in card.inputs}, map_tolerance=card.map_tolerance)
    _STDERR.print(f"{PROG}: {onnx_path.name}: {parity.summary()}", soft_wrap=True)
    if not parity.ok:
        raise TrainError(f"{onnx_path} does not reproduce the PyTorch model: {parity.summary()}", "report this bug")
    identity = ModelIdentity.of(card, onnx_path)
    stage = cpu_stage(onnx_path)
    try:
        raw_val = stage.raw_scores(val[i] for i in good_val)
    finally:
        stage.close()
    test = data.split("test")
    good_test = set(data.good("test"))
    defects = [i for i in range(len(test)) if i not in good_test][:GOLDEN_DEFECTS]
    _write_golden(out / GOLDEN_NAME, [val[i] for i in good_val[:GOLDEN_GOOD]] + [test[i] for i in defects], card)
    scoring = fit_scoring(raw_val, identity, data_hash=data.data_hash, false_alarm_rate=args.false_alarm_rate)
    save_scoring(scoring, out / "scoring.yaml")
    metrics = {
        "threshold": scoring.threshold.value,
        "validation_good": float(len(good_val)),
        **fitted,
        **evaluate_test(onnx_path, data, card, scoring),
    }
    metrics |= {f"parity_max_abs_{k}": v.max_abs for k, v in parity.outputs.items()}
    settings = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "data": str(args.data),
        "crop": args.crop,
        "device": args.device,
    }
    info = TrainInfo(args.epochs, args.seed, data.data_hash, started, utc_now(), metrics=metrics, settings=settings)
    save_checkpoint(out / "model.safetensors", model, card, info)
    _print_summary(out, metrics)
    return metrics


def verdict_counts(metrics: Mapping[str, float], label: str, prefix: str = "") -> str:
    """``label: F/G good flagged NG, M/D defects passed OK`` from evaluate_test's counts (keys under ``prefix``)."""
    m = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    return (
        f"{label}: {int(m['false_alarms'])}/{int(m['test_good'])} good flagged NG, "
        f"{int(m['misses'])}/{int(m['test_defect'])} defects passed OK"
    )


def _print_summary(out: Path, metrics: Mapping[str, float]) -> None:
    auroc = f"{metrics['image_auroc']:.3f}" if "image_auroc" in metrics else "n/a (test split lacks a class)"
    lines = [
        f"threshold (z) {metrics['threshold']:.3f} from {int(metrics['validation_good'])} validation/good samples",
        f"test image AUROC {auroc}",
    ]
    if "test_good" in metrics:
        lines.append(verdict_counts(metrics, "test"))
    if "mask_iou_mean" in metrics:
        lines.append(
            f"predicted foreground vs ROI mask on test/good: IoU mean {metrics['mask_iou_mean']:.3f}, "
            f"min {metrics['mask_iou_min']:.3f}"
        )
    lines.append(f"wrote {out / 'model.safetensors'}, {out / 'model.onnx'}, {out / 'scoring.yaml'}")
    for line in lines:
        print(f"{PROG}: {line}")


@one_line_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 done, 2 a fixable problem (one line), 3 paused by --stop-after, 130 Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except TrainingPaused as e:
        print(f"{PROG}: {e}; state in {args.out / 'state'} — rerun with --resume to continue", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
