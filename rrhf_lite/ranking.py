"""Training on rankings: RRHF and PRO, through the shared loop.

Both methods read the same data, ``prompt / responses / scores`` (one prompt, several replies, a score each), and
need the same numbers from the model: the summed log-prob and the length of every candidate. They differ only in
the loss (:func:`rrhf_lite.losses.rrhf_loss`, :func:`rrhf_lite.losses.pro_loss`), so this module has one collator,
one step function and one training function, and the method is an argument.

**All candidates in one forward pass.** A batch of ``B`` prompts with ``n`` candidates each is flattened into one
padded batch of ``B * n`` sequences; the log-probs are then folded back to ``[B, n]``. Prompts may have different
numbers of candidates: missing slots are padding, marked in a ``valid`` mask, and never enter the loss.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .data import report_truncation, validate_rankings, validate_tokenizer
from .logprobs import pad_batch, sequence_logprobs, tokenize_pairs
from .loop import save_run, train
from .losses import pro_loss, rrhf_loss
from .models import load_for_training

METHODS = ("rrhf", "pro")


def tokenize_rankings(tokenizer, rankings, max_length: int) -> list[dict]:
    """``prompt/responses/scores`` rows -> per row, every candidate tokenised with its response mask.

    Candidates longer than ``max_length`` are cut as :func:`~rrhf_lite.logprobs.tokenize_pair` says and counted in a
    warning.
    """
    validate_tokenizer(tokenizer)
    rankings = list(rankings)
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


def loss_function(profile, method: str):
    """The method's loss with the profile's hyperparameters filled in."""
    if method == "rrhf":
        return functools.partial(rrhf_loss, length_penalty=profile.rrhf_length_penalty,
                                 sft_weight=profile.rrhf_sft_weight)
    if method == "pro":
        return functools.partial(pro_loss, use_temperature=profile.pro_use_temperature,
                                 sft_weight=profile.pro_sft_weight, sft_scale=profile.pro_sft_scale)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


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


def train_ranking(profile, method: str, init_path, rankings, out_dir: Path, checkpoint_dir: Path | None = None,
                  progress: bool = True) -> list[dict]:
    """Train fresh LoRA adapters on ``init_path`` (the SFT model) with RRHF or PRO; save them in ``out_dir``.

    Writes ``out_dir/adapter`` (load it with ``load_for_training(init_path, profile, adapter=...)``) and
    ``out_dir/history.json``. The rankings are checked first (:func:`rrhf_lite.data.validate_rankings`): every row
    needs a prompt, at least 2 replies and one finite score per reply; empty replies are kept, with a warning.
    """
    validate_rankings(rankings, allow_empty_responses=True)
    out_dir = Path(out_dir)
    loss_fn = loss_function(profile, method)
    model, tokenizer = load_for_training(init_path, profile, head="lm")
    rows = tokenize_rankings(tokenizer, rankings, profile.max_length)
    batches = torch.utils.data.DataLoader(
        rows, batch_size=profile.ranking_batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(profile.seed),
        collate_fn=functools.partial(collate_rankings, pad_token_id=tokenizer.pad_token_id))
    history = train(model, batches, functools.partial(ranking_step, loss_fn=loss_fn),
                    steps=profile.ranking_steps, lr=getattr(profile, f"{method}_lr"),
                    warmup_steps=profile.ranking_warmup_steps,
                    weight_decay=profile.weight_decay, max_grad_norm=profile.max_grad_norm,
                    log_every=profile.log_every, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=5 * profile.log_every, seed=profile.seed, desc=method.upper(), progress=progress)
    save_run(out_dir, model, tokenizer, history, method=method)
    return history
