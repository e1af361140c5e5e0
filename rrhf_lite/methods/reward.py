"""The reward model: a scalar score for (prompt, reply), learned from pairwise preferences.

The model is the SFT model with a linear head that reads the hidden state of the last real token (the
``<|eos|>`` that closes the reply) and outputs one number, ``r(x, y)``: ``AutoModelForSequenceClassification``
with one label does exactly this. It is trained with the Bradley-Terry loss
(:func:`rrhf_lite.core.losses.reward_loss`): make ``r(x, y_chosen)`` exceed ``r(x, y_rejected)``.

Three things to know about a reward model before optimising against it:

* **accuracy** on held-out comparisons, next to the ceiling label noise allows
  (:func:`rrhf_lite.course.world.label_ceiling`);
* **calibration**: when it says ``P(a > b) = sigmoid(r_a - r_b) = 0.8``, is ``a`` preferred 80% of the time?
  (Bai et al. 2022 found preference models well calibrated; see :func:`rrhf_lite.methods.evaluate.calibration`);
* **scale**: rewards are shifted and scaled to mean 0 and standard deviation 1 on the policy's own samples
  before RL (Huang et al., "N implementation details"), so that KL penalties mean the same thing across runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from rrhf_lite.core.logprobs import (
    in_given_order,
    length_batches,
    length_grouped,
    pad_batch,
    tokenize_pairs,
    tokenize_preference_pairs,
)
from rrhf_lite.core.loop import TrainConfig, train
from rrhf_lite.core.losses import reward_loss
from rrhf_lite.core.models import load_for_training
from rrhf_lite.core.validation import report_truncation, rows_of, validate_preference_dataset, validate_tokenizer


def tokenize_comparisons(tokenizer, dataset, max_length: int) -> list[dict]:
    """``prompt/chosen/rejected`` rows -> token ids of ``prompt + reply + <eos>`` for both replies.

    Rows longer than ``max_length`` are cut as :func:`~rrhf_lite.core.logprobs.tokenize_pair` says and counted in a
    warning.
    """
    validate_tokenizer(tokenizer)
    encoded = tokenize_preference_pairs(tokenizer, dataset, max_length)
    report_truncation(((c, i, row[c]) for i, row in enumerate(encoded) for c in ("chosen", "rejected")), max_length,
                      "reward-model comparisons")
    return [{c: row[c]["input_ids"] for c in ("chosen", "rejected")} for row in encoded]


def pad_sequences(sequences: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token lists into ``input_ids`` and ``attention_mask`` (:func:`rrhf_lite.core.logprobs.pad_batch`)."""
    return pad_batch([{"input_ids": s} for s in sequences], pad_token_id)


def collate_comparisons(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """All chosen replies, then all rejected ones, in one batch: one forward pass scores both."""
    return pad_sequences([r["chosen"] for r in rows] + [r["rejected"] for r in rows], pad_token_id)


def rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``r(x, y)`` for every sequence of a right-padded batch: the head's output at the last non-padding token.
    Rows run in two groups of similar length where that spares much padding
    (:func:`~rrhf_lite.core.logprobs.length_grouped`)."""
    return length_grouped(lambda input_ids, attention_mask: model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.squeeze(-1).float(), batch)


def reward_step(model, batch: dict, center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry loss on a batch from :func:`collate_comparisons`, with accuracy and margin as metrics."""
    chosen, rejected = rewards(model, batch).chunk(2)
    loss = reward_loss(chosen, rejected, center_coef=center_coef)
    return loss, {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], replies: list[str], max_length: int,
          batch_size: int = 64) -> torch.Tensor:
    """Reward of each (prompt, reply), without gradients, in batches of similar length
    (:func:`rrhf_lite.core.logprobs.length_batches`: less padding to compute)."""
    was_training = model.training
    model.eval()
    seqs = [row["input_ids"] for row in tokenize_pairs(tokenizer, prompts, replies, max_length)]
    batches, out = length_batches([len(s) for s in seqs], batch_size), []
    for rows in batches:
        batch = pad_sequences([seqs[i] for i in rows], tokenizer.pad_token_id)
        out.append(rewards(model, {k: v.to(model.device) for k, v in batch.items()}).cpu())
    model.train(was_training)
    return in_given_order(batches, out)


