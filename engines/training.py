"""The training harness every model family's ``fit`` is written with: one way to seed, order batches, cache frozen
features, schedule the learning rate, place the work on a device, and save and resume state.

A family's ``fit`` is then its losses and the order of its phases::

    device = start(settings, MyTrainError)                    # validate settings, threads, torch seed
    saved = resume_point(context, ("student",), MyTrainError) # (phase, epoch, state) or None
    feats = cache_features(train, names, model.prepare, device, MyTrainError)
    train_phase("student", nets, opt, settings=…, context=…, first_epoch=…, batches=…, step=…)
    finish(model)                                             # back on the CPU in eval mode

A family trained in one phase (DADA, 3DSR) hands the last three steps to ``fit_one_phase``.

**The one resume format** (``training_state``): a flat mapping ``"<net>.<state_dict key>"`` → tensor for each
trained module, plus ``"optim.<param index>.<slot>"`` → tensor for the optimiser's per-parameter state. Only tensors,
so ``engines.checkpoint.save_state`` writes it to safetensors without pickle; the optimiser's hyper-parameters are
not saved (the schedule is a function of the epoch, so a resumed run sets them again).

**Batch order** (``batch_order``) is a permutation drawn on the CPU from ``(seed, phase, epoch)``: a resumed run
draws the same batches as an uninterrupted one, on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from edge.core.errors import EdgeError
from engines.contract import FitSettings, TrainContext

T = TypeVar("T")


def start(settings: FitSettings, error: type[EdgeError]) -> torch.device:
    """Check ``settings``, set torch's threads and seed; returns the device the loop runs on."""
    if settings.epochs < 1 or settings.batch_size < 1 or settings.learning_rate <= 0:
        raise error(
            f"epochs={settings.epochs}, batch_size={settings.batch_size}, lr={settings.learning_rate}",
            "use at least one epoch, batch size 1 and a positive learning rate",
        )
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    return torch.device(settings.device)


def finish(model: nn.Module) -> None:
    """Hand the trained model back where checkpointing and export expect it: on the CPU, in eval mode."""
    model.cpu().eval()


def batch_order(n: int, batch: int, seed: int, epoch: int, phase: int = 0) -> list[Tensor]:
    """Shuffled index batches of ``n`` samples, fixed by (seed, phase, epoch) and drawn on the CPU."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + phase * 10_007 + epoch)
    return list(torch.split(torch.randperm(n, generator=gen), batch))


def batch_inputs(
    batch: Mapping[str, Any], names: tuple[str, ...], error: type[EdgeError], device: torch.device | None = None
) -> dict[str, Tensor]:
    """The named inputs of a training batch as float tensors (on ``device``); a missing name raises ``error``."""
    missing = [n for n in names if n not in batch]
    if missing:
        raise error(
            f"training batch lacks {missing} (has {sorted(batch)})",
            f"feed batches with {list(names)} as the card lists",
        )
    tensors = {n: torch.as_tensor(batch[n]).float() for n in names}
    return tensors if device is None else {n: t.to(device) for n, t in tensors.items()}


def cache_features(
    train: Iterable[Mapping[str, Any]],
    names: tuple[str, ...],
    features: Callable[..., tuple[Tensor, ...]],
    device: torch.device,
    error: type[EdgeError],
    *,
    allow_empty: bool = False,
) -> tuple[Tensor, ...]:
    """``features(**inputs)`` of every training batch, without gradients, on ``device``, concatenated per output.

    The frozen part of a model (backbone, pretrained encoder) runs once per sample instead of once per epoch. An
    empty training set raises ``error`` unless ``allow_empty`` (then the result is empty)."""
    parts: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for batch in train:
            parts.append(features(**batch_inputs(batch, names, error, device)))
    if not parts:
        if allow_empty:
            return ()
        raise error("the training set is empty", "give fit() at least one batch of normal samples")
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def set_lr(opt: torch.optim.Optimizer, base: float, epoch: int, epochs: int, steps: tuple[float, ...] = ()) -> None:
    """Step schedule by epoch (×0.1 at each fraction of ``epochs`` in ``steps``): stateless, so resuming needs no
    scheduler state. With no steps the rate is ``base`` throughout."""
    lr = base * 0.1 ** sum(epoch >= int(f * epochs) for f in steps)
    for group in opt.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------------------- state


def training_state(nets: Mapping[str, nn.Module], opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The one resume format: ``<net>.<key>`` and ``optim.<index>.<slot>`` → CPU tensor copies (a snapshot)."""
    state = {f"{name}.{k}": v.detach().cpu().clone() for name, net in nets.items() for k, v in net.state_dict().items()}
    for idx, slots in opt.state_dict()["state"].items():
        state |= {f"optim.{idx}.{k}": torch.as_tensor(v).cpu().clone() for k, v in slots.items()}
    return state


