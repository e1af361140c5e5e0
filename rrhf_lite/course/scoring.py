"""How the course measures: policies loaded for sampling, the reward model and the judge as scorers, lesson 03's
scored samples, and a trained adapter measured like the SFT baseline.

The stages of :mod:`rrhf_lite.course.pipeline` call these with the folders of the stages they depend on; everything
here takes folders and a profile, and knows nothing of the stage cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from rrhf_lite.core.measure import CostMeter
from rrhf_lite.core.models import load_for_training, load_model
from rrhf_lite.core.sampling import generate, sample_candidates
from rrhf_lite.core.validation import sampled_replies
from rrhf_lite.course.sources import candidate_prompts, comparison_prompts, eval_prompts, evaluation_prompts
from rrhf_lite.course.stages import read_output
from rrhf_lite.course.standins import resolve
from rrhf_lite.methods.candidates import build_rankings, perplexities, rankings_to_pairs
from rrhf_lite.methods.evaluate import policy_report
from rrhf_lite.methods.judge import judge_scores, load_judge
from rrhf_lite.methods.reward import load_reward_model, normalisation, normalise, normalised_scorer, score


def sampling(profile) -> dict:
    """How every evaluation samples: :func:`rrhf_lite.methods.evaluate.policy_report`'s settings from the profile."""
    return {"max_new_tokens": profile.max_new_tokens, "temperature": profile.sample_temperature,
            "batch_size": profile.generation_batch_size, "seed": profile.seed}


def load_policy(profile, path):
    """A causal LM for sampling and scoring (no adapters, no training), with a pad token distinct from eos.

    Loaded exactly as the methods load their starting point (:func:`rrhf_lite.core.models.load_model`): on 4-bit
    profiles the same quantised weights, so the SFT baseline is the model every method is measured against.
    """
    model, tokenizer = load_model(path, profile, head="lm")
    return model.eval(), tokenizer


def normalisation_samples(profile, policy_path) -> tuple[list[str], list[str]]:
    """The policy's samples on ``eval_prompts`` training prompts: what rewards (and the judge) are normalised on."""
    policy, tokenizer = load_policy(profile, policy_path)
    prompts = comparison_prompts(profile, profile.eval_prompts)
    return prompts, generate(policy, tokenizer, prompts, max_new_tokens=profile.max_new_tokens,
                             temperature=profile.sample_temperature, seed=profile.seed)


def reward_normalisation(profile, policy_path, reward_dir: Path) -> dict[str, float]:
    """Reward mean and std on the policy's own samples (train prompts), to normalise rewards for RL."""
    prompts, samples = normalisation_samples(profile, policy_path)
    model, rm_tokenizer = load_reward_model(policy_path, reward_dir / "adapter", profile)
    return normalisation(score(model, rm_tokenizer, prompts, samples, profile.max_length))


def proxy_scorer(profile, sft_dir: Path, reward_dir: Path):
    """``score(prompts, replies) -> normalised proxy rewards``: the reward model of stage 02, as a function."""
    model, tokenizer = load_reward_model(sft_dir / "model", reward_dir / "adapter", profile)
    stats = read_output(reward_dir, "normalisation")
    scorer = normalised_scorer(model, tokenizer, stats, profile.max_length)
    return lambda prompts, replies: scorer(prompts, replies).tolist()


def judge_normalisation(profile, policy_path, judge) -> dict[str, float]:
    """The judge model's (``judge``: a folder or hub id) mean and std on the policy's own samples, as
    :func:`reward_normalisation` for the reward model: what :func:`judge_scorer` normalises with."""
    prompts, samples = normalisation_samples(profile, policy_path)
    model, tokenizer = load_judge(judge, profile.compute_dtype, profile.judge_revision)
    return normalisation(judge_scores(model, tokenizer, prompts, samples, profile.max_length))


def judge_scorer(profile, stats: dict[str, float]):
    """The judge model of a real profile (``profile.judge_model``) as ``score(prompts, replies) -> list[float]``,
    normalised with ``stats`` (its mean and std on SFT samples)."""
    model, tokenizer = load_judge(resolve(profile.judge_model, profile), profile.compute_dtype, profile.judge_revision)

    def score(prompts: list[str], replies: list[str]) -> list[float]:
        return normalise(judge_scores(model, tokenizer, prompts, replies, profile.max_length), stats).tolist()

    return score


