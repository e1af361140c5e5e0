"""Data-parallel training with the same optimiser steps as one process (``accelerate launch --num_processes N``).

Every process draws the same global batch and trains on its own slice of it (:func:`split_batches`), each process's
loss is weighted by its share of what the loss averages over (:func:`shard_weight`), and the gradients are averaged
over the processes (:func:`average_gradients`): the result is the gradient of the whole batch's loss. The loop
(:func:`rrhf_lite.core.loop.train`) calls these only when it runs on several processes.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


class _Shard:
    """A batch sampler that yields this process's slice of every batch of ``batch_sampler``."""

    def __init__(self, batch_sampler, rank: int, world: int):
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for number, indices in enumerate(self.batch_sampler):
            indices = list(indices)
            if len(indices) < self.world:
                raise ValueError(f"batch {number} has {len(indices)} rows, fewer than the {self.world} processes that "
                                 f"share it: use a larger batch size or fewer processes")
            # as equal as possible: the first len % world processes take one row more
            size, extra = divmod(len(indices), self.world)
            start = self.rank * size + min(self.rank, extra)
            yield indices[start:start + size + (self.rank < extra)]


def split_batches(loader: torch.utils.data.DataLoader, rank: int, world: int) -> torch.utils.data.DataLoader:
    """The same batches as ``loader``, cut in ``world`` slices: process ``rank`` gets rows of its slice only.

    Every process iterates the same global batches (the same seeded sampler), so ``world`` processes together see
    exactly the batches one process would, and each batch yields ``(rows in this slice, collated slice)``.
    Unlike accelerate's ``split_batches=True``, which needs the batch size to be a multiple of ``world`` and pads or
    drops an uneven last batch, a batch of any size is split into parts that differ by at most one row.
    """
    if loader.batch_sampler is None or loader.num_workers:
        raise ValueError("data-parallel training needs a DataLoader with a batch size and num_workers=0")
    collate = loader.collate_fn
    return torch.utils.data.DataLoader(loader.dataset, batch_sampler=_Shard(loader.batch_sampler, rank, world),
                                       collate_fn=lambda rows: (len(rows), collate(rows)), generator=loader.generator)


def shard_weight(units: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """What one process's loss is multiplied by so that the average of the processes' gradients is the gradient of
    the whole batch's loss.

    A process's loss is a mean over its ``units`` (rows or tokens) of the batch; the whole batch's loss is the mean over
    all units, sum_p units_p * loss_p / sum_p units_p. The gradients are averaged over the N processes
    (:func:`average_gradients`), so process p contributes N * units_p / sum_p units_p times its loss (1 with one
    process).
    """
    units = units.to(accelerator.device, torch.float64)
    return (accelerator.num_processes * units / accelerator.reduce(units.clone(), "sum")).float()


def average_gradients(params: list[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Replace each gradient by its mean over the processes (what DDP does during the backward pass), in one
    all-reduce of all of them. A parameter without a gradient counts as a zero gradient."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p).to(p.dtype)


def batch_values(weighted_loss: torch.Tensor, metrics: dict[str, float], row_weight: torch.Tensor,
                  accelerator: Accelerator) -> tuple[torch.Tensor, dict[str, float]]:
    """The whole batch's loss (the mean of the processes' weighted losses) and its metrics (each process's
    per-row means weighted by its rows), from one all-reduce."""
    n = accelerator.num_processes
    local = torch.stack([weighted_loss.float(), *(row_weight * v for v in metrics.values())]) / n
    total = accelerator.reduce(local.to(accelerator.device), "sum").cpu()
    return total[0], dict(zip(metrics, total[1:].tolist()))
