"""The one training loop every method shares.

A method plugs in a *step function* ``step_fn(model, batch) -> (loss, metrics)``; the loop does the rest:

* AdamW on the trainable parameters (with LoRA: only the adapters), warm-up then cosine learning rate;
* gradient clipping, and a guard that stops at the first non-finite loss or gradient, naming the step, before the
  weights change (:class:`NonFiniteLossError`); checkpoints are only ever written from finite weights, so the last
  good one survives;
* a tqdm progress bar and a metrics *history*: a list of dicts, ready for ``pandas.DataFrame(history)``;
* periodic evaluation (``eval_fn(model) -> dict``, logged as ``eval_<name>``);
* checkpoints (trainable weights, optimiser, scheduler, random state, history) written atomically every
  ``checkpoint_every`` steps; called again with the same ``checkpoint_dir``, the loop resumes where it stopped
  and ends with the same numbers as a run that was never interrupted (on the CPU, with the same seed), also when
  the process was killed (``kill -9``, a Colab disconnect): the file is replaced atomically, so it is either the
  previous checkpoint or the new one, never half of one. A checkpoint that cannot be read (a file copied or synced
  incompletely) is moved aside to ``checkpoint.pt.unreadable-*`` with a warning, and training starts over.

It runs through ``accelerate``: the same code runs on a CPU, a GPU, or data-parallel on several processes with
``accelerate launch --num_processes N``. Data-parallel training takes the *same optimiser steps* as one process:
every process draws the same global batch and trains on its own slice of it (:func:`split_batches`), each
process's loss is weighted by its share of what the loss averages over (:func:`shard_weight`), and the gradients are
averaged over the processes (all three in :mod:`rrhf_lite.core.parallel`): the result is the gradient of the whole
batch's loss. A loss that averages over rows (pairs, rankings) needs nothing more; one that averages over tokens
(SFT) says so with ``loss_units``. With dropout, the processes draw other masks than one process would, so the numbers
then agree in distribution only. The gradients are averaged by one all-reduce after each backward pass rather than by
wrapping the model in DDP: the log-prob code runs the decoder and the LM head separately
(:mod:`rrhf_lite.core.logprobs`), and DDP only synchronises what goes through its ``forward``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import pickle
import random
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from rrhf_lite.core.models import count_parameters, reproducible_saved_files
from rrhf_lite.core.parallel import average_gradients, batch_values, shard_weight, split_batches


@dataclass(frozen=True)
class TrainConfig:
    """What every trainer built on :func:`train` needs: how long, how fast, how often to log and checkpoint.

    Each method's config (``SFTConfig``, ``RewardConfig``, ``RRHFConfig``, ``PROConfig``, ``DPOConfig``) is this
    plus the few numbers its paper adds.
    """

    steps: int = 100  # optimiser steps (the data is cycled through as often as that takes)
    batch_size: int = 16  # examples (demonstrations, pairs, rankings) per step
    lr: float = 1e-4  # peak AdamW learning rate: linear warm-up, then cosine down to 10% (warmup_cosine)
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping threshold
    max_length: int = 512  # longest prompt + reply in tokens; longer rows lose the start of the prompt (warned)
    log_every: int = 10  # a history row (and a progress-bar update) every this many steps
    checkpoint_every: int = 50  # with a checkpoint_dir, save every this many steps (a multiple of log_every)
    seed: int = 0  # batch order and everything else random in the loop: same seed, same numbers on a CPU

    def loop_args(self) -> dict:
        """The keyword arguments of :func:`train` that this config sets."""
        return {"steps": self.steps, "lr": self.lr, "warmup_steps": self.warmup_steps,
                "weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm, "log_every": self.log_every,
                "checkpoint_every": self.checkpoint_every, "seed": self.seed}

    def shuffled(self, rows: list, collate_fn) -> torch.utils.data.DataLoader:
        """``rows`` in batches of ``batch_size``, shuffled by a generator seeded with ``seed``: the same batches
        every time it is iterated from the start, which resuming needs (:func:`train`)."""
        return torch.utils.data.DataLoader(rows, batch_size=self.batch_size, shuffle=True, collate_fn=collate_fn,
                                           generator=torch.Generator().manual_seed(self.seed))


StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
EvalFn = Callable[[torch.nn.Module], dict]
CHECKPOINT_FILE = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """Training stopped at ``step`` (1-based) because the loss or the gradient was NaN or infinite.

    Raised before the optimiser step, so the model still holds the weights of the previous step, and the last
    checkpoint on disk (if any) is untouched: ``checkpoint_step`` says which step it holds (None: no checkpoint).
    """

    def __init__(self, message: str, step: int, checkpoint_step: int | None):
        super().__init__(message)
        self.step, self.checkpoint_step = step, checkpoint_step


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


def _rng_state() -> dict:
    """Every random generator's state as tensors and plain numbers, which ``torch.load(weights_only=True)`` reads
    without unpickling any object (numpy's state is an array and a name: stored as a tensor and its parts)."""
    version, internal, gauss = random.getstate()
    state = {"torch_rng": torch.get_rng_state(),
             "python_rng": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy_rng"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                              "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if "python_rng" in state:
        python = state["python_rng"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    if "numpy_rng" in state:
        import numpy as np

        numpy = state["numpy_rng"]
        np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                             numpy["has_gauss"], numpy["cached_gaussian"]))
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, history: list[dict]) -> None:
    """Write the state needed to resume into ``path/checkpoint.pt`` (via a temp file, so never half-written).

    Refuses (``FloatingPointError``, nothing written) if a trainable weight is NaN or infinite: a bad state must
    never replace the last good checkpoint.
    """
    trainable = _trainable_state(model)
    bad = [n for n, t in trainable.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FloatingPointError(f"weights {bad[:3]} are not finite after step {step}; the checkpoint in {path} was "
                                 f"not overwritten")
    path.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "history": json.dumps(history), "trainable": trainable,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **_rng_state()}
    tmp = path / f".{CHECKPOINT_FILE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)


