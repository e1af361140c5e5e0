"""GRPO and RLOO: reinforcement learning without a critic, on groups of replies to the same prompt.

RRHF (lesson 04) already samples k replies per prompt and ranks them by reward. GRPO and RLOO take the same group and
turn its k rewards into policy-gradient weights, so they need no value head:

* **GRPO** (Shao et al. 2024, DeepSeekMath): each reply's advantage is its reward standardised within the group,
  ``(r_i - mean) / std`` (:func:`rrhf_lite.core.losses.group_advantages`), given to every one of its tokens; the update
  is PPO's clipped ratio per token, averaged over each reply's tokens and then over replies, with the KL to the
  reference as a *loss* term (the k3 estimator), not in the reward (:func:`rrhf_lite.core.losses.grpo_loss`). The
  paper's settings are available (``scale_rewards=True``, ``normalisation="per_reply"``, ``beta=0.04``); so are Dr.
  GRPO's (Liu et al. 2025: ``scale_rewards=False``, ``normalisation="constant"``), which remove a bias toward short
  correct and long wrong replies.
* **RLOO** (Ahmadian et al. 2024): the whole reply is one action; REINFORCE with the mean reward of the *other* k - 1
  replies as the baseline, and the KL penalty folded into each reply's reward, ``R = r - beta * KL``
  (:func:`rrhf_lite.core.losses.rloo_loss`). One gradient step per rollout, as in the paper; its gradient is summed
  over forward passes of ``prompts_per_step`` prompts, so that a large rollout fits in memory.

Both use one base model: the policy is a causal LM with LoRA adapters, the reference the same model with its adapters
switched off (``model.disable_adapter()``), as PPO does (:mod:`rrhf_lite.methods.ppo`, whose rollout details they
share: sampling from exactly softmax(logits / T), log-probs of the sampled token ids at the same T, a fixed score for
replies that never end). The reward is any function ``reward_fn(prompts, replies) -> scores``: a reward model, a
judge, a rule (a verifier, as in RLVR: Lambert et al. 2024).

Departures from the papers, where this package's small models and CPU budget ask for them: groups of 4 replies (the
GRPO paper uses 64, RLOO's 2 and 4), a linearly decaying learning rate, LoRA instead of full fine-tuning, and the
gradient clipped to ``max_grad_norm`` like every other trainer here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rrhf_lite.core.logprobs import sampled_batch, sequence_logprobs
from rrhf_lite.core.loop import guarded_step, load_checkpoint, read_checkpoint, save_checkpoint
from rrhf_lite.core.losses import GRPO_NORMALISATIONS, group_advantages, grpo_loss, rloo_loss
from rrhf_lite.core.sampling import generate_tokens
from rrhf_lite.methods.ppo import fitting_prompts, score_replies, take_rows, update_stopped, use_plain_sampling

METHODS = ("grpo", "rloo")


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO (Shao et al. 2024), and RLOO (Ahmadian et al. 2024) with ``method="rloo"``: every number of a run."""

    method: str = "grpo"  # "grpo" (clipped ratio, group-standardised advantage) or "rloo" (leave-one-out REINFORCE)
    iterations: int = 40  # rounds of (sample a group per prompt, score it, update)
    prompts_per_iteration: int = 16  # prompts per rollout; each gets group_size replies
    group_size: int = 4  # replies per prompt (G in GRPO, k in RLOO)
    epochs: int = 1  # GRPO: passes over each rollout (1: the ratio is 1 at the first step, the clip a safeguard)
    prompts_per_step: int = 4  # GRPO: prompts (with all their replies) per gradient step; RLOO: per forward pass
    lr: float = 5e-4  # peak learning rate of the LoRA adapters (decays linearly to 0 over the run)
    beta: float = 0.04  # KL coefficient: GRPO's loss term (the paper: 0.04), RLOO's reward penalty
    clip_range: float = 0.2  # GRPO: epsilon of the clipped ratio
    scale_rewards: bool = True  # GRPO: divide by the group's std (the paper); False: Dr. GRPO
    normalisation: str = "per_reply"  # GRPO: "per_reply" token means (the paper) or "constant" (Dr. GRPO)
    no_eos_penalty: float = -1.0  # score given instead of the reward function's to replies that never end
    temperature: float = 0.7  # sampling temperature of the rollouts, and of every log-prob computed
    max_new_tokens: int = 64  # longest sampled reply in tokens (also Dr. GRPO's constant normaliser)
    max_length: int = 512  # longest prompt + reply; prompts that leave no room for max_new_tokens are dropped
    generation_batch_size: int = 64  # prompts per generate() call
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping threshold
    checkpoint_every: int = 5  # with a checkpoint_dir, save every this many iterations
    seed: int = 0  # iteration i samples and shuffles with seed + i