def score_pairs(model, tokenizer, pairs, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected reply of every comparison in ``pairs``."""
    rows = rows_of(pairs)  # a Dataset, a dict of columns or a list of rows
    prompts = [r["prompt"] for r in rows]
    chosen = score(model, tokenizer, prompts, [r["chosen"] for r in rows], max_length)
    rejected = score(model, tokenizer, prompts, [r["rejected"] for r in rows], max_length)
    return chosen, rejected


@dataclass(frozen=True)
class RewardConfig(TrainConfig):
    """A Bradley-Terry reward model: the loop's settings (:class:`~rrhf_lite.core.loop.TrainConfig`) and two more."""

    lr: float = 1e-4  # peak learning rate of the LoRA adapters and the fresh scalar head
    center_coef: float = 0.01  # weight of the (r_c + r_r)^2 term that keeps rewards centred near 0
    eval_every: int = 100  # steps between held-out accuracy evaluations (a multiple of log_every); 0: never
    checkpoint_every: int = 100  # with a checkpoint_dir, save every this many steps


def comparison_batches(tokenizer, pairs, config: RewardConfig):
    """The comparisons tokenised, shuffled (seeded) and collated (all chosen, then all rejected) in batches."""
    rows = tokenize_comparisons(tokenizer, pairs, config.max_length)
    return config.shuffled(rows, functools.partial(collate_comparisons, pad_token_id=tokenizer.pad_token_id))


def train_reward_model(model, tokenizer, train_pairs, config: RewardConfig = RewardConfig(), *, eval_pairs=None,
                       checkpoint_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` (a sequence classifier with one label and trainable LoRA adapters, e.g.
    ``load_for_training(path, head="reward")``) on ``train_pairs`` (``prompt/chosen/rejected``); returns the history.

    With ``eval_pairs``, held-out accuracy is evaluated every ``config.eval_every`` steps and after the last one (the
    history's ``eval_accuracy``). Both datasets are checked first
    (:func:`rrhf_lite.core.validation.validate_preference_dataset`; empty replies are kept, with a warning).
    """
    validate_preference_dataset(train_pairs, allow_empty_responses=True)
    if eval_pairs is not None:
        validate_preference_dataset(eval_pairs, allow_empty_responses=True)
    batches = comparison_batches(tokenizer, train_pairs, config)

    def held_out_accuracy(m) -> dict:
        chosen, rejected = score_pairs(m, tokenizer, eval_pairs, config.max_length)
        return {"accuracy": (chosen > rejected).float().mean().item()}

    return train(model, batches, functools.partial(reward_step, center_coef=config.center_coef),
                 **config.loop_args(), eval_fn=None if eval_pairs is None else held_out_accuracy,
                 eval_every=config.eval_every, checkpoint_dir=checkpoint_dir, desc="reward model", progress=progress)


def load_reward_model(init_path, adapter_dir, config):
    """The trained reward model (``init_path`` with the adapter and head in ``adapter_dir``), frozen, for scoring.
    ``config``: a :class:`~rrhf_lite.core.models.ModelConfig` (or a profile). Returns ``(model, tokenizer)``."""
    model, tokenizer = load_for_training(init_path, config, head="reward", adapter=adapter_dir, trainable=False)
    return model.eval(), tokenizer


def normalisation(rewards_on_policy_samples: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of rewards on the policy's samples: ``(r - mean) / std`` has mean 0, std 1."""
    return {"mean": rewards_on_policy_samples.mean().item(), "std": rewards_on_policy_samples.std().item()}


def normalise(rewards_: torch.Tensor, stats: dict[str, float]) -> torch.Tensor:
    """Shift and scale rewards with the statistics from :func:`normalisation`."""
    return (rewards_ - stats["mean"]) / stats["std"]


def normalised_scorer(model, tokenizer, stats: dict[str, float], max_length: int):
    """``score_fn(prompts, replies) -> [B]`` normalised rewards (a CPU tensor): the reward model as a function."""

    def score_fn(prompts: list[str], replies: list[str]) -> torch.Tensor:
        return normalise(score(model, tokenizer, prompts, replies, max_length), stats)

    return score_fn