def _check_state(state, model=None, steps: int | None = None) -> None:
    """Raise (``TypeError``, ``KeyError`` or ``ValueError``, naming what is wrong) unless ``state`` is what
    :func:`save_checkpoint` writes for ``model`` in a run of ``steps`` steps: checked before anything is restored, so
    that a checkpoint which cannot be restored is moved aside instead of failing the same way on every retry."""
    if not isinstance(state, dict):
        raise TypeError(f"a {type(state).__name__}, not a dict")
    missing = {"step", "history", "trainable", "optimizer", "scheduler", "torch_rng"} - set(state)
    if missing:
        raise KeyError(f"no {sorted(missing)}")
    step, limit = state["step"], steps if steps is not None else float("inf")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= limit:
        raise ValueError(f"its step is {step!r}, not one of this run's (0 to {limit})")
    if not isinstance(state["history"], list) or not all(isinstance(row, dict) for row in state["history"]):
        raise TypeError("its history is not a list of rows")
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and isinstance(state["scheduler"], dict)):
        raise TypeError("its optimizer or scheduler state is not what torch writes")
    if not (torch.is_tensor(state["torch_rng"]) and state["torch_rng"].dtype == torch.uint8):
        raise TypeError("its torch_rng is not a generator state (a uint8 tensor)")
    if model is None:
        return
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state["trainable"]) != set(params):
        raise ValueError(f"its trainable parameters are not the model's "
                         f"({sorted(set(state['trainable']) ^ set(params))[:3]} differ)")
    for name, saved in state["trainable"].items():
        if not torch.is_tensor(saved) or saved.shape != params[name].shape:
            found = tuple(saved.shape) if torch.is_tensor(saved) else type(saved).__name__
            raise ValueError(f"its {name} is {found}, the model's is {tuple(params[name].shape)}")
        if saved.is_floating_point() and not torch.isfinite(saved).all():
            raise ValueError(f"its {name} holds NaN or infinite values")  # save_checkpoint never writes one
    if sum(len(group.get("params", ())) for group in optimizer["param_groups"]) != len(params):
        raise ValueError(f"its optimizer state is for another number of parameters than the model's {len(params)}")


