"""Measuring models: gold reward of samples, reward-model accuracy and calibration.

The tiny world's gold judge (:func:`rrhf_lite.course.world.gold_rewards`) lets every lesson grade a model against the
truth, not only against the learned reward model (the proxy). On real profiles a public reward model plays the gold
judge (:mod:`rrhf_lite.methods.judge`); every function here takes the gold scores as plain numbers, whichever judge gave
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rrhf_lite.core.logprobs import sampled_logprobs
from rrhf_lite.core.sampling import Generation, decode, generate_tokens


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def pairwise_accuracy(chosen_rewards, rejected_rewards) -> float:
    """Share of comparisons where the chosen reply gets the higher reward."""
    return mean(float(c > r) for c, r in zip(chosen_rewards, rejected_rewards))


def gold_agreement(chosen_rewards, rejected_rewards, gold_chosen, gold_rejected) -> float:
    """Share of comparisons where the reward model orders the two replies as the gold judge does."""
    return mean(float((c > r) == (gc > gr))
                for c, r, gc, gr in zip(chosen_rewards, rejected_rewards, gold_chosen, gold_rejected))


@dataclass
class Calibration:
    """Reliability diagram data: per bin, mean predicted probability, observed frequency and count; plus ECE."""

    predicted: list[float]
    observed: list[float]
    counts: list[int]
    ece: float


def calibration(chosen_rewards, rejected_rewards, bins: int = 10) -> Calibration:
    """How well ``P(a > b) = sigmoid(r_a - r_b)`` matches how often ``a`` was actually preferred.

    Every comparison is counted in both orders, (chosen, rejected) with outcome 1 and (rejected, chosen) with
    outcome 0, so the diagram is symmetric about 0.5 and does not depend on which reply was listed first. The
    expected calibration error is ``ECE = sum_b (n_b / N) |mean predicted_b - observed_b|``.
    """
    points = []
    for c, r in zip(chosen_rewards, rejected_rewards):
        p = 1.0 / (1.0 + math.exp(-(float(c) - float(r))))
        points += [(p, 1.0), (1.0 - p, 0.0)]
    predicted, observed, counts = [], [], []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(p, y) for p, y in points if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if members:
            predicted.append(mean(p for p, _ in members))
            observed.append(mean(y for _, y in members))
            counts.append(len(members))
    ece = sum(n * abs(p - o) for p, o, n in zip(predicted, observed, counts)) / len(points)
    return Calibration(predicted, observed, counts, ece)


def wins(scores_a, scores_b) -> list[float]:
    """Per pair: 1 where reply a scores higher than reply b, 0.5 for a tie, 0 otherwise."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)]


def win_rate(scores_a, scores_b) -> float:
    """Share of prompts where reply a scores higher than reply b; a tie counts as half a win."""
    return mean(wins(scores_a, scores_b))


