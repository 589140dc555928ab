"""Parity gate: the same inputs through a reference runner and candidates; per-output errors, image-score deltas
and verdict flips at the decision threshold, against a stated budget.

Default budget (``ParityBudget``): anomaly map |Δ| ≤ 1e-3, image score relative |Δ| ≤ 1e-3, 0 verdict flips.
The verdict is "defect" when the raw image score is ≥ the raw threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from edge.core.config import EdgeModel
from engines.runtime.base import EngineError, Runner, TensorSpec

SCORE_OUTPUT = "image_score"
EPS = 1e-12


@runtime_checkable
class RawThreshold(Protocol):
    """Anything that carries the decision threshold on the raw image score (e.g. the scoring file)."""

    threshold_raw: float


Threshold = float | RawThreshold | Callable[[float], bool]


def verdict_function(threshold: Threshold) -> Callable[[float], bool]:
    """``score → is defect`` from a raw threshold, an object with ``threshold_raw``, or a callable."""
    if isinstance(threshold, int | float):
        t = float(threshold)
        return lambda s: s >= t
    if isinstance(threshold, RawThreshold):
        t = float(threshold.threshold_raw)
        return lambda s: s >= t
    if callable(threshold):
        return lambda s: bool(threshold(s))
    raise EngineError(f"cannot use a {type(threshold).__name__} as a threshold", "pass a float or a scoring file")


class ParityBudget(EdgeModel):
    """How far a candidate may drift from the reference before the gate fails."""

    type: Literal["parity-budget"] = "parity-budget"
    map_atol: float = Field(1e-3, ge=0, description="max |Δ| on every output except the image score")
    score_rtol: float = Field(1e-3, ge=0, description="max |Δ|/|reference| on the image score")
    score_atol: float = Field(1e-6, ge=0, description="floor under score_rtol for scores near zero")
    max_flips: int = Field(0, ge=0, description="verdict flips allowed at the threshold")


@dataclass
class OutputStats:
    """Error of one output over all samples."""

    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    limit: str
    within: bool


@dataclass
class PairReport:
    """One candidate against the reference."""

    reference: str
    candidate: str
    outputs: list[OutputStats]
    score_deltas: list[float]
    flips: int | None  # None: no threshold given, flips not checked
    flip_samples: list[int]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    """All pairs, the budget and the threshold they were judged by."""

    samples: int
    budget: dict[str, Any]
    threshold: float | str | None
    pairs: list[PairReport]
    feeds: str = ""  # what the inputs were (golden crops, .npz files, seeded random)
    precision: dict[str, str] = field(default_factory=dict)  # reference/candidate → fp32/int8 (from model cards)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        for p, pd in zip(self.pairs, d["pairs"], strict=True):
            pd["passed"] = p.passed
        return d

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def random_feeds(specs: Sequence[TensorSpec], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` seeded feeds: a 0/1 ``mask``, points 0.3–1.5 m for ``xyz``, standard normal for other inputs."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for s in specs:
            a: np.ndarray
            if s.name == "mask":
                a = rng.random(s.shape) < 0.7
            elif s.name == "xyz":
                a = rng.uniform(0.3, 1.5, s.shape)
            else:
                a = rng.standard_normal(s.shape)
            feed[s.name] = a.astype(s.dtype)
        feeds.append(feed)
    return feeds


def feeds_from_npz(paths: Iterable[Path], specs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Feeds from .npz files holding one array per input: one sample (the input's shape) or N stacked (N×shape)."""
    feeds: list[dict[str, np.ndarray]] = []
    for path in paths:
        try:
            with np.load(path) as z:
                missing = [s.name for s in specs if s.name not in z.files]
                arrays = {s.name: z[s.name] for s in specs if s.name in z.files}
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot read feeds from {path} ({e})", "write them with numpy.savez") from None
        if missing:
            raise EngineError(f"{path} lacks inputs {missing}", f"store arrays named {[s.name for s in specs]}")
        stacked = {s.name: arrays[s.name].shape[1:] == s.shape for s in specs}
        if all(stacked.values()) and len({len(a) for a in arrays.values()}) == 1:
            n = len(arrays[specs[0].name])
            feeds.extend({s.name: arrays[s.name][i].astype(s.dtype) for s in specs} for i in range(n))
        elif all(arrays[s.name].shape == s.shape for s in specs):
            feeds.append({s.name: arrays[s.name].astype(s.dtype) for s in specs})
        else:
            shapes = {k: a.shape for k, a in arrays.items()}
            raise EngineError(f"{path}: array shapes {shapes} do not fit the model", f"use {[s.shape for s in specs]}")
    return feeds


