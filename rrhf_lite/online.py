"""One round of iterated online RLHF (Bai et al. 2022, section 4.5), on the tiny world.

A reward model is trained on comparisons of *someone else's* replies: lesson 02's pairs come from the world's
sampler, not from the aligned policy. Once a policy has moved towards what the reward model likes, it writes
replies the reward model has rarely seen, and that is where a proxy is least trustworthy. Bai et al. therefore
kept collecting fresh comparisons *of the current policy's replies*, retrained the preference model on old + new
data, and trained the policy again. One such round:

1. **sample**: the aligned policy answers the training prompts (``online_samples_per_prompt`` replies each);
2. **label**: each of its replies is compared with an SFT sample for the same prompt (lesson 03's candidates), and
   the world's labellers (the gold judge seen through Bradley-Terry noise, exactly like the comparisons of lesson
   02) pick one: fresh ``prompt/chosen/rejected`` comparisons of exactly what the reward model must now tell apart,
   the policy's replies against those it started from;
3. **retrain** the reward model on the old comparisons plus the fresh ones;
4. **re-rank** the candidates of lesson 03 plus the policy's own replies with the new reward model;
5. **train** the method again, from the SFT model, on the new rankings.

This module holds the steps that are new (labelling, measuring a reward model on a policy's replies);
:func:`rrhf_lite.pipeline.online_stage` runs the round with the library's training functions.
"""

from __future__ import annotations

import random

from .world import perceived_scores


def label_pairs(prompts: list[str], replies_a: list[str], replies_b: list[str], gold_fn, temperature: float,
                seed: int):
    """Noisy labellers' comparisons of ``replies_a[i]`` with ``replies_b[i]``: ``prompt/chosen/rejected`` (+ gold).

    Each labeller sees ``gold / temperature + Gumbel noise`` for both replies and prefers the higher (Bradley-Terry,
    as for the comparisons of lesson 02). Pairs of two identical replies carry no preference and are skipped.
    """
    import datasets

    if not len(prompts) == len(replies_a) == len(replies_b):
        raise ValueError(f"{len(prompts)} prompts, {len(replies_a)} replies_a and {len(replies_b)} replies_b: "
                         f"one of each per comparison is needed")
    rng = random.Random(f"online-labels-{seed}")
    gold_a, gold_b = gold_fn(prompts, replies_a), gold_fn(prompts, replies_b)
    rows: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected")}
    for prompt, a, b, ga, gb in zip(prompts, replies_a, replies_b, gold_a, gold_b):
        if a == b:
            continue
        pa, pb = perceived_scores([ga, gb], temperature, rng)
        (c, gc), (r, gr) = ((a, ga), (b, gb)) if pa > pb else ((b, gb), (a, ga))
        for key, value in zip(rows, (prompt, c, r, gc, gr)):
            rows[key].append(value)
    return datasets.Dataset.from_dict(rows)


def ranks_like_gold(score_fn, gold_fn, prompts: list[str], replies_a: list[str], replies_b: list[str]) -> dict:
    """How often a reward model orders two replies to one prompt as the gold judge does (pairs with a gold tie are
    left out, since there is no right order). Returns ``{"agreement": share, "pairs": how many were compared}``."""
    gold_a, gold_b = gold_fn(prompts, replies_a), gold_fn(prompts, replies_b)
    keep = [i for i, (a, b) in enumerate(zip(gold_a, gold_b)) if a != b]
    if not keep:
        return {"agreement": float("nan"), "pairs": 0}
    ps = [prompts[i] for i in keep]
    score_a, score_b = score_fn(ps, [replies_a[i] for i in keep]), score_fn(ps, [replies_b[i] for i in keep])
    agree = [(sa > sb) == (gold_a[i] > gold_b[i]) for sa, sb, i in zip(score_a, score_b, keep)]
    return {"agreement": sum(agree) / len(agree), "pairs": len(agree)}