def read_checkpoint(path: Path, model=None, steps: int | None = None) -> dict | None:
    """The state in ``path/checkpoint.pt``, or None if there is none.

    The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers of them, and
    nothing else, so a file planted in the runs folder cannot run code (a pickle that asks for any other object is
    refused). A file that cannot be read (truncated by a copy or a sync: :func:`save_checkpoint` itself is atomic; or
    written by other code, or holding other objects), or whose trainable parameters are not ``model``'s (when given),
    is renamed to ``checkpoint.pt.unreadable-<time>`` with a warning that names it, and None is returned: the run
    starts over instead of failing on every retry. So is one that could not be restored (:func:`_check_state`): a
    step that is not an integer from 0 to ``steps`` (when given), weights of other shapes or with NaN or infinite
    values, an optimizer, scheduler or generator state of another kind.
    """
    file = Path(path) / CHECKPOINT_FILE
    if not file.exists():
        return None
    try:
        state = torch.load(file, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("history"), str):
            state["history"] = json.loads(state["history"])
        _check_state(state, model, steps)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, TypeError, ValueError,
            AttributeError) as e:  # what torch.load raises on a truncated, foreign or unsafe file
        aside = file.with_name(f"{CHECKPOINT_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(file, aside)
        except FileNotFoundError:  # another process of a data-parallel run moved it first
            pass
        warnings.warn(f"checkpoint {file} cannot be read ({type(e).__name__}: {str(e)[:200]}); moved to {aside.name} "
                      f"and starting from step 0", stacklevel=2)
        return None
    return state


def load_checkpoint(path: Path, model, optimizer, scheduler, state: dict | None = None) -> tuple[int, list[dict]]:
    """Restore what :func:`save_checkpoint` wrote (or the already read ``state``); returns ``(step, history)``."""
    if state is None:
        state = torch.load(Path(path) / CHECKPOINT_FILE, weights_only=True)
        state["history"] = json.loads(state["history"])
    missing = set(state["trainable"]) ^ {n for n, p in model.named_parameters() if p.requires_grad}
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: {sorted(missing)[:5]}")
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state)
    return state["step"], state["history"]


def _stop(desc: str, what: str, value, step: int, checkpoint_dir: Path | None,
          checkpoint_step: int | None) -> NonFiniteLossError:
    if checkpoint_step is not None:
        kept = (f"the last good checkpoint (step {checkpoint_step}) is kept in {checkpoint_dir}; once the cause is "
                f"fixed, the same call resumes from it")
    elif checkpoint_dir is not None:
        kept = f"no checkpoint had been written yet in {checkpoint_dir}"
    else:
        kept = "no checkpoint_dir was given, so there is nothing to resume from"
    return NonFiniteLossError(f"{desc}: {what} is {value} at step {step}; stopped before the weights were changed "
                              f"({kept}). Lower the learning rate, or check this step's batch for bad values",
                              step, checkpoint_step)


def guarded_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, *,
                 max_grad_norm: float, stop: Callable[[str, float], Exception],
                 accelerator: Accelerator | None = None) -> float:
    """One optimiser step that never writes non-finite weights, shared by every trainer (PPO's update included).

    A non-finite loss stops before the backward pass, a non-finite gradient norm (after clipping to
    ``max_grad_norm``) before the step, with the gradients cleared: ``raise stop(what, value)``, where the caller
    says where it was and what it kept. With an ``accelerator``, its backward and clipping are used, the gradients
    are averaged over its processes (:func:`average_gradients`), and an overflowing gradient under fp16 loss scaling
    is left to the scaler, which skips that step itself. Returns the gradient norm before clipping.
    """
    if not torch.isfinite(loss):
        raise stop("the loss", loss.item())
    if accelerator is None:
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        accelerator.backward(loss)
        if accelerator.num_processes > 1:
            average_gradients(params, accelerator)
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    if (accelerator is None or accelerator.scaler is None) and not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise stop("the gradient norm", float(grad_norm))
    optimizer.step()
    return float(grad_norm)


