"""Supervised fine-tuning (SFT): imitate demonstrations, counting only the reply's tokens.

Every alignment method in this package starts from the SFT model (InstructGPT's recipe, Ouyang et al. 2022): a
base model fine-tuned on good replies, here with LoRA adapters that are merged back into the weights afterwards.
The loss is :func:`rrhf_lite.losses.sft_loss`, the mean negative log-likelihood of the response tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .data import report_truncation, validate_demonstrations, validate_tokenizer
from .logprobs import pad_batch, sequence_logprobs, tokenize_pairs
from .loop import save_run, train
from .losses import sft_loss
from .models import load_for_training, merge_adapter


def tokenize_demonstrations(tokenizer, dataset, max_length: int) -> list[dict]:
    """``prompt/completion`` rows -> token ids with a response mask (see :func:`~rrhf_lite.logprobs.tokenize_pair`).

    Rows longer than ``max_length`` lose the start of their prompt first; how many were cut is reported in a
    :class:`rrhf_lite.data.DataWarning` (:func:`rrhf_lite.data.report_truncation`).
    """
    validate_tokenizer(tokenizer)
    dataset = list(dataset)
    rows = tokenize_pairs(tokenizer, [r["prompt"] for r in dataset], [r["completion"] for r in dataset], max_length)
    report_truncation((("completion", i, r) for i, r in enumerate(rows)), max_length, "SFT demonstrations")
    return rows


def demonstration_batches(tokenizer, dataset, batch_size: int, max_length: int, seed: int):
    rows = tokenize_demonstrations(tokenizer, dataset, max_length)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True,
                                       collate_fn=functools.partial(pad_batch, pad_token_id=tokenizer.pad_token_id),
                                       generator=torch.Generator().manual_seed(seed))


def sft_step(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """One SFT step: log-probs of the response tokens, then their mean negative log-likelihood."""
    lp = sequence_logprobs(model, batch)
    return sft_loss(lp.token_logps, lp.mask), {"response_tokens": lp.count.mean()}


def response_tokens(batch: dict) -> torch.Tensor:
    """What the SFT loss is a mean over: the predicted response tokens (data-parallel training weighs by them)."""
    return batch["response_mask"][:, 1:].sum()


def train_sft(profile, base_path, dataset, out_dir: Path, checkpoint_dir: Path | None = None,
              progress: bool = True) -> list[dict]:
    """LoRA-fine-tune ``base_path`` on ``dataset`` (``prompt/completion``) and save the merged SFT model.

    Writes ``out_dir/adapter`` (the LoRA weights), ``out_dir/model`` (base + adapter merged: what later stages load)
    and ``out_dir/history.json``. With ``checkpoint_dir``, an interrupted run resumes from its last checkpoint.

    The data is checked before anything is loaded (:func:`rrhf_lite.data.validate_demonstrations`): a missing column,
    an empty prompt or completion, or a non-string value raises :class:`rrhf_lite.data.DataValidationError` naming
    the column and the row.
    """
    validate_demonstrations(dataset)
    out_dir = Path(out_dir)
    model, tokenizer = load_for_training(base_path, profile, head="lm")
    batches = demonstration_batches(tokenizer, dataset, profile.sft_batch_size, profile.max_length, profile.seed)
    history = train(model, batches, sft_step, steps=profile.sft_steps, lr=profile.sft_lr,
                    warmup_steps=profile.sft_warmup_steps, weight_decay=profile.weight_decay,
                    max_grad_norm=profile.max_grad_norm, log_every=profile.log_every, seed=profile.seed,
                    checkpoint_dir=checkpoint_dir, checkpoint_every=10 * profile.log_every,
                    desc="SFT", progress=progress, loss_units=response_tokens)
    save_run(out_dir, model, tokenizer, history)
    merge_adapter(base_path, out_dir / "adapter", out_dir / "model", dtype=profile.compute_dtype)
    return history