@dataclass
class GroupRollout:
    """``prompts_per_iteration`` prompts with ``group_size`` replies each, in prompt order (a prompt's replies are
    consecutive rows), and what the update needs about them."""

    prompts: list[str]  # one per reply
    replies: list[str]
    reply_ids: list[list[int]]
    ended: torch.Tensor  # [N] bool
    batch: dict[str, torch.Tensor]  # prompt + reply token ids, right-padded
    mask: torch.Tensor  # [N, T - 1] 1 where position t predicts a reply token
    logprobs: torch.Tensor  # [N, T - 1] log pi_old at the sampling temperature (NaN until the first update's rows are
    # recorded by group_step, see collect_groups)
    ref_logprobs: torch.Tensor  # [N, T - 1] log pi_ref (adapters off)
    rm_scores: torch.Tensor  # [N] the reward function's scores
    scores: torch.Tensor  # [N] what is trained on: the score, or the penalty for a reply that never ended


@torch.no_grad()
def collect_groups(model, tokenizer, reward_fn, prompts: list[str], config: GRPOConfig, *, seed: int,
                   first_step_rows: torch.Tensor | None = None) -> GroupRollout:
    """Sample ``group_size`` replies to each prompt, then record their log-probs under the policy and the reference
    (in chunks of ``prompts_per_step`` prompts) and score them.

    ``first_step_rows``: replies that the first update of the rollout takes. Their log-probs under the sampling policy
    are not computed here (their ``logprobs`` rows are NaN): that update computes them anyway, before the policy
    moves, and :func:`group_step` records them then. RLOO, one step per rollout, saves the whole pass."""
    repeated = [p for p in prompts for _ in range(config.group_size)]
    generation = generate_tokens(model, tokenizer, repeated, max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, top_p=1.0, batch_size=config.generation_batch_size,
                                 seed=seed)
    batch = {k: v.to(model.device) for k, v in sampled_batch(tokenizer, repeated, generation.reply_ids).items()}
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    chunk_rows = config.prompts_per_step * config.group_size
    for start in range(0, len(repeated), chunk_rows):
        chunk = {k: v[start:start + chunk_rows] for k, v in batch.items()}
        with model.disable_adapter():
            reference = sequence_logprobs(model, chunk, config.temperature)
        parts.setdefault("mask", []).append(reference.mask)
        parts.setdefault("ref_logprobs", []).append(reference.token_logps)
    mask, ref_logprobs = torch.cat(parts["mask"]), torch.cat(parts["ref_logprobs"])
    logprobs = torch.full_like(ref_logprobs, float("nan"))
    needed = torch.ones(len(repeated), dtype=torch.bool, device=mask.device)
    if first_step_rows is not None:
        needed[first_step_rows.to(mask.device)] = False
    needed_rows = needed.nonzero().squeeze(1)
    for rows in needed_rows.split(chunk_rows) if len(needed_rows) else ():
        chunk = {k: v[rows] for k, v in batch.items()}
        logprobs[rows] = sequence_logprobs(model, chunk, config.temperature).token_logps
    model.train(was_training)
    replies = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generation.reply_ids]
    ended = torch.tensor(generation.ended)
    rm_scores, scores = score_replies(reward_fn, repeated, replies, ended, config.no_eos_penalty)
    return GroupRollout(prompts=repeated, replies=replies, reply_ids=generation.reply_ids, ended=ended, batch=batch,
                        rm_scores=rm_scores, scores=scores.to(model.device), mask=mask, logprobs=logprobs,
                        ref_logprobs=ref_logprobs)


