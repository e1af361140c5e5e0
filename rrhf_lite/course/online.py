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

The round changes two things at once: the reward model, and the candidate pool (the policy's replies join lesson
03's). To tell them apart, the round also trains an **ablation**: the same larger pool ranked by the *old* reward
model. Round 1 against the ablation is the pool's effect; the ablation against round 2, the refreshed reward model's.

:func:`run_round` runs the five steps, top to bottom; :func:`rrhf_lite.course.pipeline.online_stage` caches its output
as a stage and hands it what only the pipeline knows (how the reward model is trained and turned into a scorer).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from rrhf_lite.core.models import load_for_training
from rrhf_lite.core.sampling import sample_candidates
from rrhf_lite.course.world import perceived_scores
from rrhf_lite.methods.candidates import build_rankings
from rrhf_lite.methods.ranking import shorten_rankings


def run_round(profile, *, method: str, sft_model: Path, policy_adapter: Path, rankings, old_pairs, old_reward: Path,
              gold_fn, train_reward: Callable, train_method: Callable, scorer: Callable, out: Path, ckpt: Path) -> None:
    """One online round (the module docstring's five steps) into ``out``: ``pairs`` (the fresh comparisons),
    ``reward/`` (the retrained reward model), ``rankings`` (the re-ranked candidates), and the retrained method's
    ``adapter/`` and ``history.json``; the ablation (the same pool ranked by the old reward model) in ``ablation/``
    (``rankings``, ``adapter/``, ``history.json``); checkpoints under ``ckpt``.

    Args:
        method: ``"rrhf"`` or ``"pro"``, trained from ``sft_model``; ``policy_adapter`` is its first round.
        rankings: lesson 03's rankings (their prompts are the training prompts; their SFT candidates the comparison).
        old_pairs: the comparisons the first reward model was trained on; ``old_reward`` is that reward model.
        gold_fn: the labellers' hidden judge, ``gold_fn(prompts, replies) -> scores``.
        train_reward: ``train_reward(pairs, out_dir, checkpoint_dir)`` trains a reward model from the SFT model.
        train_method: ``train_method(rankings, out_dir, checkpoint_dir)`` trains ``method`` from the SFT model.
        scorer: ``scorer(reward_dir) -> score(prompts, replies)``, a trained reward model as a function.
    """
    from datasets import concatenate_datasets

    # 1. The aligned policy answers lesson 03's training prompts.
    prompts = list(rankings["prompt"])
    k = profile.online_samples_per_prompt
    policy, tokenizer = load_for_training(sft_model, profile, head="lm", adapter=policy_adapter, trainable=False)
    replies = sample_candidates(policy, tokenizer, prompts, k, max_new_tokens=profile.max_new_tokens,
                                temperature=profile.sample_temperature, top_p=profile.sample_top_p,
                                batch_size=profile.generation_batch_size, seed=profile.seed + 2, progress=True)
    del policy
    # 2. Labellers compare each of its replies with one of the SFT model's samples for the same prompt.
    sft_replies = [[r for r, source in zip(row["responses"], row["sources"]) if source == "sft"][:k]
                   for row in rankings]
    if any(len(r) < k for r in sft_replies):
        raise ValueError(f"online_samples_per_prompt={k} needs as many SFT candidates per prompt "
                         f"(samples_per_prompt={profile.samples_per_prompt})")
    fresh = label_pairs([p for p in prompts for _ in range(k)], [r for rs in replies for r in rs],
                        [r for rs in sft_replies for r in rs], gold_fn, profile.world_label_temperature, profile.seed)
    fresh.save_to_disk(out / "pairs")
    # 3. The reward model again, from the SFT model, on the old comparisons plus the fresh ones.
    train_reward(concatenate_datasets([old_pairs, fresh]), out / "reward", ckpt / "reward")
    # 4. Lesson 03's candidates plus the policy's replies, scored by the new reward model; 5. the method again, from
    # the SFT model. Then the ablation: the same pool scored by the old reward model, the method trained on it.
    pool = {"stage03": list(rankings["responses"]), method: replies}
    for reward_dir, folder, name in ((out / "reward", out, method), (old_reward, out / "ablation", "ablation")):
        new_rankings = build_rankings(prompts, pool, scorer(reward_dir), gold_fn)
        new_rankings.save_to_disk(folder / "rankings")
        if method == "pro" and profile.pro_ranking_length:
            new_rankings = shorten_rankings(new_rankings, profile.pro_ranking_length)
        train_method(new_rankings, folder, ckpt / name)


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
