"""PPO for language models: RLHF as InstructGPT did it, small enough to read in one sitting.

The reward model of stage 02 gives one number for a whole reply. PPO (Schulman et al. 2017), as Ziegler et al.
(2019) and Ouyang et al. (2022) apply it to language models, turns that number into a learning signal for every
token. The policy is the SFT model with fresh LoRA adapters; one *iteration* of training is:

1. **Rollout.** Sample one reply per training prompt from the current policy at the sampling temperature T, and
   record, for every reply token, its log-prob under the policy (``logp``), under the frozen SFT model (the
   *reference*, ``ref_logp``) and the value head's prediction ``V_t``, all with the weights the samples came from.
2. **Score.** The reward model scores each (prompt, reply), normalised to mean 0 and std 1 on SFT samples. A reply
   that never emitted ``<|eos|>`` was cut off at ``max_new_tokens``; it gets a fixed penalty instead of a score.
3. **Per-token rewards.** Every reply token pays for drifting away from the reference, and the last token also
   receives the score::

       r_t = -beta * KL_t  +  [t is the last reply token] * score,      KL_t = logp_t - ref_logp_t  ("k1")

   Summed over a reply this is ``score - beta * KL(pi || pi_ref)``: the RL objective with a KL penalty that keeps
   the policy near the SFT model, where the reward model's judgement can still be trusted.
4. **Advantages.** GAE (gamma = 1, lambda = 0.95) turns rewards and values into an advantage per token (how much
   better things went after choosing this token than the value head expected) and a return per token (the value
   head's regression target). Advantages are whitened over the rollout: mean 0, std 1.
5. **Update.** ``epochs`` passes over the rollout in shuffled minibatches; each step minimises the clipped
   policy loss + ``vf_coef`` * the clipped value loss (:mod:`rrhf_lite.core.losses`), where "old" means the log-probs
   and values recorded in step 1. The clipping is what allows several gradient steps on one rollout.
6. **Adapt beta** (``adaptive_kl``): raise beta when the rollout's KL is above ``kl_target``, lower it when below.

The implementation details that matter (Huang et al. 2024, "The N implementation details of RLHF with PPO"), and
where each one lives here:

* **Sample and score at the same temperature.** The rollout is drawn from softmax(logits / T), so every log-prob
  (old, new and reference) divides the logits by the same T (:func:`policy_forward`, :func:`reference_logprobs`);
  with T = 1 in the log-probs, the ratio pi / pi_old would not be 1 even before the first update. For the same
  reason the sampler must draw from exactly that softmax: no top-k, no top-p, no repetition penalty
  (:func:`use_plain_sampling`).
* **Log-probs of the sampled token ids.** The rollout batch is the prompt's token ids followed by the generated
  ids, not the decoded text tokenised again (which can split differently).
* **Pad is not eos, and unfinished replies are penalised** (``no_eos_penalty``).
* **Normalised rewards**, a **value head initialised from the reward model** (or zero), **whitened advantages**,
  **no dropout**, AdamW with eps 1e-5 and a learning rate that decays linearly to 0 over the run.

Memory layout: one base model plays three parts.

* *policy*: the SFT model + fresh LoRA adapters, the only weights (with the value head) that train;
* *reference*: the same model inside ``with model.disable_adapter():``, which is exactly the SFT model because
  the base weights are frozen; no second copy in memory;
* *value*: a linear head on the policy's last hidden state (:class:`PolicyAndValue`): policy and value share the
  whole network, so the value loss also trains the adapters (``vf_coef`` keeps it from dominating). The N-details
  recipe uses a separate value network; sharing is what fits a 0.5B model with PPO on a free T4.

The reward model is a second model: the SFT model with the reward adapter and head of stage 02, frozen.

Dropout must be off (``lora_dropout = 0`` in the profiles, and Llama/Qwen have no other dropout): with dropout, the
log-probs of the update would differ from the rollout's even before any weight changed, so the ratio, the clip
fraction and approx_kl would measure noise, and the KL penalty would be paid on random masks.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from rrhf_lite.core.logprobs import (
    last_hidden_states,
    response_token_logprobs,
    sampled_batch,
    sequence_logprobs,
)
from rrhf_lite.core.loop import guarded_step, load_checkpoint, read_checkpoint, save_checkpoint
from rrhf_lite.core.losses import gae, kl_penalty, ppo_policy_loss, ppo_value_loss, whiten
from rrhf_lite.core.models import reproducible_saved_files
from rrhf_lite.core.sampling import generate_tokens


@dataclass(frozen=True)
class PPOConfig:
    """PPO with a KL penalty to the reference, for language models; every number of the recipe above."""

    iterations: int = 40  # rounds of (sample a rollout, score it, epochs of updates)
    rollout_prompts: int = 64  # prompts per rollout, one sampled reply each
    epochs: int = 3  # passes over each rollout
    minibatch_size: int = 16  # rollout replies per gradient step
    lr: float = 5e-4  # peak learning rate of the policy adapters and the value head (decays linearly to 0)
    clip_range: float = 0.2  # epsilon of the clipped policy objective (Schulman et al. 2017)
    value_clip_range: float = 0.2  # clipping of value updates around the rollout's values
    vf_coef: float = 0.5  # weight of the value loss next to the policy loss
    gamma: float = 1.0  # discount; 1 = no discounting within a reply (Huang et al.)
    lam: float = 0.95  # GAE lambda
    kl_coef: float = 0.5  # beta of the per-token KL penalty -beta*(log pi - log pi_ref); start value if adaptive
    kl_estimator: str = "k1"  # per-token KL estimate in the reward: "k1" (log-ratio) or "k3" (always >= 0)
    adaptive_kl: bool = True  # adapt beta towards kl_target (Ziegler et al. 2019); False keeps it fixed
    kl_target: float = 0.5  # target KL per reply (nats) of the adaptive controller
    kl_horizon: int = 256  # controller horizon in replies: beta moves at most 20% x replies / horizon per rollout
    no_eos_penalty: float = -1.0  # score given instead of the reward function's to replies that never end
    temperature: float = 0.7  # sampling temperature of the rollouts, and of every log-prob PPO computes
    max_new_tokens: int = 64  # longest sampled reply in tokens
    max_length: int = 512  # longest prompt + reply; prompts that leave no room for max_new_tokens are dropped
    generation_batch_size: int = 64  # prompts per generate() call
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping threshold
    snapshot_every: int = 0  # with a snapshot_dir, keep the policy's adapter every this many iterations (0: never)
    checkpoint_every: int = 5  # with a checkpoint_dir, save every this many iterations
    seed: int = 0  # iteration i samples and shuffles with seed + i

# --------------------------------------------------------------------------------------------------------------------
# The models: policy + value head on one trunk, the reference by disabling the adapters, the reward model apart.
# --------------------------------------------------------------------------------------------------------------------


class PolicyAndValue(nn.Module):
    """The policy (a peft LoRA causal LM) and a value head on its last hidden state: one forward pass, both outputs.

    ``value_head`` is ``nn.Linear(hidden_size, 1)`` in float32 (also on 16-bit and 4-bit profiles, where the
    hidden states are cast up first): value targets are rewards of order 1 and need the precision.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1, device=policy.device)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's last hidden states ``[B, T, hidden]`` (what its LM head reads; see
        :func:`rrhf_lite.core.logprobs.response_token_logprobs`) and values ``[B, T]`` (``V_t``: the value of the text
        up to and including t)."""
        hidden = last_hidden_states(self.policy, batch)
        return hidden, self.value_head(hidden.float()).squeeze(-1)


def reward_head_weight(reward_model) -> torch.Tensor:
    """The ``[1, hidden]`` weight of the trained scalar head of a reward model from :func:`load_reward_model`.

    peft keeps the trained head as a copy beside the original (``modules_to_save``); the active copy is the one the
    reward model uses.
    """
    head = reward_model.get_base_model().score
    if hasattr(head, "modules_to_save"):
        head = head.modules_to_save[head.active_adapters[0]]
    return head.weight.detach().float()


@torch.no_grad()
def init_value_head(value_head: nn.Linear, how: str, reward_model=None, stats: dict | None = None) -> None:
    """Initialise the value head: ``"zero"`` or ``"reward"`` (the course's ``ppo_value_init``).

    * ``"zero"``: V = 0 everywhere at the start. The first advantages are then the raw returns; the value head
      must first learn the scale of the rewards, and its early loss is large.
    * ``"reward"``: copy the reward model's head, rescaled by the normalisation statistics, so that
      ``w . h = (r_head . h - mean) / std`` predicts the *normalised* reward PPO is trained on:
      ``weight = r_head / std``, ``bias = -mean / std``. It is a warm start, not a copy of the reward model: the head
      now reads the policy's hidden states, which differ from the reward model's by the reward adapter. (The
      N-details recipe copies the whole reward network into a separate value network.)
    """
    if how == "zero":
        value_head.weight.zero_()
        value_head.bias.zero_()
    elif how == "reward":
        stats = stats or {"mean": 0.0, "std": 1.0}
        value_head.weight.copy_(reward_head_weight(reward_model) / stats["std"])
        value_head.bias.fill_(-stats["mean"] / stats["std"])
    else:
        raise ValueError(f"ppo_value_init must be 'reward' or 'zero', got {how!r}")


def use_plain_sampling(policy) -> None:
    """Make ``generate`` sample from exactly softmax(logits / T): no top-k, no top-p, no repetition penalty.

    ``transformers`` applies top-k = 50 when nothing says otherwise (``generate(do_sample=True)`` alone does not
    turn it off), and a hub model's ``generation_config.json`` may
    set more (Qwen's chat models: top-k 20, top-p 0.8, a repetition penalty). PPO's log-probs are of the full
    softmax, so a sampler that cuts the tail would draw from another distribution than the one being trained.
    """
    config = policy.get_base_model().generation_config
    config.top_k, config.top_p, config.repetition_penalty = 0, 1.0, 1.0  # top_k = 0 (not None) turns top-k off
    config.do_sample = True  # generate_tokens passes do_sample itself; this only keeps transformers from warning


# --------------------------------------------------------------------------------------------------------------------
# Forward passes. Per-token tensors are [B, T - 1]: position t holds what concerns token t + 1 (the token chosen
# there), as in rrhf_lite.core.logprobs; the mask is 1 where token t + 1 belongs to the reply.
# --------------------------------------------------------------------------------------------------------------------


def policy_forward(model: PolicyAndValue, batch: dict[str, torch.Tensor], temperature: float,
                   with_entropy: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward pass of policy and value. Returns ``(entropy, logprobs, values)``, each ``[B, T - 1]``, 0 outside
    the reply.

    ``logprobs[:, t]`` is the log-prob (at ``temperature``) of token t + 1, the one actually there; ``values[:, t]``
    is the value of the state in which it was chosen; ``entropy`` (None unless ``with_entropy``) is the entropy of
    the policy's next-token distribution there. Logits are computed for the reply positions only, a chunk at a time
    (:func:`rrhf_lite.core.logprobs.head_logprobs`): a ``[B, T, vocab]`` tensor is what fills a GPU first.
    """
    hidden, values = model(batch)
    logprobs, mask, entropy_ = response_token_logprobs(model.policy, hidden, batch, temperature, with_entropy)
    return entropy_, logprobs, values[:, :-1] * mask


@torch.no_grad()
def reference_logprobs(model: PolicyAndValue, batch: dict[str, torch.Tensor], temperature: float):
    """Log-probs under the reference, the SFT model: the policy with its LoRA adapters switched off.

    Returns :class:`rrhf_lite.core.logprobs.SequenceLogprobs`. Valid because the base weights never train.
    """
    with model.policy.disable_adapter():
        return sequence_logprobs(model.policy, batch, temperature)


# --------------------------------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One reply per prompt from the current policy, and everything PPO records about it before updating."""

    prompts: list[str]
    replies: list[str]  # decoded, without special tokens: what the reward model and the gold judge read
    reply_ids: list[list[int]]  # the sampled token ids, up to and including <|eos|>
    ended: torch.Tensor  # [B] bool: the reply emitted <|eos|>
    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, response_mask [B, T]: prompt + reply, right-padded
    mask: torch.Tensor  # [B, T - 1] 1 where position t predicts a reply token
    logprobs: torch.Tensor  # [B, T - 1] log pi_old(token) at the sampling temperature
    ref_logprobs: torch.Tensor  # [B, T - 1] log pi_ref(token) at the sampling temperature
    values: torch.Tensor  # [B, T - 1] V_old
    entropy: torch.Tensor  # [B, T - 1] entropy of pi_old at the sampling temperature
    rm_scores: torch.Tensor  # [B] normalised reward-model scores
    scores: torch.Tensor  # [B] what PPO is trained on: the RM score, or the penalty for a reply without eos


def score_replies(reward_fn, prompts: list[str], replies: list[str], ended: torch.Tensor,
                  no_eos_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rm_scores, scores)``: the reward model's normalised scores, and the same with every reply that never
    emitted ``<|eos|>`` given ``no_eos_penalty`` instead.

    An unfinished reply was cut off by ``max_new_tokens``; the reward model would judge the text so far as if it
    were complete (its input gets an ``<|eos|>`` appended), and rambling past the limit could even pay.
    """
    rm_scores = torch.as_tensor(reward_fn(prompts, replies), dtype=torch.float32)
    return rm_scores, torch.where(ended, rm_scores, torch.tensor(no_eos_penalty))


@torch.no_grad()
def collect_rollout(model: PolicyAndValue, tokenizer, reward_fn, prompts: list[str], config: PPOConfig, *,
                    seed: int) -> Rollout:
    """Sample one reply per prompt, then record log-probs, reference log-probs, values and scores."""
    temperature = config.temperature
    # load_for_training has turned off bitsandbytes' CPU repacking of 4-bit weights: on CPUs with AVX512-BF16, the
    # repacking that generate triggers would otherwise make every later gradient through the 4-bit layers zero.
    generation = generate_tokens(model.policy, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                 temperature=temperature, top_p=1.0, batch_size=config.generation_batch_size,
                                 seed=seed)
    device = model.value_head.weight.device
    batch = {k: v.to(device) for k, v in sampled_batch(tokenizer, prompts, generation.reply_ids).items()}
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), config.minibatch_size):  # a few rows at a time: logits are large
        chunk = {k: v[start:start + config.minibatch_size] for k, v in batch.items()}
        entropy_, logprobs, values = policy_forward(model, chunk, temperature, with_entropy=True)
        ref = reference_logprobs(model, chunk, temperature)
        for key, value in (("mask", ref.mask), ("logprobs", logprobs), ("ref_logprobs", ref.token_logps),
                           ("values", values), ("entropy", entropy_)):
            parts.setdefault(key, []).append(value)
    model.train(was_training)
    replies = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generation.reply_ids]
    ended = torch.tensor(generation.ended)
    rm_scores, scores = score_replies(reward_fn, prompts, replies, ended, config.no_eos_penalty)
    return Rollout(prompts=list(prompts), replies=replies, reply_ids=generation.reply_ids, ended=ended, batch=batch,
                   rm_scores=rm_scores, scores=scores.to(device), **{k: torch.cat(v) for k, v in parts.items()})


# --------------------------------------------------------------------------------------------------------------------
# Rewards, the KL coefficient, advantages
# --------------------------------------------------------------------------------------------------------------------


def token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, *,
                  beta: float, estimator: str = "k1") -> torch.Tensor:
    """Per-token rewards ``[B, T]``: ``-beta * KL_t`` on every reply token, plus the score on the last one.

    ``KL_t`` is :func:`rrhf_lite.core.losses.kl_penalty` (``"k1"``: ``logp - ref_logp``). Positions outside ``mask``
    (prompt and padding) get 0. The mask must mark at least one token per row.
    """
    mask = mask.bool()
    rewards = torch.where(mask, -beta * kl_penalty(logprobs, ref_logprobs, estimator), 0.0)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)  # index of each row's last reply token
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores
    return rewards


@dataclass
class FixedKLController:
    """beta stays where it started."""

    beta: float

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:  # checkpointed like a learning-rate scheduler (rrhf_lite.core.loop.save_checkpoint)
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]


@dataclass
class AdaptiveKLController(FixedKLController):
    """Steer beta so that the KL per reply approaches ``target`` (Ziegler et al. 2019, sec. 2.2)::

        error = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    ``n_steps`` is the number of replies the KL was measured on, and ``horizon`` sets how many replies it takes for
    beta to move: the clip limits each update to a change of at most 20% * n_steps / horizon, so one unusual rollout
    cannot swing it.
    """

    target: float
    horizon: int

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon


def kl_controller(config: PPOConfig) -> FixedKLController | AdaptiveKLController:
    """The controller ``config`` asks for, starting at ``kl_coef``."""
    if config.adaptive_kl:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    return FixedKLController(config.kl_coef)


def advantages_and_returns(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
                           lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE, then whitened advantages (over the whole rollout). The returns are the unwhitened ``A + V``."""
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    return whiten(advantages, mask), returns


# --------------------------------------------------------------------------------------------------------------------
# The update
# --------------------------------------------------------------------------------------------------------------------


def take_rows(rollout, rows: torch.Tensor,
              *per_token: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """A minibatch: the rollout batch's ``rows`` and the same rows of each ``[B, T - 1]`` tensor in ``per_token``,
    all cut to the longest of these rows (the batch is right-padded, so only padding is cut). ``rollout`` is a
    :class:`Rollout` or anything with its ``batch`` and ``mask`` (GRPO's groups, :mod:`rrhf_lite.methods.grpo`)."""
    rows = rows.to(rollout.mask.device)
    batch = {k: v[rows] for k, v in rollout.batch.items()}
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] for k, v in batch.items()}, [t[rows, :width - 1] for t in per_token]


def update_stopped(where: str, what: str, value: float, method: str = "PPO") -> FloatingPointError:
    """The error a non-finite loss or gradient raises in an RL update (``guarded_step``'s ``stop``): PPO's, and GRPO's
    and RLOO's (:mod:`rrhf_lite.methods.grpo`)."""
    return FloatingPointError(f"{method}: {what} is {value} at {where}; stopped before the weights were changed (the "
                              f"last checkpoint is kept; lower the learning rate, or check the rewards)")


def ppo_update(model: PolicyAndValue, optimizer: torch.optim.Optimizer, rollout: Rollout, advantages: torch.Tensor,
               returns: torch.Tensor, config: PPOConfig, *, iteration: int,
               generator: torch.Generator) -> dict[str, float]:
    """``config.epochs`` passes over the rollout in shuffled minibatches; returns the mean of each loss and diagnostic.

    Each step: loss = clipped policy loss + ``vf_coef`` * clipped value loss, gradients clipped to
    ``max_grad_norm``. A non-finite loss or gradient stops training before the step, naming the iteration.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    logged: dict[str, list[float]] = {}
    for epoch in range(config.epochs):
        for rows in torch.randperm(len(rollout.prompts), generator=generator).split(config.minibatch_size):
            batch, (mask, old_logprobs, old_values, advantages_, returns_) = take_rows(
                rollout, rows, rollout.mask, rollout.logprobs, rollout.values, advantages, returns)
            _, logprobs, values = policy_forward(model, batch, config.temperature)
            policy_loss, clip_fraction, approx_kl = ppo_policy_loss(
                logprobs, old_logprobs, advantages_, mask, clip_range=config.clip_range)
            value_loss, value_clip_fraction = ppo_value_loss(
                values, old_values, returns_, mask, clip_range=config.value_clip_range)
            loss = policy_loss + config.vf_coef * value_loss
            optimizer.zero_grad(set_to_none=True)
            grad_norm = guarded_step(loss, params, optimizer, max_grad_norm=config.max_grad_norm,
                                     stop=functools.partial(update_stopped,
                                                            f"iteration {iteration + 1} (epoch {epoch + 1})"))
            for key, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                               ("clip_fraction", clip_fraction), ("value_clip_fraction", value_clip_fraction),
                               ("approx_kl", approx_kl), ("grad_norm", grad_norm)):
                logged.setdefault(key, []).append(float(value.detach() if torch.is_tensor(value) else value))
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return {k: sum(v) / len(v) for k, v in logged.items()}


def rollout_metrics(rollout: Rollout, gold_fn=None) -> dict[str, float | None]:
    """What a rollout says about the policy that sampled it (before the update).

    * ``proxy_reward``: mean normalised reward-model score of the replies (penalty not applied);
      ``score``: mean of what PPO optimised (with the no-eos penalty);
    * ``gold_reward``: the gold judge's mean (None without a ``gold_fn``), on the *training* prompts;
    * ``kl``: mean over replies of sum_t (log pi - log pi_ref) at the sampling temperature: the KL the penalty and
      the controller see, of the tempered policy from the tempered SFT model;
    * ``entropy``: mean per-token entropy of the policy at the sampling temperature;
    * ``ended``: share of replies that emitted eos; ``reply_tokens``: mean reply length (eos included).
    """
    mask = rollout.mask.bool()
    kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.mask).sum(-1)
    gold = None if gold_fn is None else sum(gold_fn(rollout.prompts, rollout.replies)) / len(rollout.prompts)
    return {"proxy_reward": rollout.rm_scores.mean().item(), "score": rollout.scores.mean().item(),
            "gold_reward": gold, "kl": kl.mean().item(),
            "entropy": (rollout.entropy.sum() / mask.sum()).item(), "ended": rollout.ended.float().mean().item(),
            "reply_tokens": sum(len(ids) for ids in rollout.reply_ids) / len(rollout.reply_ids)}


# --------------------------------------------------------------------------------------------------------------------
# Training: prompts, checkpoints, the loop
# --------------------------------------------------------------------------------------------------------------------


def fitting_prompts(tokenizer, prompts: list[str], n: int, config) -> list[str]:
    """``n`` rollout prompts from ``prompts``: those too long to leave room for ``config.max_new_tokens`` within
    ``config.max_length`` are dropped, and the rest repeated (in order) to make up ``n`` (PPO's and GRPO's
    configs both say these)."""
    room = config.max_length - config.max_new_tokens
    fitting = [p for p in prompts if len(tokenizer(p)["input_ids"]) <= room]
    if not fitting:
        raise ValueError(f"no prompt fits in max_length - max_new_tokens = {room} tokens")
    return list(itertools.islice(itertools.cycle(fitting), n))


def train_ppo(model, tokenizer, reward_fn, prompts: list[str], config: PPOConfig = PPOConfig(), *, gold_fn=None,
              checkpoint_dir=None, snapshot_dir=None, progress: bool = True) -> list[dict]:
    """Train ``model`` with PPO against ``reward_fn`` on rollouts from ``prompts``; returns the history.

    Args:
        model: the policy: a causal LM with fresh trainable LoRA adapters (e.g. from
            :func:`rrhf_lite.core.models.load_for_training`), whose adapters switched off give the reference; or a
            :class:`PolicyAndValue` around one, with its value head initialised as you choose (a bare policy gets a
            value head initialised at zero). Trained in place.
        reward_fn: any callable ``(prompts, replies) -> scores`` (a list or tensor of floats, one per reply): a
            reward model (:func:`rrhf_lite.methods.reward.normalised_scorer`), a judge, a rule. PPO works best with
            scores of order 1 (the course normalises its reward model to mean 0, std 1 on SFT samples).
        prompts: the rollouts' prompts, used in order (repeated if fewer than ``iterations * rollout_prompts``).
        gold_fn: optional ``(prompts, replies) -> list[float]``, only recorded in the history's ``gold_reward``
            (a second opinion on the same rollouts): PPO never trains on it.
        checkpoint_dir: state is saved every ``checkpoint_every`` iterations, and a call with the same folder
            resumes there, ending with the same numbers as an uninterrupted run.
        snapshot_dir: with ``snapshot_every = k > 0``, the policy's adapter is kept after every k-th iteration in
            ``snapshot_dir/<iteration>/adapter`` (snapshots change nothing in the training).

    Returns one dict per iteration (``pandas.DataFrame(history)``): the rollout's :func:`rollout_metrics`, the
    update's mean losses and diagnostics, and the ``beta`` and ``lr`` it used.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "PPO trains on one process only: its rollout, the whitening of its advantages and its KL controller are "
            "computed over the whole rollout, which data-parallel training would split. Build the PPO stage with "
            "plain `python` (SFT, the reward model, RRHF, PRO and DPO can run under `accelerate launch`); once it "
            "is built, every process can load it.")
    if not isinstance(model, PolicyAndValue):
        model = PolicyAndValue(model)
        init_value_head(model.value_head, "zero")
    use_plain_sampling(model.policy)
    n, iterations = config.rollout_prompts, config.iterations
    prompts = fitting_prompts(tokenizer, list(prompts), n * iterations, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, eps=1e-5,
                                  weight_decay=config.weight_decay)
    controller = kl_controller(config)

    start, history = 0, []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    # an unreadable file, or one that cannot be restored, is moved aside
    state = read_checkpoint(checkpoint_dir, model, iterations) if checkpoint_dir else None
    if state is not None:  # the shared loop's checkpoints: trainable weights, optimiser, beta, every RNG state
        start, history = load_checkpoint(checkpoint_dir, model, optimizer, controller, state)
        print(f"PPO: resuming after iteration {start} ({checkpoint_dir.name})")

    bar = tqdm(range(start, iterations), desc="PPO", disable=not progress, initial=start, total=iterations)
    for iteration in bar:
        lr = config.lr * (1 - iteration / iterations)  # linear decay to 0 over the run
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed = config.seed + iteration  # each iteration's sampling and shuffling depend on nothing else
        rollout = collect_rollout(model, tokenizer, reward_fn, prompts[iteration * n:(iteration + 1) * n], config,
                                  seed=seed)
        beta = controller.beta
        rewards = token_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.mask, beta=beta,
                                estimator=config.kl_estimator)
        advantages, returns = advantages_and_returns(rewards, rollout.values, rollout.mask, gamma=config.gamma,
                                                     lam=config.lam)
        row = {"iteration": iteration + 1, **rollout_metrics(rollout, gold_fn), "beta": beta, "lr": lr}
        row.update(ppo_update(model, optimizer, rollout, advantages, returns, config, iteration=iteration,
                              generator=torch.Generator().manual_seed(seed)))
        controller.update(row["kl"], n)
        history.append(row)
        bar.set_postfix(proxy=f"{row['proxy_reward']:.2f}", kl=f"{row['kl']:.2f}")
        done = iteration + 1
        if snapshot_dir is not None and config.snapshot_every and done % config.snapshot_every == 0:
            model.policy.save_pretrained(Path(snapshot_dir) / f"{done:04d}" / "adapter")
            reproducible_saved_files(Path(snapshot_dir) / f"{done:04d}" / "adapter")
        if checkpoint_dir and config.checkpoint_every and done % config.checkpoint_every == 0 and done < iterations:
            save_checkpoint(checkpoint_dir, model, optimizer, controller, done, history)
    return history
