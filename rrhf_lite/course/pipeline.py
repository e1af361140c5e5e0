"""The course's stages, each built from the ones before it and cached under ``runs/<profile>/<stage>/``.

A notebook asks for what it needs, e.g. ``sft_stage(profile)``; the first call trains the stage (and, if needed,
the stages before it) and saves it; every later call, from any notebook or process, loads it. Each stage names
the profile fields it depends on, so changing one of them builds a new entry instead of reusing a stale one.

    base    the tiny base model (on real profiles: the hub model, nothing to build)
    sft     base + LoRA fine-tuned on demonstrations, merged:  <stage>/model, <stage>/adapter, history.json
    reward  SFT model + LoRA + scalar head, on comparisons:  <stage>/adapter, history.json, normalisation.json
    samples candidates from the SFT model, the base model and experts, scored:  <stage>/rankings, <stage>/pairs
            (datasets, ``load_from_disk``) and <stage>/best_of_n (many SFT samples per held-out prompt)
    rrhf, pro, dpo-<data>, ppo   one method each, trained from SFT (see :func:`method_stage`)
    online  one round of online data collection (Bai et al. 2022), see :func:`online_stage`
    ppo-trajectory  the weak-KL PPO run measured on held-out prompts at its snapshots, see :func:`trajectory_stage`

    judge   real profiles only: the normalisation of the gold judge (``profile.judge_model``) on SFT samples

Which data a profile uses (the tiny world, HH-RLHF, local files) is :mod:`rrhf_lite.course.sources`; where the base
model, data and judge of the ``rehearsal`` profile come from is :mod:`rrhf_lite.course.standins`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import datasets
import torch

from rrhf_lite.core.loop import save_run
from rrhf_lite.core.measure import CostMeter
from rrhf_lite.core.models import load_for_training, load_model, merge_adapter
from rrhf_lite.core.sampling import generate, sample_candidates
from rrhf_lite.core.validation import (
    DataWarning,
    sampled_replies,
    validate_demonstrations,
    validate_preference_dataset,
    validate_rankings,
)
from rrhf_lite.course.online import ranks_like_gold, run_round
from rrhf_lite.course.pretrain import train_base_model
from rrhf_lite.course.profiles import weak_kl_profile
from rrhf_lite.course.sources import (
    candidate_prompts,
    comparison_prompts,
    eval_prompts,
    evaluation_prompts,
    has_gold,
    is_tiny_world,
    preference_data,
    rollout_prompts,
    sft_data,
)
from rrhf_lite.course.stages import TrainingRun, build_or_load, checkpoint_dir, read_output, training_run
from rrhf_lite.course.standins import resolve
from rrhf_lite.course.world import gold_rewards, label_agreement
from rrhf_lite.methods.candidates import build_rankings, perplexities, perplexity_filter, rankings_to_pairs
from rrhf_lite.methods.dpo import train_dpo
from rrhf_lite.methods.evaluate import policy_report
from rrhf_lite.methods.judge import judge_scores, load_judge
from rrhf_lite.methods.ppo import PolicyAndValue, init_value_head, train_ppo, use_plain_sampling
from rrhf_lite.methods.ranking import shorten_rankings, train_pro, train_rrhf
from rrhf_lite.methods.reward import (
    load_reward_model,
    normalisation,
    normalise,
    normalised_scorer,
    score,
    train_reward_model,
)
from rrhf_lite.methods.sft import train_sft

WORLD_FIELDS = ("seed", "dataset", "world_harmful_fraction", "world_label_temperature", "world_test_fraction")
BASE_FIELDS = WORLD_FIELDS + ("base_model", "pretrain_dialogues", "tokenizer_vocab_size", "n_layer", "n_head",
                              "hidden_size", "intermediate_size", "max_length", "pretrain_steps",
                              "pretrain_batch_size", "pretrain_lr", "pretrain_warmup_steps", "weight_decay",
                              "max_grad_norm")
LORA_FIELDS = ("load_in_4bit", "compute_dtype", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
               "gradient_checkpointing", "max_length", "weight_decay", "max_grad_norm", "seed")
SFT_FIELDS = WORLD_FIELDS + LORA_FIELDS + ("sft_examples", "sft_expert_fraction", "sft_steps", "sft_batch_size",
                                           "sft_lr", "sft_warmup_steps")
REWARD_FIELDS = WORLD_FIELDS + LORA_FIELDS + ("rm_pairs", "rm_eval_pairs", "rm_steps", "rm_batch_size", "rm_lr",
                                              "rm_warmup_steps", "rm_center_coef", "rm_eval_every",
                                              # the normalisation statistics come from SFT samples drawn with these:
                                              "eval_prompts", "max_new_tokens", "sample_temperature")
EVAL_FIELDS = ("eval_prompts", "eval_samples_per_prompt", "max_new_tokens", "sample_temperature", "max_length",
               "generation_batch_size")
SAMPLES_FIELDS = WORLD_FIELDS + EVAL_FIELDS + ("compute_dtype", "sample_prompts", "samples_per_prompt",
                                               "base_samples_per_prompt", "sample_top_p", "bon_n")
RANKING_FIELDS = LORA_FIELDS + EVAL_FIELDS + ("ranking_steps", "ranking_batch_size", "ranking_warmup_steps")
METHOD_FIELDS = {
    "rrhf": RANKING_FIELDS + ("rrhf_lr", "rrhf_length_penalty", "rrhf_sft_weight"),
    "pro": RANKING_FIELDS + ("pro_lr", "pro_sft_weight", "pro_sft_scale", "pro_use_temperature",
                             "pro_ranking_length"),
    "dpo": LORA_FIELDS + EVAL_FIELDS + ("dpo_steps", "dpo_batch_size", "dpo_lr", "dpo_warmup_steps", "dpo_beta",
                                        "dpo_loss_type", "dpo_label_smoothing", "ppl_quantile", "sample_prompts"),
    "ppo": LORA_FIELDS + EVAL_FIELDS + REWARD_FIELDS + ("ppo_iterations", "ppo_rollout_prompts", "ppo_epochs",
                                                        "ppo_minibatch_size", "ppo_lr", "ppo_clip_range",
                                                        "ppo_value_clip_range", "ppo_vf_coef", "ppo_gamma", "ppo_lam",
                                                        "ppo_kl_coef", "ppo_kl_estimator", "ppo_adaptive_kl",
                                                        "ppo_kl_target", "ppo_kl_horizon", "ppo_no_eos_penalty",
                                                        "ppo_value_init", "ppo_snapshot_every"),
}
METHOD_FIELDS = {method: fields + ("method_seed",) for method, fields in METHOD_FIELDS.items()}
# The modules whose source (with every package module they import) enters each stage's key, so that an edit to the
# code that builds a stage rebuilds it (rrhf_lite/course/provenance.py). "course.sources" brings in the data: the tiny
# world, HH-RLHF loading, the prompts. This file's own glue is not hashed: it imports everything, and would rebuild
# everything.
# how a policy is measured: samples, proxy, gold judge
SCORING_CODE = ("methods.evaluate", "methods.reward", "methods.judge", "course.sources")
STAGE_CODE = {
    "base": ("course.pretrain", "course.sources"),
    "sft": ("methods.sft", "course.sources"),
    "reward": ("methods.reward", "core.sampling", "course.sources"),
    "judge": ("methods.judge", "methods.reward", "core.sampling", "course.sources"),
    "samples": ("core.sampling", "methods.candidates", "core.measure", *SCORING_CODE),
    "rrhf": ("methods.ranking", *SCORING_CODE),
    "pro": ("methods.ranking", *SCORING_CODE),
    "dpo": ("methods.dpo", "methods.candidates", *SCORING_CODE),
    "ppo": ("methods.ppo", *SCORING_CODE),
    "online": ("course.online", "methods.ranking", "methods.candidates", "core.sampling", *SCORING_CODE),
    "ppo-trajectory": SCORING_CODE,
}
DPO_DATA = ("pairs", "filtered", "random", "labels")


# ------------------------------------------------------------------------------------------------------------
# Training a stage: load, train with the profile's config for the method, save
# ------------------------------------------------------------------------------------------------------------
TRAINERS = {  # method -> (trainer, the profile's config for it, the model's head, the data check)
    "sft": (train_sft, lambda p: p.sft_config(), "lm", validate_demonstrations),
    "reward": (train_reward_model, lambda p: p.reward_config(), "reward", validate_preference_dataset),
    "rrhf": (train_rrhf, lambda p: p.rrhf_config(), "lm", validate_rankings),
    "pro": (train_pro, lambda p: p.pro_config(), "lm", validate_rankings),
    "dpo": (train_dpo, lambda p: p.dpo_config(), "lm", validate_preference_dataset),
}


def train_folder(profile, method: str, init_path, data, out: Path, checkpoint_dir: Path | None = None, *,
                 config=None, eval_pairs=None, progress: bool = True) -> list[dict]:
    """Train fresh LoRA adapters on ``init_path`` with ``method`` ("sft", "reward", "rrhf", "pro" or "dpo") on
    ``data``, with ``config`` (default: the profile's config for the method); save ``out/adapter`` and
    ``out/history.json`` (:func:`rrhf_lite.core.loop.save_run`); return the history.

    The data is checked before any model is loaded (:mod:`rrhf_lite.core.validation`'s validators: the field and the row
    of the first problem). ``eval_pairs``: the reward model's held-out comparisons.
    """
    trainer, default_config, head, check = TRAINERS[method]
    config = default_config(profile) if config is None else config
    with warnings.catch_warnings():  # errors only: the trainer checks again and gives the warnings, once
        warnings.simplefilter("ignore", DataWarning)
        check(data, **({} if method == "sft" else {"allow_empty_responses": True}))
        if eval_pairs is not None:
            validate_preference_dataset(eval_pairs, allow_empty_responses=True)
    model, tokenizer = load_for_training(init_path, profile, head=head)
    kwargs = {"eval_pairs": eval_pairs} if method == "reward" else {}
    history = trainer(model, tokenizer, data, config, checkpoint_dir=checkpoint_dir, progress=progress, **kwargs)
    save_run(out, model, tokenizer, history, **({"method": method} if method in ("rrhf", "pro", "dpo") else {}),
             **({"beta": config.beta} if method == "dpo" else {}))
    return history


# ------------------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------------------
def _build_with_checkpoints(stage, profile, fields, depends_on, train_fn, force, evaluate_fn=None, code=()):
    """``build_or_load`` for a training stage whose checkpoints live in a stable folder until it completes.

    Training is measured (:class:`~rrhf_lite.core.measure.CostMeter`) into ``<stage>/cost.json``: wall seconds, peak
    memory and the trainable parameters that ``history.json`` reports. ``evaluate_fn(out)``, if given, runs after
    training, outside the measurement.
    """
    code = code or STAGE_CODE[stage]
    ckpt = checkpoint_dir(stage, profile, fields, depends_on, code)

    def build(out: Path) -> None:
        with CostMeter() as cost:
            train_fn(out, ckpt)
        summary = read_output(out, "history") if (out / "history.json").exists() else {}
        (out / "cost.json").write_text(json.dumps(
            {**cost.as_dict(), "trainable_parameters": summary.get("trainable_parameters")}, indent=1))
        if evaluate_fn is not None:
            evaluate_fn(out)
        shutil.rmtree(ckpt, ignore_errors=True)

    return build_or_load(stage, profile, fields, build, depends_on=depends_on, code=code, force=force)


def base_model_path(profile, force: bool = False) -> str | Path:
    """Where the base model lives: the hub id or local folder of real profiles (a stand-in's folder on
    ``rehearsal``, built if missing), or the cached tiny model (trained if missing)."""
    if profile.base_model is not None:
        return resolve(profile.base_model, profile)
    return build_or_load("base", profile, BASE_FIELDS, lambda out: train_base_model(profile, out),
                         code=STAGE_CODE["base"], force=force)


def sft_stage(profile, force: bool = False) -> Path:
    """The SFT stage folder: ``adapter/`` (the LoRA weights), ``model/`` (the base with the adapter merged in: what
    every later stage starts from) and ``history.json``."""
    base = base_model_path(profile)

    def train_fn(out: Path, ckpt: Path) -> None:
        train_folder(profile, "sft", base, sft_data(profile), out, ckpt)
        merge_adapter(base, out / "adapter", out / "model", dtype=profile.compute_dtype)

    return _build_with_checkpoints("sft", profile, SFT_FIELDS, [base], train_fn, force)


def train_reward_folder(profile, sft: Path, train_pairs, out: Path, ckpt: Path, eval_every: int | None = None) -> None:
    """Train a reward model from the SFT model on ``train_pairs`` (held-out accuracy on the test comparisons, every
    ``eval_every`` steps as :func:`~rrhf_lite.methods.reward.train_reward_model`) into ``out``: its adapter and
    ``history.json``, and ``normalisation.json`` for :func:`proxy_scorer`."""
    eval_pairs = preference_data(profile, "test", profile.rm_eval_pairs)
    config = profile.reward_config()
    config = config if eval_every is None else dataclasses.replace(config, eval_every=eval_every)
    train_folder(profile, "reward", sft / "model", train_pairs, out, ckpt, config=config, eval_pairs=eval_pairs)
    (out / "normalisation.json").write_text(json.dumps(reward_normalisation(profile, sft / "model", out)))


def reward_stage(profile, force: bool = False) -> Path:
    """The reward-model stage folder: a LoRA adapter with a scalar head on top of the SFT model."""
    sft = sft_stage(profile)

    def train_fn(out: Path, ckpt: Path):
        train_reward_folder(profile, sft, preference_data(profile, "train", profile.rm_pairs), out, ckpt)

    return _build_with_checkpoints("reward", profile, REWARD_FIELDS, [sft], train_fn, force)


def reward_normalisation(profile, policy_path, reward_dir: Path) -> dict[str, float]:
    """Reward mean and std on the policy's own samples (train prompts), to normalise rewards for RL."""
    prompts, samples = normalisation_samples(profile, policy_path)
    model, rm_tokenizer = load_reward_model(policy_path, reward_dir / "adapter", profile)
    return normalisation(score(model, rm_tokenizer, prompts, samples, profile.max_length))


def normalisation_samples(profile, policy_path) -> tuple[list[str], list[str]]:
    """The policy's samples on ``eval_prompts`` training prompts: what rewards (and the judge) are normalised on."""
    policy, tokenizer = load_policy(profile, policy_path)
    prompts = comparison_prompts(profile, profile.eval_prompts)
    return prompts, generate(policy, tokenizer, prompts, max_new_tokens=profile.max_new_tokens,
                             temperature=profile.sample_temperature, seed=profile.seed)


def load_policy(profile, path):
    """A causal LM for sampling and scoring (no adapters, no training), with a pad token distinct from eos.

    Loaded exactly as the methods load their starting point (:func:`rrhf_lite.core.models.load_model`): on 4-bit
    profiles the same quantised weights, so the SFT baseline is the model every method is measured against.
    """
    model, tokenizer = load_model(path, profile, head="lm")
    return model.eval(), tokenizer


def proxy_scorer(profile, sft_dir: Path, reward_dir: Path):
    """``score(prompts, replies) -> normalised proxy rewards``: the reward model of stage 02, as a function."""
    model, tokenizer = load_reward_model(sft_dir / "model", reward_dir / "adapter", profile)
    stats = read_output(reward_dir, "normalisation")
    scorer = normalised_scorer(model, tokenizer, stats, profile.max_length)
    return lambda prompts, replies: scorer(prompts, replies).tolist()


JUDGE_FIELDS = WORLD_FIELDS + ("judge_model", "compute_dtype", "max_length", "eval_prompts", "max_new_tokens",
                               "sample_temperature")


def judge_stage(profile, force: bool = False) -> Path:
    """Real profiles: the judge's mean and std on the SFT model's samples (``normalisation.json``), like the
    proxy's (:func:`reward_normalisation`), so that judge scores are in "SFT standard deviations"."""
    if profile.judge_model is None:
        raise ValueError(f"profile {profile.name!r} has no judge_model")
    sft, judge = sft_stage(profile), resolve(profile.judge_model, profile)

    def build(out: Path) -> None:
        prompts, samples = normalisation_samples(profile, sft / "model")
        model, tokenizer = load_judge(judge, profile.compute_dtype)
        stats = normalisation(judge_scores(model, tokenizer, prompts, samples, profile.max_length))
        (out / "normalisation.json").write_text(json.dumps(stats))

    return build_or_load("judge", profile, JUDGE_FIELDS, build, depends_on=[sft, judge], code=STAGE_CODE["judge"],
                         force=force)


def gold_scorer(profile):
    """The gold judge as ``score(prompts, replies) -> list[float]``: the tiny world's judge, or on real profiles the
    ``judge_model`` (normalised on SFT samples, see :func:`judge_stage`); None when a profile has neither."""
    if is_tiny_world(profile):
        return gold_rewards
    if profile.judge_model is None:
        return None
    stats = read_output(judge_stage(profile), "normalisation")
    model, tokenizer = load_judge(resolve(profile.judge_model, profile), profile.compute_dtype)

    def score(prompts: list[str], replies: list[str]) -> list[float]:
        return normalise(judge_scores(model, tokenizer, prompts, replies, profile.max_length), stats).tolist()

    return score


def gold_upstream(profile) -> list[Path]:
    """The stage a profile's gold scores depend on: the judge's normalisation on real profiles, none on tiny."""
    return [judge_stage(profile)] if not is_tiny_world(profile) and profile.judge_model is not None else []


def build_samples(profile, base, sft_dir: Path, reward_dir: Path, out: Path) -> None:
    """Sample candidates, score them, and save ``rankings``, ``pairs`` (with perplexities) and ``best_of_n``."""
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
    score_fn, gold_fn = proxy_scorer(profile, sft_dir, reward_dir), gold_scorer(profile)
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
    report, replies, per_reply = policy_report(policy, tokenizer, measured, profile, score_fn, gold_fn,
                                               is_reference=True)
    if gold_fn is not None:
        per_reply["win_rate_vs_sft"] = [0.5] * len(replies)  # a tie with itself, reply by reply
    (out / "sft_eval.json").write_text(json.dumps({"report": report, "replies": replies, "per_reply": per_reply},
                                                  indent=1))


def samples_stage(profile, force: bool = False) -> Path:
    """The sampling stage folder: ``rankings``, ``pairs`` and ``best_of_n`` datasets (``datasets.load_from_disk``)."""
    base, sft, reward = base_model_path(profile), sft_stage(profile), reward_stage(profile)
    return build_or_load("samples", profile, SAMPLES_FIELDS,
                         lambda out: build_samples(profile, base, sft, reward, out),
                         depends_on=[base, sft, reward, *gold_upstream(profile)], code=STAGE_CODE["samples"],
                         force=force)


# ------------------------------------------------------------------------------------------------------------
# The methods: RRHF, PRO, DPO. Each trains fresh LoRA adapters on the SFT model and is evaluated like the SFT model.
# ------------------------------------------------------------------------------------------------------------
def load_samples(profile, name: str):
    """One dataset of the sampling stage: ``"rankings"``, ``"pairs"`` or ``"best_of_n"``."""
    return datasets.load_from_disk(samples_stage(profile) / name)


def evaluate_adapter(profile, adapter_dir: Path) -> dict:
    """Load SFT model + a trained adapter and measure it like the SFT baseline (``sft_eval.json``)."""
    sft, samples = sft_stage(profile), samples_stage(profile)
    baseline = read_output(samples, "sft_eval")
    model, tokenizer = load_for_training(sft / "model", profile, head="lm", adapter=adapter_dir, trainable=False)
    report, replies, per_reply = policy_report(model, tokenizer, evaluation_prompts(profile), profile,
                                               proxy_scorer(profile, sft, reward_stage(profile)),
                                               gold_scorer(profile),
                                               baseline_gold=baseline["per_reply"].get("gold_reward"))
    return {"report": report, "replies": replies, "per_reply": per_reply}


def dpo_pairs(profile, data: str = "pairs"):
    """DPO's training pairs: ``"pairs"`` (best vs worst of the scored candidates of stage 03), ``"filtered"``
    (the same, perplexity-filtered to the SFT model), ``"random"`` (a random subset of ``"pairs"`` as large as
    ``"filtered"``: the control that separates the filter's choice from its smaller size) or ``"labels"``
    (labellers' pairs like those the reward model was trained on; ``sample_prompts`` of them)."""
    if data == "pairs":
        return load_samples(profile, "pairs")
    if data in ("filtered", "random"):
        pairs = load_samples(profile, "pairs")
        filtered = perplexity_filter(pairs, quantile=profile.ppl_quantile).dataset
        return filtered if data == "filtered" else pairs.shuffle(seed=profile.seed).select(range(len(filtered)))
    if data == "labels":  # as many as the candidate pairs, so that the two data sets cost the same to train on
        return preference_data(profile, "train", profile.sample_prompts)
    raise ValueError(f"DPO data must be one of {DPO_DATA}, got {data!r}")


def training_profile(profile):
    """The profile a method trains with: ``seed`` replaced by ``method_seed`` when that is set, so that a method can be
    trained again with another seed (adapter initialisation, batch order, PPO's rollouts) on the same SFT model,
    reward model, data and evaluation (:mod:`rrhf_lite.course.study`): everything that depends on the data (the tiny
    world's prompts included) is computed from ``profile`` itself."""
    return profile if profile.method_seed is None else dataclasses.replace(profile, seed=profile.method_seed)


def method_stage(profile, method: str, data: str = "pairs", force: bool = False) -> Path:
    """Train and evaluate ``method`` ("rrhf", "pro", "dpo" or "ppo") from the SFT model; returns the stage folder.

    The folder holds ``adapter/`` (LoRA weights), ``history.json`` (training curves), ``cost.json`` (training wall
    time, peak memory, trainable parameters) and ``eval.json`` (gold and proxy
    reward, KL to the SFT model and win rate on held-out prompts, with the replies). ``data`` picks DPO's
    pairs (see :func:`dpo_pairs`); RRHF and PRO train on the rankings of stage 03; PPO samples its own replies and
    scores them with the reward model of stage 02.
    """
    if method not in METHOD_FIELDS:
        raise ValueError(f"method must be one of {sorted(METHOD_FIELDS)}, got {method!r}")
    sft, samples = sft_stage(profile), samples_stage(profile)
    trained = training_profile(profile)

    def train_fn(out: Path, ckpt: Path) -> None:
        if method == "ppo":
            train_ppo_folder(trained, sft, reward_stage(profile), out, ckpt,
                             rollout_prompts(profile, profile.ppo_rollout_prompts * profile.ppo_iterations),
                             gold_scorer(profile))
            return
        # RRHF, PRO and DPO train on lesson 03's samples, but for DPO on the labellers' pairs
        own_samples = not (method == "dpo" and data == "labels")
        with sampled_replies() if own_samples else contextlib.nullcontext():
            if method == "dpo":
                train_data = dpo_pairs(profile, data)
            else:
                train_data = load_samples(profile, "rankings")
                if method == "pro" and profile.pro_ranking_length:
                    train_data = shorten_rankings(train_data, profile.pro_ranking_length)
            train_folder(trained, method, sft / "model", train_data, out, ckpt)

    def evaluate_fn(out: Path) -> None:
        (out / "eval.json").write_text(json.dumps(evaluate_adapter(profile, out / "adapter"), indent=1))

    name = f"dpo-{data}" if method == "dpo" else method
    return _build_with_checkpoints(name, profile, METHOD_FIELDS[method], [sft, samples], train_fn, force,
                                   evaluate_fn, code=STAGE_CODE[method])


def ppo_models(profile, sft_dir: Path, reward_dir: Path):
    """PPO's models: the policy (the SFT model with fresh LoRA adapters) with its value head initialised as
    ``ppo_value_init`` says, its tokenizer, and the reward function (the reward model of stage 02, normalised).
    Returns ``(model, tokenizer, reward_fn)``."""
    if profile.lora_dropout:
        warnings.warn(f"lora_dropout = {profile.lora_dropout}: PPO expects no dropout (see rrhf_lite.methods.ppo)",
                      stacklevel=2)
    policy, tokenizer = load_for_training(sft_dir / "model", profile, head="lm")
    use_plain_sampling(policy)  # rollouts from exactly softmax(logits / T), the distribution PPO trains
    model = PolicyAndValue(policy)
    reward_model, reward_tokenizer = load_reward_model(sft_dir / "model", reward_dir / "adapter", profile)
    stats = read_output(reward_dir, "normalisation")
    init_value_head(model.value_head, profile.ppo_value_init, reward_model, stats)
    return model, tokenizer, normalised_scorer(reward_model, reward_tokenizer, stats, profile.max_length)


def train_ppo_folder(profile, sft_dir: Path, reward_dir: Path, out: Path, ckpt: Path | None, prompts: list[str],
                     gold_fn=None, progress: bool = True) -> list[dict]:
    """PPO from the SFT model against the reward model of stage 02 (:func:`rrhf_lite.methods.ppo.train_ppo`), saved in
    ``out``: ``adapter/``, ``value_head.pt``, ``history.json`` and, with ``ppo_snapshot_every``, ``snapshots/``
    (kept beside the checkpoints until the run ends, so that a resumed run still has the earlier ones)."""
    model, tokenizer, reward_fn = ppo_models(profile, sft_dir, reward_dir)
    snapshots = (ckpt or out) / "snapshots"
    history = train_ppo(model, tokenizer, reward_fn, prompts, profile.ppo_config(), gold_fn=gold_fn,
                        checkpoint_dir=ckpt, snapshot_dir=snapshots, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    if profile.ppo_snapshot_every and snapshots != out / "snapshots":
        shutil.copytree(snapshots, out / "snapshots", dirs_exist_ok=True)
    save_run(out, model.policy, tokenizer, history, counted=model, method="ppo")
    torch.save(model.value_head.state_dict(), out / "value_head.pt")
    return history


def method_run(profile, method: str, data: str = "pairs") -> TrainingRun:
    """:func:`method_stage` (built on first use), read back: its history as a table, its held-out report, replies
    and per-reply values (:class:`~rrhf_lite.course.stages.TrainingRun`)."""
    return training_run(method_stage(profile, method, data))


# ------------------------------------------------------------------------------------------------------------
# One round of online data collection (Bai et al. 2022): see rrhf_lite/course/online.py
# ------------------------------------------------------------------------------------------------------------
ONLINE_FIELDS = tuple(dict.fromkeys(REWARD_FIELDS + SAMPLES_FIELDS + RANKING_FIELDS + (
    "rrhf_lr", "rrhf_length_penalty", "rrhf_sft_weight", "pro_lr", "pro_sft_weight", "pro_sft_scale",
    "pro_use_temperature", "pro_ranking_length", "online_method", "online_samples_per_prompt")))


def online_stage(profile, force: bool = False) -> Path:
    """One online round from the policy of ``method_stage(profile, profile.online_method)`` (RRHF or PRO).

    The folder holds ``pairs`` (fresh labelled comparisons: the policy's replies against SFT samples),
    ``reward/`` (the reward model retrained on old + fresh comparisons), ``rankings`` (lesson 03's candidates + the
    policy's replies, scored by the new reward model), ``adapter/`` and ``history.json`` (the method trained again
    from SFT), ``eval.json`` (measured like every method), ``ablation/`` (the same pool ranked by the old reward model,
    the method trained and measured on it: what separates the new pool's effect from the new reward model's) and
    ``online.json`` (both reward models on the policy's replies).
    """
    method = profile.online_method
    if method not in ("rrhf", "pro"):
        raise ValueError(f"online_method must be 'rrhf' or 'pro', got {method!r}")
    if not has_gold(profile):
        raise ValueError("the online round needs labellers for fresh replies: the tiny world's, or a judge_model "
                         "whose scores are seen through Bradley-Terry noise; this profile has neither")
    sft, reward, samples = sft_stage(profile), reward_stage(profile), samples_stage(profile)
    first = method_stage(profile, method)
    gold_fn = gold_scorer(profile)

    def train_fn(out: Path, ckpt: Path) -> None:
        with sampled_replies():  # the policy's and the SFT model's replies, and lesson 03's candidates
            run_round(profile, method=method, sft_model=sft / "model", policy_adapter=first / "adapter",
                      rankings=load_samples(profile, "rankings"),
                      old_pairs=preference_data(profile, "train", profile.rm_pairs), old_reward=reward, gold_fn=gold_fn,
                      # held-out accuracy once, at the end: lesson 08 shows that one (the curve is lesson 02's)
                      train_reward=lambda pairs, folder, checkpoints: train_reward_folder(
                          profile, sft, pairs, folder, checkpoints, eval_every=profile.rm_steps),
                      train_method=lambda rankings, folder, checkpoints: train_folder(
                          profile, method, sft / "model", rankings, folder, checkpoints),
                      scorer=lambda reward_dir: proxy_scorer(profile, sft, reward_dir), out=out, ckpt=ckpt)

    def evaluate_fn(out: Path) -> None:
        for folder in (out, out / "ablation"):
            (folder / "eval.json").write_text(json.dumps(evaluate_adapter(profile, folder / "adapter"), indent=1))
        # Both reward models on the aligned policies' held-out replies against the SFT model's, prompt by prompt:
        # the comparison a reward model must get right to steer a policy away from SFT.
        measured = evaluation_prompts(profile)
        sft_replies = read_output(samples, "sft_eval")["replies"]
        scorers = {"before": proxy_scorer(profile, sft, reward), "after": proxy_scorer(profile, sft, out / "reward")}
        fresh = datasets.load_from_disk(out / "pairs")
        report = {"fresh_pairs": len(fresh), "fresh_label_agreement": label_agreement(fresh)}
        for name, folder in (("round 1", first), ("round 2", out)):
            replies = read_output(folder, "eval")["replies"]
            report[name] = {rm: ranks_like_gold(score, gold_fn, measured, replies, sft_replies)
                            for rm, score in scorers.items()}
        (out / "online.json").write_text(json.dumps(report, indent=1))

    return _build_with_checkpoints("online", profile, ONLINE_FIELDS, [sft, reward, samples, first], train_fn, force,
                                   evaluate_fn)


# ------------------------------------------------------------------------------------------------------------
# PPO's way up the reward-KL plane, measured on held-out prompts (Bai et al. 2022; Gao et al. 2022)
# ------------------------------------------------------------------------------------------------------------
def trajectory_stage(profile, force: bool = False) -> Path:
    """The weak-KL PPO run (:func:`~rrhf_lite.course.profiles.weak_kl_profile`: a small fixed KL coefficient) measured
    like every method, on the held-out prompts, at each snapshot of its adapter.

    A rollout's own numbers (``history.json``) are 64 training prompts, one reply each, from a policy that is
    changing; a snapshot's are ``eval_prompts`` held-out prompts with fresh samples, and keep the per-reply values
    for intervals. ``trajectory.json`` holds one point per snapshot (``iteration``, ``report``, ``per_reply``), the
    SFT model first as iteration 0 (KL exactly 0). Lesson 08 fits reward against sqrt(KL) on these points (Bai et al.
    2022) and follows the gold and proxy reward along the run.
    """
    weak = weak_kl_profile(profile)
    run, samples = method_stage(weak, "ppo"), samples_stage(profile)

    def build(out: Path) -> None:
        baseline = read_output(samples, "sft_eval")
        points = [{"iteration": 0, "report": baseline["report"], "per_reply": baseline["per_reply"]}]
        for snapshot in sorted((run / "snapshots").iterdir()):
            evaluation = evaluate_adapter(profile, snapshot / "adapter")
            points.append({"iteration": int(snapshot.name), "report": evaluation["report"],
                           "per_reply": evaluation["per_reply"]})
        (out / "trajectory.json").write_text(json.dumps({"points": points}, indent=1))

    return build_or_load("ppo-trajectory", weak, METHOD_FIELDS["ppo"], build, depends_on=[run, samples],
                         code=STAGE_CODE["ppo-trajectory"], force=force)