def load_training_state(
    state: Mapping[str, Any],
    nets: Mapping[str, nn.Module],
    opt: torch.optim.Optimizer | None,
    error: type[EdgeError],
) -> None:
    """Load a ``training_state`` into ``nets`` (strict) and ``opt`` (when given); a mismatch raises ``error``."""
    try:
        for name, net in nets.items():
            sub = {k[len(name) + 1 :]: torch.as_tensor(v) for k, v in state.items() if k.startswith(name + ".")}
            net.load_state_dict(sub, strict=True)
        if opt is not None:
            slots: dict[int, dict[str, Tensor]] = {}
            for key, value in state.items():
                if key.startswith("optim."):
                    _, idx, slot = key.split(".", 2)
                    slots.setdefault(int(idx), {})[slot] = torch.as_tensor(value)
            opt.load_state_dict({"state": slots, "param_groups": opt.state_dict()["param_groups"]})
    except (KeyError, RuntimeError, ValueError) as err:
        raise error(
            f"the saved state does not fit this model ({' '.join(str(err).split())[:200]})",
            "resume with the same preset and mode, or start a fresh run",
        ) from err


def resume_point(
    context: TrainContext, phases: tuple[str, ...], error: type[EdgeError]
) -> tuple[str, int, Mapping[str, Any]] | None:
    """The context's saved (phase, epoch, state), checked to be one of this family's ``phases``; None when fresh."""
    saved = context.resume_state()
    if saved is None:
        return None
    phase, epoch, state = saved
    if phase not in phases:
        raise error(
            f"saved state is of phase {phase!r}, not {' or '.join(repr(p) for p in phases)}",
            "resume a run of the same family, or start a fresh run",
        )
    return phase, int(epoch), state


# ---------------------------------------------------------------------------------------------------------- loop


def train_phase(
    phase: str,
    nets: Mapping[str, nn.Module],
    opt: torch.optim.Optimizer,
    *,
    settings: FitSettings,
    context: TrainContext,
    first_epoch: int,
    batches: Callable[[int], Iterable[T]],
    step: Callable[[T], Tensor],
    lr_steps: tuple[float, ...] = (),
) -> None:
    """Epochs ``first_epoch`` … ``settings.epochs − 1`` of one phase: set the learning rate, run ``step`` (returns
    the loss) on each item of ``batches(epoch)`` with a backward pass and an optimiser step, then report the mean
    loss and save ``training_state(nets, opt)`` after every epoch."""
    for epoch in range(first_epoch, settings.epochs):
        set_lr(opt, settings.learning_rate, epoch, settings.epochs, lr_steps)
        losses = []
        for item in batches(epoch):
            loss = step(item)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            losses.append(float(loss.detach()))
        context.progress(phase, epoch + 1, settings.epochs, loss=float(np.mean(losses)))
        context.save_state(phase, epoch + 1, training_state(nets, opt))


def fit_one_phase(
    model: nn.Module,
    phase: str,
    nets: Mapping[str, nn.Module],
    settings: FitSettings,
    context: TrainContext,
    *,
    batches: Callable[[int], Iterable[T]],
    step: Callable[[T], Tensor],
    error: type[EdgeError],
    lr_steps: tuple[float, ...] = (),
) -> None:
    """The rest of a one-phase family's ``fit``: Adam over the parameters of ``nets`` at the settings' learning rate,
    it and ``nets`` restored from the context's saved state (one of ``phase``, else ``error``) or fresh, the epochs left
    of ``phase`` trained (``train_phase``), ``model`` handed back on the CPU in eval mode (``finish``)."""
    opt = torch.optim.Adam([p for net in nets.values() for p in net.parameters()], lr=settings.learning_rate)
    saved = resume_point(context, (phase,), error)
    if saved is not None:
        load_training_state(saved[2], nets, opt, error)
    model.train()
    train_phase(
        phase,
        nets,
        opt,
        settings=settings,
        context=context,
        first_epoch=0 if saved is None else saved[1],
        batches=batches,
        step=step,
        lr_steps=lr_steps,
    )
    finish(model)
