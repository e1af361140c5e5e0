"""DPO training with one model in memory (Rafailov et al. 2023).

DPO needs log-probs of each chosen and rejected reply under two models: the policy being trained and a frozen
*reference* (the SFT model). The usual recipe keeps two copies of the model in memory. Here there is one:

* The policy is the SFT model plus fresh LoRA adapters. Before training, with the adapters still at zero, it *is*
  the reference, so the reference log-probs are computed once, in a pass over the data before the first step,
  and cached with the examples (:func:`add_reference_logprobs`). The same numbers come out of the model with its
  adapters disabled (``with model.disable_adapter():``), which a test checks.
* Chosen and rejected replies go through the model in one forward pass: the collator stacks all chosen replies,
  then all rejected ones, and the step splits the log-prob sums in two.

The loss itself is :func:`rrhf_lite.core.losses.dpo_loss`: sigmoid DPO, IPO, or SimPO (Meng et al. 2024: no
reference, each reply scored by its mean token log-prob as RRHF scores it, and a target margin).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from rrhf_lite.core.logprobs import pad_batch, sequence_logprobs, tokenize_preference_pairs
from rrhf_lite.core.loop import TrainConfig, train
from rrhf_lite.core.losses import dpo_loss
from rrhf_lite.core.validation import report_truncation, validate_preference_dataset, validate_tokenizer


def tokenize_preferences(tokenizer, pairs, max_length: int) -> list[dict]:
    """``prompt/chosen/rejected`` rows -> both replies tokenised with their response masks.

    Rows longer than ``max_length`` are cut as :func:`~rrhf_lite.core.logprobs.tokenize_pair` says and counted in a
    warning.
    """
    validate_tokenizer(tokenizer)
    rows = tokenize_preference_pairs(tokenizer, pairs, max_length)
    report_truncation(((c, i, row[c]) for i, row in enumerate(rows) for c in ("chosen", "rejected")), max_length,
                      "DPO pairs")
    return rows


def collate_preferences(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """All chosen replies then all rejected ones in one padded batch (+ cached reference log-probs, if present)."""
    batch = pad_batch([r["chosen"] for r in rows] + [r["rejected"] for r in rows], pad_token_id)
    if "ref_chosen" in rows[0]:
        batch["ref_chosen"] = torch.tensor([r["ref_chosen"] for r in rows])
        batch["ref_rejected"] = torch.tensor([r["ref_rejected"] for r in rows])
    return batch


@torch.no_grad()
def add_reference_logprobs(model, rows: list[dict], pad_token_id: int, batch_size: int = 32) -> list[dict]:
    """Cache ``log pi_ref`` of each row's chosen and rejected reply (summed over tokens) into the row.

    ``model`` must be the reference: the SFT model, or a LoRA model whose adapters are fresh or disabled.
    """
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in collate_preferences(chunk, pad_token_id).items()}
        chosen, rejected = sequence_logprobs(model, batch).sum.cpu().chunk(2)
        for row, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            row["ref_chosen"], row["ref_rejected"] = c, r
    model.train(was_training)
    return rows


def dpo_step(model, batch: dict, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             simpo_gamma: float = 0.0) -> tuple[torch.Tensor, dict]:
    """One DPO step: one forward pass for chosen and rejected, then :func:`dpo_loss` against the cached reference
    (SimPO: none)."""
    lp = sequence_logprobs(model, batch)
    chosen, rejected = lp.sum.chunk(2)
    chosen_len, rejected_len = lp.count.chunk(2)
    out = dpo_loss(chosen, rejected, batch.get("ref_chosen"), batch.get("ref_rejected"), beta=beta, loss_type=loss_type,
                   label_smoothing=label_smoothing, chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                   simpo_gamma=simpo_gamma)
    margin = out.chosen_rewards - out.rejected_rewards
    return out.loss, {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean(),
                      "logp_chosen": chosen.detach().mean(), "logp_rejected": rejected.detach().mean()}


@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    """DPO (Rafailov et al. 2023): the loop's settings (:class:`~rrhf_lite.core.loop.TrainConfig`) and the loss's
    three."""

    lr: float = 1e-4  # peak learning rate of the fresh LoRA adapters
    beta: float = 0.1  # strength of the implicit KL constraint: small beta lets the policy move further
    loss_type: str = "sigmoid"  # "sigmoid" (DPO), "ipo" (Azar et al. 2023) or "simpo" (Meng et al. 2024, no reference)
    label_smoothing: float = 0.0  # assumed label-flip rate (conservative DPO); 0 = plain DPO
    simpo_gamma: float = 1.0  # SimPO only: the target margin gamma (the paper: beta about 2, gamma / beta about 0.5)


def train_dpo(model, tokenizer, pairs, config: DPOConfig = DPOConfig(), *, checkpoint_dir: Path | None = None,
              progress: bool = True) -> list[dict]:
    """Train ``model`` with DPO on ``pairs`` (``prompt/chosen/rejected``, TRL's format); returns the history.

    ``model`` is the policy with *fresh* LoRA adapters (e.g. from :func:`rrhf_lite.core.models.load_for_training`):
    before the first step it is the reference, whose log-probs are computed once here and cached with the pairs (SimPO,
    ``loss_type="simpo"``, has no reference: none are computed). It is trained in place. The pairs are checked first
    (:func:`rrhf_lite.core.validation.validate_preference_dataset`; empty replies are kept, with a warning).
    """
    validate_preference_dataset(pairs, allow_empty_responses=True)
    rows = tokenize_preferences(tokenizer, pairs, config.max_length)
    if config.loss_type != "simpo":  # SimPO has no reference
        add_reference_logprobs(model, rows, tokenizer.pad_token_id)  # fresh adapters: the model is the reference
    batches = config.shuffled(rows, functools.partial(collate_preferences, pad_token_id=tokenizer.pad_token_id))
    step = functools.partial(dpo_step, beta=config.beta, loss_type=config.loss_type,
                             label_smoothing=config.label_smoothing, simpo_gamma=config.simpo_gamma)
    return train(model, batches, step, **config.loop_args(), checkpoint_dir=checkpoint_dir, desc="DPO",
                 progress=progress)