def group_rows(group_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    """The rollout rows of the replies to prompts ``group_ids`` (a prompt's replies are consecutive rows)."""
    return (group_ids[:, None] * group_size + torch.arange(group_size)).reshape(-1)


def group_step(model, rollout: GroupRollout, advantages: torch.Tensor, rows: torch.Tensor,
               config: GRPOConfig) -> tuple[torch.Tensor, dict]:
    """The loss on the replies ``rows`` of the rollout (whole groups for RLOO) and what to log about it."""
    batch, (mask, old, ref) = take_rows(rollout, rows, rollout.mask, rollout.logprobs, rollout.ref_logprobs)
    lp = sequence_logprobs(model, batch, config.temperature)
    fresh = old.isnan().any(1)  # rows of the rollout's first update: the policy is still the one that sampled them
    if fresh.any():
        old = torch.where(fresh[:, None], lp.token_logps.detach(), old)
        record = rows.to(rollout.logprobs.device)[fresh.to(rollout.logprobs.device)]
        rollout.logprobs[record] = 0.0
        rollout.logprobs[record, :old.shape[1]] = old[fresh]
    if config.method == "grpo":
        out = grpo_loss(lp.token_logps, old, ref, advantages[rows.to(advantages.device)], mask,
                        clip_range=config.clip_range, beta=config.beta, normalisation=config.normalisation,
                        max_tokens=config.max_new_tokens)
        return out.loss, {"clip_fraction": out.clip_fraction, "kl_term": out.kl}
    groups = len(rows) // config.group_size
    kl = ((old - ref) * mask).sum(1)  # each reply's summed log pi_old - log pi_ref: the KL in its reward
    loss = rloo_loss(lp.sum.view(groups, -1), rollout.scores[rows.to(rollout.scores.device)].view(groups, -1),
                     kl.view(groups, -1), beta=config.beta)
    return loss, {}


def train_grpo(model, tokenizer, reward_fn, prompts: list[str], config: GRPOConfig = GRPOConfig(), *, gold_fn=None,
               checkpoint_dir=None, progress: bool = True) -> list[dict]:
    """Train ``model`` (a causal LM with fresh LoRA adapters; the adapters switched off are the reference) with GRPO
    (or RLOO: ``config.method="rloo"``) against ``reward_fn(prompts, replies) -> scores``; returns the history, one
    dict per iteration. ``prompts`` are used in order (repeated if fewer than ``iterations * prompts_per_iteration``);
    ``gold_fn``, if given, is only recorded (``gold_reward``). With ``checkpoint_dir``, an interrupted run resumes and
    ends with the same numbers."""
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
    if config.normalisation not in GRPO_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {GRPO_NORMALISATIONS}, got {config.normalisation!r}")
    if config.prompts_per_iteration % config.prompts_per_step:
        raise ValueError(f"prompts_per_step ({config.prompts_per_step}) must divide prompts_per_iteration "
                         f"({config.prompts_per_iteration}): every step takes whole groups")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(f"{config.method.upper()} trains on one process only: its groups are sampled and scored "
                           f"whole")
    use_plain_sampling(model)
    n, iterations = config.prompts_per_iteration, config.iterations
    prompts = fitting_prompts(tokenizer, list(prompts), n * iterations, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / iterations)  # linear decay to 0

    start, history = 0, []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    state = read_checkpoint(checkpoint_dir, model, iterations) if checkpoint_dir else None
    if state is not None:
        start, history = load_checkpoint(checkpoint_dir, model, optimizer, schedule, state)
        print(f"{config.method.upper()}: resuming after iteration {start} ({checkpoint_dir.name})")
    bar = tqdm(range(start, iterations), desc=config.method.upper(), disable=not progress, initial=start,
               total=iterations)
    for iteration in bar:
        seed = config.seed + iteration
        generator = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(n, generator=generator)  # whole groups, shuffled, for every epoch
                  for _ in range(config.epochs if config.method == "grpo" else 1)]
        first = orders[0] if config.method == "rloo" else orders[0][:config.prompts_per_step]  # the first update's
        rollout = collect_groups(model, tokenizer, reward_fn, prompts[iteration * n:(iteration + 1) * n], config,
                                 seed=seed, first_step_rows=group_rows(first, config.group_size))
        groups = rollout.scores.view(n, config.group_size)
        advantages = group_advantages(groups, scale=config.scale_rewards).view(-1)
        lr = schedule.get_last_lr()[0]
        model.train()
        logged: dict[str, list[float]] = {}
        for epoch, order in enumerate(orders):
            chunks = order.split(config.prompts_per_step)
            # GRPO: one optimiser step per chunk. RLOO: one step per rollout (the paper), its gradient summed over the
            # chunks, each chunk's mean loss weighted by its share of the groups (memory, not the maths, chunks it)
            steps = [[c] for c in chunks] if config.method == "grpo" else [list(chunks)]
            for step_chunks in steps:
                optimizer.zero_grad(set_to_none=True)
                stop = functools.partial(update_stopped, f"iteration {iteration + 1} (epoch {epoch + 1})",
                                         method=config.method.upper())
                for k, group_ids in enumerate(step_chunks):
                    rows = group_rows(group_ids, config.group_size)
                    loss, metrics = group_step(model, rollout, advantages, rows, config)
                    for key, value in {"loss": loss, **metrics}.items():
                        logged.setdefault(key, []).append(float(value.detach() if torch.is_tensor(value) else value))
                    weighted = loss * len(group_ids) / sum(len(c) for c in step_chunks)
                    if k < len(step_chunks) - 1:  # accumulate; the last chunk's call checks, clips and steps
                        if not torch.isfinite(loss):
                            raise stop("the loss", loss.item())
                        weighted.backward()
                        continue
                    grad_norm = guarded_step(weighted, params, optimizer, max_grad_norm=config.max_grad_norm,
                                             stop=stop)
                logged.setdefault("grad_norm", []).append(grad_norm)
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        model.eval()
        kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.mask).sum(1)
        gold = None if gold_fn is None else sum(gold_fn(rollout.prompts, rollout.replies)) / len(rollout.replies)
        row = {"iteration": iteration + 1, "proxy_reward": rollout.rm_scores.mean().item(),
               "score": rollout.scores.mean().item(), "gold_reward": gold, "kl": kl.mean().item(),
               "ended": rollout.ended.float().mean().item(),
               "reply_tokens": sum(len(ids) for ids in rollout.reply_ids) / len(rollout.reply_ids),
               "zero_advantage_groups": (groups.std(dim=1) == 0).float().mean().item(), "lr": lr,
               **{k: sum(v) / len(v) for k, v in logged.items()}}
        history.append(row)
        bar.set_postfix(score=f"{row['score']:.2f}", kl=f"{row['kl']:.2f}")
        done = iteration + 1
        if checkpoint_dir and config.checkpoint_every and done % config.checkpoint_every == 0 and done < iterations:
            save_checkpoint(checkpoint_dir, model, optimizer, schedule, done, history)
    return history


def train_rloo(model, tokenizer, reward_fn, prompts: list[str], config: GRPOConfig = GRPOConfig(method="rloo"),
               **kwargs) -> list[dict]:
    """RLOO: :func:`train_grpo` with ``method="rloo"`` (the config's other GRPO-only fields are unused)."""
    if config.method != "rloo":
        raise ValueError(f"train_rloo trains RLOO: pass a config with method='rloo', got {config.method!r}")
    return train_grpo(model, tokenizer, reward_fn, prompts, config, **kwargs)
