"""Training on rankings: RRHF and PRO, through the shared loop.

Both methods read the same data, ``prompt / responses / scores`` (one prompt, several replies, a score each), and
need the same numbers from the model: the summed log-prob and the length of every candidate. They differ only in
the loss (:func:`rrhf_lite.core.losses.rrhf_loss`, :func:`rrhf_lite.core.losses.pro_loss`), so this module has one
collator, one step function and one training function, and the method is the config: :class:`RRHFConfig` or
:class:`PROConfig` (:func:`train_rrhf`, :func:`train_pro`).

**All candidates in one forward pass.** A batch of ``B`` prompts with ``n`` candidates each is flattened into one
padded batch of ``B * n`` sequences; the log-probs are then folded back to ``[B, n]``. Prompts may have different
numbers of candidates: missing slots are padding, marked in a ``valid`` mask, and never enter the loss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from rrhf_lite.core.logprobs import pad_batch, sequence_logprobs, tokenize_pairs
from rrhf_lite.core.loop import TrainConfig, train
from rrhf_lite.core.losses import pro_loss, rrhf_loss
from rrhf_lite.core.validation import report_truncation, rows_of, validate_rankings, validate_tokenizer


def tokenize_rankings(tokenizer, rankings, max_length: int) -> list[dict]:
    """``prompt/responses/scores`` rows -> per row, every candidate tokenised with its response mask.

    Candidates longer than ``max_length`` are cut as :func:`~rrhf_lite.core.logprobs.tokenize_pair` says and counted in
    a warning.
    """
    validate_tokenizer(tokenizer)
    rankings = rows_of(rankings)
    flat = tokenize_pairs(tokenizer, [row["prompt"] for row in rankings for _ in row["responses"]],
                          [r for row in rankings for r in row["responses"]], max_length)
    rows, start = [], 0
    for row in rankings:
        candidates = flat[start:start + len(row["responses"])]
        rows.append({"candidates": candidates, "scores": [float(s) for s in row["scores"]]})
        start += len(row["responses"])
    report_truncation((("responses", i, c) for i, row in enumerate(rows) for c in row["candidates"]), max_length,
                      "rankings")
    return rows


def collate_rankings(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Flatten ``B`` rankings into one right-padded batch of all their candidates, plus ``[B, n]`` rewards/valid."""
    n = max(len(r["candidates"]) for r in rows)
    batch = pad_batch([c for r in rows for c in r["candidates"]], pad_token_id)
    rewards = torch.zeros(len(rows), n)
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        rewards[b, :len(r["scores"])] = torch.tensor(r["scores"])
        valid[b, :len(r["scores"])] = True
    return {**batch, "rewards": rewards, "valid": valid}