def kl_to_reference(model, tokenizer, generation: Generation, reference=None, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref): ``log pi(y | x) - log pi_ref(y | x)`` for replies ``y ~ pi``.

    ``generation`` holds what ``model`` sampled (:func:`rrhf_lite.core.sampling.generate_tokens`): the log-probs are of
    exactly those token ids, the ``<|eos|>`` counted only where it was sampled, as PPO's KL is
    (:func:`rrhf_lite.core.logprobs.sampled_batch`). The mean over samples is then an unbiased estimate of the
    sequence-level KL divergence of the sampling distribution (the "k1" estimator; single samples can be negative,
    the mean is not in expectation). Both policies are read at the sampling ``temperature``: the policy that samples
    at T is softmax(logits / T), and scoring its samples with T = 1 log-probs measures nothing in particular.
    ``reference=None`` means ``model`` is a LoRA (peft) model and the reference is the same model with its adapters
    disabled: no second model in memory.
    """
    prompts, ids = generation.prompts, generation.reply_ids
    logp = sampled_logprobs(model, tokenizer, prompts, ids, temperature)
    if reference is None:
        with model.disable_adapter():
            ref_logp = sampled_logprobs(model, tokenizer, prompts, ids, temperature)
    else:
        ref_logp = sampled_logprobs(reference, tokenizer, prompts, ids, temperature)
    return logp - ref_logp


def policy_report(model, tokenizer, prompts: list[str], score_fn, gold_fn=None, *, max_new_tokens: int,
                  temperature: float, batch_size: int = 64, seed: int = 0, reference=None, is_reference: bool = False,
                  baseline_gold: list[float] | None = None) -> tuple[dict, list[str], dict[str, list[float]]]:
    """Sample one reply per held-out prompt (at ``temperature``, with ``seed``) and measure it: proxy and gold reward,
    KL to the reference (at the same temperature), win rate.

    ``reference`` is as for :func:`kl_to_reference`; ``is_reference=True`` says ``model`` *is* the reference (the
    SFT baseline), so its KL is 0 by definition. Returns the report (a dict of means), the replies, and the
    per-reply values behind each mean (``proxy_reward``, ``kl``, and ``gold_reward`` and ``win_rate_vs_sft`` where
    there is a judge): what :func:`bootstrap_interval` resamples.
    """
    generation = generate_tokens(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 batch_size=batch_size, seed=seed)
    replies = decode(tokenizer, generation)
    if is_reference:
        kl = torch.zeros(len(prompts))
    else:
        kl = kl_to_reference(model, tokenizer, generation, reference, temperature=temperature)
    per_reply = {"proxy_reward": [float(v) for v in score_fn(prompts, replies)], "kl": kl.tolist()}
    if gold_fn is not None:
        per_reply["gold_reward"] = [float(v) for v in gold_fn(prompts, replies)]
        if baseline_gold is not None:
            per_reply["win_rate_vs_sft"] = wins(per_reply["gold_reward"], baseline_gold)
    report = {name: mean(values) for name, values in per_reply.items()}
    report["reply_tokens"] = mean(len(ids) for ids in generation.reply_ids)
    return report, replies, per_reply


def prompt_means(per_reply, replies_per_prompt: int = 1) -> torch.Tensor:
    """Per held-out prompt, the mean of its replies' values.

    ``per_reply`` holds ``k * prompts`` values in the order of :func:`rrhf_lite.course.sources.evaluation_prompts` (the
    distinct held-out prompts, then the same prompts again, ``k = replies_per_prompt`` times).
    """
    values = torch.as_tensor(per_reply, dtype=torch.float64)
    if values.numel() % replies_per_prompt:
        raise ValueError(f"{values.numel()} values do not split into {replies_per_prompt} replies per prompt")
    return values.reshape(replies_per_prompt, -1).mean(dim=0)


def bootstrap_interval(per_reply, replies_per_prompt: int = 1, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap confidence interval for the mean of ``per_reply`` values, resampling *prompts*.

    Replies to one prompt are not independent of each other, so the unit that is resampled is the distinct prompt,
    with all its replies (:func:`prompt_means`): the interval rests on as many prompts as there are distinct ones.
    It covers evaluation noise only (which prompts were drawn, what was sampled), not the spread between training
    runs with other seeds.
    """
    per_prompt = prompt_means(per_reply, replies_per_prompt)
    prompts = len(per_prompt)
    picks = torch.randint(prompts, (resamples, prompts), generator=torch.Generator().manual_seed(seed))
    means = per_prompt[picks].mean(dim=1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return lo, hi


def paired_difference(a, b, replies_per_prompt: int = 1, **bootstrap) -> tuple[float, float, float]:
    """How much ``a`` exceeds ``b`` on the same held-out prompts: the mean difference and its bootstrap interval.

    Every method answers the same prompts, so two methods are compared prompt by prompt: per prompt, the mean of
    ``a``'s replies minus the mean of ``b``'s, and the prompts resampled (:func:`bootstrap_interval`). This is the
    test to read, not whether the two methods' own intervals overlap: intervals that overlap can still hide a clear
    paired difference, because much of each method's spread is which prompts are easy, and that cancels. A difference
    whose interval contains 0 is not a finding. Returns ``(mean, lo, hi)``.
    """
    diff = prompt_means(a, replies_per_prompt) - prompt_means(b, replies_per_prompt)
    return (float(diff.mean()), *bootstrap_interval(diff, **bootstrap))