def _run(runner: Runner, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output stacked over the feeds (copied: runners reuse their output buffers)."""
    outs: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        for name, a in runner.infer(feed).items():
            outs.setdefault(name, []).append(np.array(a, dtype=np.float64))
    return {k: np.stack(v) for k, v in outs.items()}


def _output_stats(name: str, ref: np.ndarray, cand: np.ndarray, budget: ParityBudget) -> OutputStats:
    diff = np.abs(cand - ref)
    rel = diff / np.maximum(np.abs(ref), EPS)
    if name == SCORE_OUTPUT:
        ok = bool(np.all(diff <= np.maximum(budget.score_rtol * np.abs(ref), budget.score_atol)))
        limit = f"rel ≤ {budget.score_rtol:g}"
    else:
        ok = bool(diff.max(initial=0.0) <= budget.map_atol)
        limit = f"abs ≤ {budget.map_atol:g}"
    return OutputStats(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), float(diff.mean()), limit, ok)


def compare_pair(
    ref: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    names: tuple[str, str],
    budget: ParityBudget,
    verdict: Callable[[float], bool] | None,
) -> PairReport:
    """Judge one candidate's stacked outputs against the reference's."""
    if set(ref) != set(cand):
        raise EngineError(
            f"{names[1]} outputs {sorted(cand)} differ from {names[0]}'s {sorted(ref)}", "compare one model"
        )
    stats = [_output_stats(k, ref[k], cand[k], budget) for k in ref]
    failures = [
        f"{s.name}: max |Δ| {s.max_abs:.3g} (max rel {s.max_rel:.3g}) exceeds {s.limit}" for s in stats if not s.within
    ]
    deltas: list[float] = []
    flips, flip_samples = None, []
    if SCORE_OUTPUT in ref:
        n = len(ref[SCORE_OUTPUT])
        r, c = ref[SCORE_OUTPUT].reshape(n, -1), cand[SCORE_OUTPUT].reshape(n, -1)
        deltas = [float(x) for x in (c - r).ravel()]
        if verdict is not None:
            flip_samples = [i for i in range(n) if [verdict(x) for x in r[i]] != [verdict(x) for x in c[i]]]
            flips = len(flip_samples)
    if flips is not None and flips > budget.max_flips:
        failures.append(f"{flips} verdict flip(s) at the threshold (samples {flip_samples}), budget {budget.max_flips}")
    return PairReport(names[0], names[1], stats, deltas, flips, flip_samples, failures)


def compare_runners(
    reference: Runner,
    candidates: Sequence[Runner],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget: ParityBudget | None = None,
    threshold: Threshold | None = None,
) -> ParityReport:
    """Run ``feeds`` through active runners and judge every candidate against the reference."""
    budget = budget or ParityBudget()
    verdict = verdict_function(threshold) if threshold is not None else None
    ref = _run(reference, feeds)
    pairs = [compare_pair(ref, _run(c, feeds), (reference.name, c.name), budget, verdict) for c in candidates]
    shown: float | str | None
    if threshold is None or isinstance(threshold, int | float):
        shown = threshold
    elif isinstance(threshold, RawThreshold):
        shown = float(threshold.threshold_raw)
    else:
        shown = repr(threshold)
    return ParityReport(len(feeds), budget.model_dump(), shown, pairs)
