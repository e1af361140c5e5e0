"""The one training loop every method shares.

A method plugs in a *step function* ``step_fn(model, batch) -> (loss, metrics)``; the loop does the rest:

* AdamW on the trainable parameters (with LoRA: only the adapters), warm-up then cosine learning rate;
* gradient clipping, and a guard that stops at the first non-finite loss, naming the step;
* a tqdm progress bar and a metrics *history*: a list of dicts, ready for ``pandas.DataFrame(history)``;
* periodic evaluation (``eval_fn(model) -> dict``, logged as ``eval_<name>``);
* checkpoints (trainable weights, optimiser, scheduler, random state, history) written atomically every
  ``checkpoint_every`` steps; called again with the same ``checkpoint_dir``, the loop resumes where it stopped
  and ends with the same numbers as a run that was never interrupted.

It runs through ``accelerate``: the same code runs on a CPU, a GPU, or data-parallel on several processes with
``accelerate launch --num_processes N`` (each process then sees its own shard of every epoch).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
EvalFn = Callable[[torch.nn.Module], dict]
CHECKPOINT_FILE = "checkpoint.pt"


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine down to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, history: list[dict]) -> None:
    """Write the state needed to resume into ``path/checkpoint.pt`` (via a temp file, so never half-written)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "history": history, "trainable": _trainable_state(model),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state()}
    tmp = path / f".{CHECKPOINT_FILE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore what :func:`save_checkpoint` wrote; returns ``(step, history)``."""
    state = torch.load(path / CHECKPOINT_FILE, weights_only=False)
    missing = set(state["trainable"]) ^ {n for n, p in model.named_parameters() if p.requires_grad}
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: {sorted(missing)[:5]}")
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["history"]


def train(model: torch.nn.Module, batches: Iterable[dict], step_fn: StepFn, *, steps: int, lr: float,
          warmup_steps: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0, log_every: int = 10,
          eval_fn: EvalFn | None = None, eval_every: int = 0, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, seed: int = 0, desc: str = "train", progress: bool = True,
          accelerator: Accelerator | None = None) -> list[dict]:
    """Train ``model`` for ``steps`` optimiser steps on ``batches`` (cycled) and return the metrics history.

    Each history row holds ``step``, ``lr``, ``loss``, ``grad_norm`` and whatever ``step_fn`` reported, averaged
    over the ``log_every`` steps since the previous row, plus ``eval_*`` entries on evaluation steps.
    ``batches`` must give the same sequence each time it is iterated from the start (a ``DataLoader`` with a
    seeded generator does), so that a resumed run sees the batches the interrupted one would have seen.
    """
    if checkpoint_every and checkpoint_every % log_every:
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of log_every ({log_every})")
    set_seed(seed)
    accelerator = accelerator or Accelerator()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.num_processes > 1 and isinstance(batches, torch.utils.data.DataLoader):
        batches = accelerator.prepare(batches)  # shard each epoch across processes

    start, history = 0, []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if checkpoint_dir and (checkpoint_dir / CHECKPOINT_FILE).exists():
        start, history = load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler)
        accelerator.print(f"{desc}: resuming from step {start} ({checkpoint_dir})")

    stream = itertools.chain.from_iterable(itertools.repeat(batches))  # cycle through epochs
    for _ in range(start):  # skip what the interrupted run already trained on
        next(stream)
    model.train()
    window: dict[str, list[float]] = {}
    bar = tqdm(range(start, steps), desc=desc, disable=not progress or not accelerator.is_main_process,
               initial=start, total=steps)
    for step in bar:
        loss, metrics = step_fn(model, _to_device(next(stream), accelerator.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step + 1}; stopped before the weights "
                                     f"were corrupted (last good checkpoint kept; lower the learning rate or check "
                                     f"the batch)")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row = {"loss": loss.item(), "grad_norm": float(grad_norm),
               **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in metrics.items()}}
        for k, v in row.items():
            window.setdefault(k, []).append(v)
        done = step + 1
        if done % log_every == 0 or done == steps:
            logged = {"step": done, "lr": scheduler.get_last_lr()[0], **{k: sum(v) / len(v) for k, v in window.items()}}
            window = {}
            if eval_fn is not None and eval_every and (done % eval_every == 0 or done == steps):
                model.eval()
                with torch.no_grad():
                    logged.update({f"eval_{k}": float(v) for k, v in eval_fn(model).items()})
                model.train()
            history.append(logged)
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
        if checkpoint_dir and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, done, history)
    model.eval()
    return history
