"""The one training loop every method shares.

A method plugs in a *step function* ``step_fn(model, batch) -> (loss, metrics)``; the loop does the rest:
optimiser (AdamW), warm-up then cosine learning-rate schedule, gradient clipping, a progress bar, a metrics
history and a guard that stops at the first non-finite loss. It runs through ``accelerate``, so the same loop
runs on a CPU, a GPU, or data-parallel with ``accelerate launch``.

The history is a list of dicts, one per logged step, ready for ``pandas.DataFrame(history)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine down to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(model: torch.nn.Module, batches: Iterable[dict], step_fn: StepFn, *, steps: int, lr: float,
          warmup_steps: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0, log_every: int = 10,
          seed: int = 0, desc: str = "train", progress: bool = True) -> list[dict]:
    """Train ``model`` for ``steps`` optimiser steps on ``batches`` (cycled) and return the metrics history.

    Each history row holds ``step``, ``loss``, ``lr``, ``grad_norm`` and whatever ``step_fn`` reported,
    averaged over the ``log_every`` steps since the previous row.
    """
    set_seed(seed)
    accelerator = Accelerator()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if isinstance(batches, torch.utils.data.DataLoader):
        batches = accelerator.prepare(batches)

    model.train()
    history: list[dict] = []
    window: dict[str, list[float]] = {}
    stream = itertools.chain.from_iterable(itertools.repeat(batches))  # cycle through epochs
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        batch = next(stream)
        loss, metrics = step_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}; stopping before the weights "
                                     f"are corrupted (lower the learning rate or check the batch)")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row = {"loss": loss.item(), "grad_norm": float(grad_norm), **{k: float(v) for k, v in metrics.items()}}
        for k, v in row.items():
            window.setdefault(k, []).append(v)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            logged = {"step": step + 1, "lr": scheduler.get_last_lr()[0],
                      **{k: sum(v) / len(v) for k, v in window.items()}}
            history.append(logged)
            window = {}
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
    model.eval()
    return history
