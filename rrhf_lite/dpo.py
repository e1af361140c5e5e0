"""DPO training with one model in memory (Rafailov et al. 2023).

DPO needs log-probs of each chosen and rejected reply under two models: the policy being trained and a frozen
*reference* (the SFT model). The usual recipe keeps two copies of the model in memory. Here there is one:

* The policy is the SFT model plus fresh LoRA adapters. Before training, with the adapters still at zero, it *is*
  the reference, so the reference log-probs are computed once, in a pass over the data before the first step,
  and cached with the examples (:func:`add_reference_logprobs`). The same numbers come out of the model with its
  adapters disabled (``with model.disable_adapter():``), which a test checks.
* Chosen and rejected replies go through the model in one forward pass: the collator stacks all chosen replies,
  then all rejected ones, and the step splits the log-prob sums in two.

The loss itself is :func:`rrhf_lite.losses.dpo_loss` (sigmoid DPO or IPO).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .data import report_truncation, validate_preference_dataset, validate_tokenizer
from .logprobs import pad_batch, sequence_logprobs, tokenize_preference_pairs
from .loop import save_run, train
from .losses import dpo_loss
from .models import load_for_training


def tokenize_preferences(tokenizer, pairs, max_length: int) -> list[dict]:
    """``prompt/chosen/rejected`` rows -> both replies tokenised with their response masks.

    Rows longer than ``max_length`` are cut as :func:`~rrhf_lite.logprobs.tokenize_pair` says and counted in a
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


def dpo_step(model, batch: dict, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """One DPO step: one forward pass for chosen and rejected, then :func:`dpo_loss` against the cached reference."""
    lp = sequence_logprobs(model, batch)
    chosen, rejected = lp.sum.chunk(2)
    chosen_len, rejected_len = lp.count.chunk(2)
    out = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta=beta, loss_type=loss_type,
                   label_smoothing=label_smoothing, chosen_lengths=chosen_len, rejected_lengths=rejected_len)
    margin = out.chosen_rewards - out.rejected_rewards
    return out.loss, {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean(),
                      "logp_chosen": chosen.detach().mean(), "logp_rejected": rejected.detach().mean()}


def train_dpo(profile, init_path, pairs, out_dir: Path, *, beta: float | None = None,
              checkpoint_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """Train fresh LoRA adapters on ``init_path`` (the SFT model) with DPO on ``pairs``; save them in ``out_dir``.

    ``beta`` defaults to ``profile.dpo_beta``. Writes ``out_dir/adapter`` and ``out_dir/history.json``. The pairs are
    checked first (:func:`rrhf_lite.data.validate_preference_dataset`; empty replies are kept, with a warning).
    """
    validate_preference_dataset(pairs, allow_empty_responses=True)
    out_dir = Path(out_dir)
    beta = profile.dpo_beta if beta is None else beta
    model, tokenizer = load_for_training(init_path, profile, head="lm")
    rows = tokenize_preferences(tokenizer, pairs, profile.max_length)
    add_reference_logprobs(model, rows, tokenizer.pad_token_id)  # fresh adapters: the model is the reference
    batches = torch.utils.data.DataLoader(
        rows, batch_size=profile.dpo_batch_size, shuffle=True, generator=torch.Generator().manual_seed(profile.seed),
        collate_fn=functools.partial(collate_preferences, pad_token_id=tokenizer.pad_token_id))
    step = functools.partial(dpo_step, beta=beta, loss_type=profile.dpo_loss_type,
                             label_smoothing=profile.dpo_label_smoothing)
    history = train(model, batches, step, steps=profile.dpo_steps, lr=profile.dpo_lr,
                    warmup_steps=profile.dpo_warmup_steps, weight_decay=profile.weight_decay,
                    max_grad_norm=profile.max_grad_norm, log_every=profile.log_every, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=5 * profile.log_every, seed=profile.seed, desc="DPO", progress=progress)
    save_run(out_dir, model, tokenizer, history, method="dpo", beta=beta)
    return history