def fold(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Put one value per real candidate (flat, in row order) back into ``[B, n]`` slots; padding slots get 0."""
    out = torch.zeros(valid.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(valid, values)


def ranking_step(model, batch: dict, loss_fn) -> tuple[torch.Tensor, dict]:
    """One forward pass over every candidate, then the ranking loss on ``[B, n]`` log-prob sums and lengths."""
    lp = sequence_logprobs(model, batch)
    valid = batch["valid"]
    sums, lengths = fold(lp.sum, valid), fold(lp.count, valid)
    out = loss_fn(sums, lengths, batch["rewards"], valid=valid)
    best = torch.where(valid, batch["rewards"], float("-inf")).argmax(dim=1, keepdim=True)
    mean_logp = sums / lengths.clamp(min=1)
    return out.loss, {"rank_loss": out.rank, "sft_loss": out.sft,
                      "logp_best": mean_logp.gather(1, best).mean(),
                      "logp_all": mean_logp[valid].mean()}


@dataclass(frozen=True)
class RRHFConfig(TrainConfig):
    """RRHF (Yuan et al. 2023): the loop's settings (:class:`~rrhf_lite.core.loop.TrainConfig`) and the loss's two."""

    batch_size: int = 8  # prompts per step, each with all its candidates in the same forward pass
    lr: float = 3e-4  # peak learning rate of the fresh LoRA adapters
    length_penalty: float = 1.0  # p_i = log pi(y_i) / |y_i|**this (1 = mean log-prob, as in the paper)
    sft_weight: float = 1.0  # weight of the SFT term on the best candidate (the paper uses 1)

    def loss(self):
        """:func:`rrhf_lite.core.losses.rrhf_loss` with this config's settings."""
        return functools.partial(rrhf_loss, length_penalty=self.length_penalty, sft_weight=self.sft_weight)


@dataclass(frozen=True)
class PROConfig(TrainConfig):
    """PRO (Song et al. 2023): the loop's settings (:class:`~rrhf_lite.core.loop.TrainConfig`) and the loss's three."""

    batch_size: int = 8  # prompts per step, each with all its candidates in the same forward pass
    lr: float = 2e-4  # peak learning rate of the fresh LoRA adapters
    sft_weight: float = 0.05  # weight of the SFT term (the official HH script uses 0.05)
    sft_scale: str = "official"  # "official" = summed NLL x weight x (n-1)^2 as DAMO-ConvAI/PRO; or "per_token"
    use_temperature: bool = True  # scale each contrast by reward gaps (the paper's dynamic temperature)

    def loss(self):
        """:func:`rrhf_lite.core.losses.pro_loss` with this config's settings."""
        return functools.partial(pro_loss, use_temperature=self.use_temperature, sft_weight=self.sft_weight,
                                 sft_scale=self.sft_scale)


def shorten_rankings(rankings, length: int):
    """Keep ``length`` candidates per prompt: the best, the worst, and evenly spaced ones between (by score).

    ``length=2`` turns a ranking into the (best, worst) pair; PRO's paper compares such pairs with longer rankings.
    """
    if length < 2:
        raise ValueError(f"a ranking needs at least 2 candidates, got length={length}")
    validate_rankings(rankings, allow_empty_responses=True)

    def shorten(row):
        order = sorted(range(len(row["scores"])), key=lambda i: -row["scores"][i])
        if len(order) > length:
            order = [order[round(k * (len(order) - 1) / (length - 1))] for k in range(length)]
        return {key: [row[key][i] for i in order] for key in ("responses", "scores", "sources", "gold_scores")
                if key in row}

    return rankings.map(shorten)


def ranking_batches(tokenizer, rankings, config: RRHFConfig | PROConfig):
    """The rankings tokenised, shuffled (seeded) and flattened into batches of ``config.batch_size`` prompts."""
    rows = tokenize_rankings(tokenizer, rankings, config.max_length)
    return config.shuffled(rows, functools.partial(collate_rankings, pad_token_id=tokenizer.pad_token_id))


def train_ranking(model, tokenizer, rankings, config: RRHFConfig | PROConfig, *, checkpoint_dir: Path | None = None,
                  progress: bool = True) -> list[dict]:
    """Train ``model`` (a causal LM with trainable LoRA adapters, e.g. from
    :func:`rrhf_lite.core.models.load_for_training`) on ``rankings`` with the loss ``config`` names (RRHF or PRO);
    returns the history. The model is trained in place.

    The rankings are checked first (:func:`rrhf_lite.core.validation.validate_rankings`): every row needs a prompt, at
    least 2 replies and one finite score per reply; empty replies are kept, with a warning.
    """
    if not isinstance(config, (RRHFConfig, PROConfig)):
        raise TypeError(f"config must be an RRHFConfig or a PROConfig, got {type(config).__name__}")
    validate_rankings(rankings, allow_empty_responses=True)
    batches = ranking_batches(tokenizer, rankings, config)
    return train(model, batches, functools.partial(ranking_step, loss_fn=config.loss()), **config.loop_args(),
                 checkpoint_dir=checkpoint_dir, desc="RRHF" if isinstance(config, RRHFConfig) else "PRO",
                 progress=progress)


def train_rrhf(model, tokenizer, rankings, config: RRHFConfig = RRHFConfig(), **kwargs) -> list[dict]:
    """RRHF on ``prompt/responses/scores`` rankings: :func:`train_ranking` with an :class:`RRHFConfig`."""
    return train_ranking(model, tokenizer, rankings, config, **kwargs)


def train_pro(model, tokenizer, rankings, config: PROConfig = PROConfig(), **kwargs) -> list[dict]:
    """PRO on ``prompt/responses/scores`` rankings: :func:`train_ranking` with a :class:`PROConfig`."""
    return train_ranking(model, tokenizer, rankings, config, **kwargs)