def build_samples(profile, base, sft_dir: Path, reward_dir: Path, gold_fn, out: Path) -> None:
    """Lesson 03's data: candidates sampled from the SFT model, the base model and experts, scored by the reward model
    (and by ``gold_fn``, the gold judge, where there is one); saved in ``out`` as ``rankings``, ``pairs`` (with the SFT
    model's perplexities), ``best_of_n`` (many SFT samples per held-out prompt, with its cost) and ``sft_eval.json``
    (the SFT model measured as every method will be: the baseline)."""
    kwargs = dict(max_new_tokens=profile.max_new_tokens, temperature=profile.sample_temperature,
                  top_p=profile.sample_top_p, batch_size=profile.generation_batch_size, progress=True)
    prompts, experts = candidate_prompts(profile)
    policy, tokenizer = load_policy(profile, sft_dir / "model")
    base_model, base_tokenizer = load_policy(profile, base)
    sources = {"sft": sample_candidates(policy, tokenizer, prompts, profile.samples_per_prompt, seed=profile.seed,
                                        **kwargs),
               "base": sample_candidates(base_model, base_tokenizer, prompts, profile.base_samples_per_prompt,
                                         seed=profile.seed, **kwargs),
               "expert": experts}
    del base_model
    score_fn = proxy_scorer(profile, sft_dir, reward_dir)
    with sampled_replies():  # the models' own replies: an empty one ended at once (lesson 03 counts them)
        rankings = build_rankings(prompts, sources, score_fn, gold_fn)
        pairs = rankings_to_pairs(rankings)
    rankings.save_to_disk(out / "rankings")

    ppl_chosen = perplexities(policy, tokenizer, pairs["prompt"], pairs["chosen"], profile.max_length)
    ppl_rejected = perplexities(policy, tokenizer, pairs["prompt"], pairs["rejected"], profile.max_length)
    pairs = pairs.add_column("ppl_chosen", ppl_chosen.tolist()).add_column("ppl_rejected", ppl_rejected.tolist())
    pairs.save_to_disk(out / "pairs")

    # Best-of-n's cost is paid at answer time: sampling and scoring bon_n replies per held-out prompt, measured.
    held_out = eval_prompts(profile)
    with CostMeter() as cost:
        bon = sample_candidates(policy, tokenizer, held_out, profile.bon_n, seed=profile.seed + 1, **kwargs)
        with sampled_replies():
            bon_rankings = build_rankings(held_out, {"sft": bon}, score_fn, gold_fn)
    bon_rankings.save_to_disk(out / "best_of_n")
    (out / "best_of_n_cost.json").write_text(json.dumps({**cost.as_dict(), "samples": len(held_out) * profile.bon_n}))

    # The SFT model measured exactly as every method will be (same prompts, same seed): the baseline.
    measured = evaluation_prompts(profile)
    report, replies, per_reply = policy_report(policy, tokenizer, measured, score_fn, gold_fn, is_reference=True,
                                               **sampling(profile))
    if gold_fn is not None:
        per_reply["win_rate_vs_sft"] = [0.5] * len(replies)  # a tie with itself, reply by reply
    (out / "sft_eval.json").write_text(json.dumps({"report": report, "replies": replies, "per_reply": per_reply},
                                                  indent=1))


def evaluate_adapter_with(profile, adapter_dir: Path, sft_dir: Path, reward_dir: Path, baseline: dict,
                          gold_fn) -> dict:
    """The SFT model with a trained adapter, measured like the SFT ``baseline`` (its ``sft_eval.json``): replies to the
    evaluation prompts, their proxy reward, gold reward (``gold_fn``), KL to the SFT model and win rate against it."""
    model, tokenizer = load_for_training(sft_dir / "model", profile, head="lm", adapter=adapter_dir, trainable=False)
    report, replies, per_reply = policy_report(model, tokenizer, evaluation_prompts(profile),
                                               proxy_scorer(profile, sft_dir, reward_dir), gold_fn,
                                               baseline_gold=baseline["per_reply"].get("gold_reward"),
                                               **sampling(profile))
    return {"report": report, "replies": replies, "per_reply": per_reply}