def train(model: torch.nn.Module, batches: Iterable[dict], step_fn: StepFn, *, steps: int, lr: float,
          warmup_steps: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0, log_every: int = 10,
          eval_fn: EvalFn | None = None, eval_every: int = 0, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 0, seed: int = 0, desc: str = "train", progress: bool = True,
          accelerator: Accelerator | None = None, loss_units: Callable[[dict], torch.Tensor] | None = None
          ) -> list[dict]:
    """Train ``model`` for ``steps`` optimiser steps on ``batches`` (cycled) and return the metrics history.

    Each history row holds ``step``, ``lr``, ``loss``, ``grad_norm`` and whatever ``step_fn`` reported, averaged
    over the ``log_every`` steps since the previous row, plus ``eval_*`` entries on evaluation steps.
    ``batches`` must give the same sequence each time it is iterated from the start (a ``DataLoader`` with a
    seeded generator does), so that a resumed run sees the batches the interrupted one would have seen.

    On several processes (``accelerate launch``) ``batches`` must be a ``DataLoader``: each global batch is split
    between the processes (:func:`split_batches`), and the history holds the whole batch's loss and metrics, the
    same on every process. ``loss_units(batch)`` counts what ``step_fn``'s loss is a mean over, when that is not the
    batch's rows (SFT: the response tokens); it is only called on several processes.
    """
    if checkpoint_every and checkpoint_every % log_every:
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of log_every ({log_every})")
    set_seed(seed)
    # with no GPU, CPU processes (gloo) under `accelerate launch`: accelerate would otherwise run each one on its own
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup_steps))
    # placed on the process's device, with accelerate's mixed precision if configured; not wrapped in DDP (see above)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    # the scheduler stays ours: accelerate's wrapper would step it once per process, as if each took a whole batch
    optimizer = accelerator.prepare_optimizer(optimizer)
    sharded = accelerator.num_processes > 1
    if sharded:
        if not isinstance(batches, torch.utils.data.DataLoader):
            raise ValueError(f"{desc}: on {accelerator.num_processes} processes the batches must be a DataLoader, "
                             f"so that each process can take its slice of every batch")
        batches = split_batches(batches, accelerator.process_index, accelerator.num_processes)

    start, history, saved_step = 0, [], None
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    state = read_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), steps) if checkpoint_dir else None
    if state is not None:
        start, history = load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, state)
        saved_step = start
        accelerator.print(f"{desc}: resuming from step {start} ({checkpoint_dir.name})")
    del state

    stream = itertools.chain.from_iterable(itertools.repeat(batches))  # cycle through epochs
    for _ in range(start):  # skip what the interrupted run already trained on
        next(stream)
    model.train()
    window: dict[str, list[float]] = {}
    bar = tqdm(range(start, steps), desc=desc, disable=not progress or not accelerator.is_main_process,
               initial=start, total=steps)
    for step in bar:
        rows, batch = next(stream) if sharded else (None, next(stream))
        batch = _to_device(batch, accelerator.device)
        loss, metrics = step_fn(model, batch)
        metrics = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in metrics.items()}
        stop = functools.partial(_stop, desc, step=step + 1, checkpoint_dir=checkpoint_dir, checkpoint_step=saved_step)
        weighted = loss
        if sharded:  # this process's share of the batch's loss, and the batch's loss and metrics for the history
            row_weight = shard_weight(torch.as_tensor(rows), accelerator)
            weighted = loss * (shard_weight(torch.as_tensor(loss_units(batch)), accelerator) if loss_units
                               else row_weight)
            loss, metrics = batch_values(weighted.detach(), metrics, row_weight, accelerator)
            if not torch.isfinite(loss):  # every process stops at the same step, none waits for the others
                raise stop("the loss", loss.item())
        grad_norm = guarded_step(weighted, params, optimizer, max_grad_norm=max_grad_norm, accelerator=accelerator,
                                 stop=stop)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row = {"loss": loss.item(), "grad_norm": float(grad_norm), **metrics}
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
            saved_step = done
    bad = [n for n, p in accelerator.unwrap_model(model).named_parameters()
           if p.requires_grad and p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:  # finite losses and gradients can still step into inf with a huge learning rate
        raise _stop(desc, f"weight {bad[0]!r}", "not finite", steps, checkpoint_dir, saved_step)
    model.eval()
    return history


def save_run(out_dir: str | Path, model, tokenizer, history: list[dict], *, folder: str = "adapter",
             counted: torch.nn.Module | None = None, **extra) -> None:
    """End a training run the one way every trainer does: the trained weights (a LoRA adapter, or a whole model) and
    the tokenizer, ``save_pretrained`` into ``out_dir/folder``, and ``out_dir/history.json`` with the curves, the
    trainable and total parameters of ``counted`` (default: ``model``; PPO counts its value head too) and ``extra``."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir / folder)
    tokenizer.save_pretrained(out_dir / folder)
    reproducible_saved_files(out_dir / folder)
    counted = model if counted is None else counted
    summary = {**extra, "trainable_parameters": count_parameters(counted, trainable_only=True),
               "parameters": count_parameters(counted), "history": history}
    (out_dir / "history.json").write_text(json.dumps(summary, indent=1))
