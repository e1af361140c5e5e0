"""Supervised fine-tuning (SFT): imitate demonstrations, counting only the reply's tokens.

Every alignment method in this package starts from the SFT model (InstructGPT's recipe, Ouyang et al. 2022): a
base model fine-tuned on good replies, here with LoRA adapters that are merged back into the weights afterwards.
The loss is :func:`rrhf_lite.core.losses.sft_loss`, the mean negative log-likelihood of the response tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from rrhf_lite.core.logprobs import pad_batch, sequence_logprobs, tokenize_pairs
from rrhf_lite.core.loop import TrainConfig, train
from rrhf_lite.core.losses import sft_loss
from rrhf_lite.core.validation import report_truncation, rows_of, validate_demonstrations, validate_tokenizer


def tokenize_demonstrations(tokenizer, dataset, max_length: int) -> list[dict]:
    """``prompt/completion`` rows -> token ids with a response mask (see
    :func:`~rrhf_lite.core.logprobs.tokenize_pair`).

    Rows longer than ``max_length`` lose the start of their prompt first; how many were cut is reported in a
    :class:`rrhf_lite.core.validation.DataWarning` (:func:`rrhf_lite.core.validation.report_truncation`).
    """
    validate_tokenizer(tokenizer)
    dataset = rows_of(dataset)
    rows = tokenize_pairs(tokenizer, [r["prompt"] for r in dataset], [r["completion"] for r in dataset], max_length)
    report_truncation((("completion", i, r) for i, r in enumerate(rows)), max_length, "SFT demonstrations")
    return rows


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: the loop's settings (:class:`~rrhf_lite.core.loop.TrainConfig`), nothing more."""

    lr: float = 2e-4  # peak learning rate of the LoRA adapters (LoRA tolerates ~10x a full fine-tune's rate)
    checkpoint_every: int = 100  # with a checkpoint_dir, save every this many steps


def demonstration_batches(tokenizer, dataset, config: SFTConfig):
    """The demonstrations tokenised, shuffled (seeded) and padded into batches of ``config.batch_size``."""
    rows = tokenize_demonstrations(tokenizer, dataset, config.max_length)
    return config.shuffled(rows, functools.partial(pad_batch, pad_token_id=tokenizer.pad_token_id))


def sft_step(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """One SFT step: log-probs of the response tokens, then their mean negative log-likelihood."""
    lp = sequence_logprobs(model, batch)
    return sft_loss(lp.token_logps, lp.mask), {"response_tokens": lp.count.mean()}


def response_tokens(batch: dict) -> torch.Tensor:
    """What the SFT loss is a mean over: the predicted response tokens (data-parallel training weighs by them)."""
    return batch["response_mask"][:, 1:].sum()


def train_sft(model, tokenizer, dataset, config: SFTConfig = SFTConfig(), *, checkpoint_dir: Path | None = None,
              progress: bool = True) -> list[dict]:
    """Fine-tune ``model`` (a causal LM with trainable LoRA adapters, e.g. from
    :func:`rrhf_lite.core.models.load_for_training`) on ``dataset`` (``prompt/completion`` rows); returns the history.

    The model is trained in place; save it with ``model.save_pretrained(...)`` (or fold the adapter in with
    :func:`rrhf_lite.core.models.merge_adapter`). With ``checkpoint_dir``, an interrupted run resumes from its last
    checkpoint.

    The data is checked before anything else (:func:`rrhf_lite.core.validation.validate_demonstrations`): a missing
    column, an empty prompt or completion, or a non-string value raises
    :class:`rrhf_lite.core.validation.DataValidationError` naming the column and the row.
    """
    validate_demonstrations(dataset)
    batches = demonstration_batches(tokenizer, dataset, config)
    return train(model, batches, sft_step, **config.loop_args(), checkpoint_dir=checkpoint_dir, desc="SFT",
                 progress=progress, loss_units=response_tokens)
