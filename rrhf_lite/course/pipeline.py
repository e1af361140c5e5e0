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

This module is the table of stages: what each depends on (profile fields, upstream stages, code) and what it calls.
The work is elsewhere: how a stage trains (:mod:`rrhf_lite.course.training`: load, train with the profile's config,
save), how the course measures (:mod:`rrhf_lite.course.scoring`: samples, scorers, evaluations), which data a profile
uses (:mod:`rrhf_lite.course.sources`), and where the ``rehearsal`` profile's stand-ins come from
(:mod:`rrhf_lite.course.standins`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import datasets

from rrhf_lite.core.measure import CostMeter
from rrhf_lite.core.validation import sampled_replies
from rrhf_lite.course.online import ranks_like_gold, run_round
from rrhf_lite.course.pretrain import train_base_model
from rrhf_lite.course.profiles import weak_kl_profile
from rrhf_lite.course.scoring import (
    build_samples,
    evaluate_adapter_with,
    judge_normalisation,
    judge_scorer,
    proxy_scorer,
)
from rrhf_lite.course.sources import (
    evaluation_prompts,
    has_gold,
    is_tiny_world,
    preference_data,
    rollout_prompts,
    sft_data,
)
from rrhf_lite.course.stages import TrainingRun, build_or_load, checkpoint_dir, read_output, training_run
from rrhf_lite.course.standins import resolve
from rrhf_lite.course.training import train_folder, train_group_folder, train_ppo_folder, train_reward_folder
from rrhf_lite.course.world import gold_rewards, label_agreement
from rrhf_lite.methods.candidates import perplexity_filter
from rrhf_lite.methods.ranking import shorten_rankings

# What a stage's key holds besides its upstream stages and its code: the configs it trains with ("model_config",
# "dpo_config": the profile's methods that build them, hashed whole, so a field added to a config enters every key
# that uses it) and the course's own fields it reads (the world, the data, the evaluation).
WORLD_FIELDS = ("seed", "dataset", "dataset_revision", "world_harmful_fraction", "world_label_temperature",
                "world_test_fraction")
BASE_FIELDS = WORLD_FIELDS + ("base_model", "pretrain_dialogues", "tokenizer_vocab_size", "n_layer", "n_head",
                              "hidden_size", "intermediate_size", "max_length", "pretrain_steps",
                              "pretrain_batch_size", "pretrain_lr", "pretrain_warmup_steps", "weight_decay",
                              "max_grad_norm")
SFT_FIELDS = WORLD_FIELDS + ("sft_examples", "sft_expert_fraction", "model_config", "sft_config")
REWARD_FIELDS = WORLD_FIELDS + ("rm_pairs", "rm_eval_pairs", "model_config", "reward_config",
                                # the normalisation statistics come from SFT samples drawn with these:
                                "eval_prompts", "max_new_tokens", "sample_temperature")
EVAL_FIELDS = ("eval_prompts", "eval_samples_per_prompt", "max_new_tokens", "sample_temperature", "max_length",
               "generation_batch_size")
SAMPLES_FIELDS = WORLD_FIELDS + EVAL_FIELDS + ("compute_dtype", "sample_prompts", "samples_per_prompt",
                                               "base_samples_per_prompt", "sample_top_p", "bon_n")
METHOD_FIELDS = {
    "rrhf": EVAL_FIELDS + ("model_config", "rrhf_config"),
    "pro": EVAL_FIELDS + ("model_config", "pro_config", "pro_ranking_length"),
    "dpo": EVAL_FIELDS + ("model_config", "dpo_config", "ppl_quantile", "sample_prompts"),
    "simpo": EVAL_FIELDS + ("model_config", "simpo_config", "ppl_quantile", "sample_prompts"),
    "ppo": EVAL_FIELDS + REWARD_FIELDS + ("model_config", "ppo_config", "ppo_value_init"),
    "grpo": EVAL_FIELDS + REWARD_FIELDS + ("model_config", "grpo_config"),
    "rloo": EVAL_FIELDS + REWARD_FIELDS + ("model_config", "rloo_config"),
}
METHOD_FIELDS = {method: fields + ("method_seed",) for method, fields in METHOD_FIELDS.items()}
# The modules whose source (with every package module they import) enters each stage's key, so that an edit to the
# code that builds a stage rebuilds it (rrhf_lite/course/provenance.py). "course.sources" brings in the data: the tiny
# world, HH-RLHF loading, the prompts. This file's own glue is not hashed: it imports everything, and would rebuild
# everything.
# how a policy is measured: samples, proxy, gold judge
SCORING_CODE = ("course.scoring", "methods.evaluate", "methods.reward", "methods.judge", "course.sources")
STAGE_CODE = {
    "base": ("course.pretrain", "course.sources"),
    "sft": ("methods.sft", "course.sources"),
    "reward": ("methods.reward", "core.sampling", "course.sources"),
    "judge": ("methods.judge", "methods.reward", "core.sampling", "course.sources"),
    "samples": ("core.sampling", "methods.candidates", "core.measure", *SCORING_CODE),
    "rrhf": ("methods.ranking", *SCORING_CODE),
    "pro": ("methods.ranking", *SCORING_CODE),
    "dpo": ("methods.dpo", "methods.candidates", *SCORING_CODE),
    "simpo": ("methods.dpo", "methods.candidates", *SCORING_CODE),
    "ppo": ("methods.ppo", *SCORING_CODE),
    "grpo": ("methods.grpo", *SCORING_CODE),
    "rloo": ("methods.grpo", *SCORING_CODE),
    "online": ("course.online", "methods.ranking", "methods.candidates", "core.sampling", *SCORING_CODE),
    "ppo-trajectory": SCORING_CODE,
}
DPO_DATA = ("pairs", "filtered", "random", "labels")
# What GRPO and RLOO are rewarded by: the reward model of stage 02 (normalised, as PPO), or the gold judge itself, a
# rule checked like a verifier (RLVR: Lambert et al. 2024; on real profiles the judge model, which is no verifier)
GROUP_REWARDS = ("proxy", "gold")


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

    return _build_with_checkpoints("sft", profile, SFT_FIELDS, [base], train_fn, force)


def reward_stage(profile, force: bool = False) -> Path:
    """The reward-model stage folder: a LoRA adapter with a scalar head on top of the SFT model."""
    sft = sft_stage(profile)

    def train_fn(out: Path, ckpt: Path):
        train_reward_folder(profile, sft, preference_data(profile, "train", profile.rm_pairs), out, ckpt)

    return _build_with_checkpoints("reward", profile, REWARD_FIELDS, [sft], train_fn, force)


JUDGE_FIELDS = WORLD_FIELDS + ("judge_model", "judge_revision", "compute_dtype", "max_length", "eval_prompts",
                               "max_new_tokens", "sample_temperature")


def judge_stage(profile, force: bool = False) -> Path:
    """Real profiles: the judge's mean and std on the SFT model's samples (``normalisation.json``), like the
    proxy's (:func:`rrhf_lite.course.scoring.reward_normalisation`), so that judge scores are in "SFT standard
    deviations"."""
    if profile.judge_model is None:
        raise ValueError(f"profile {profile.name!r} has no judge_model")
    sft, judge = sft_stage(profile), resolve(profile.judge_model, profile)

    def build(out: Path) -> None:
        (out / "normalisation.json").write_text(json.dumps(judge_normalisation(profile, sft / "model", judge)))

    return build_or_load("judge", profile, JUDGE_FIELDS, build, depends_on=[sft, judge], code=STAGE_CODE["judge"],
                         force=force)


def gold_scorer(profile):
    """The gold judge as ``score(prompts, replies) -> list[float]``: the tiny world's judge, or on real profiles the
    ``judge_model`` (normalised on SFT samples, see :func:`judge_stage`); None when a profile has neither."""
    if is_tiny_world(profile):
        return gold_rewards
    if profile.judge_model is None:
        return None
    return judge_scorer(profile, read_output(judge_stage(profile), "normalisation"))


def gold_upstream(profile) -> list[Path]:
    """The stage a profile's gold scores depend on: the judge's normalisation on real profiles, none on tiny."""
    return [judge_stage(profile)] if not is_tiny_world(profile) and profile.judge_model is not None else []


def samples_stage(profile, force: bool = False) -> Path:
    """The sampling stage folder: ``rankings``, ``pairs`` and ``best_of_n`` datasets (``datasets.load_from_disk``)."""
    base, sft, reward = base_model_path(profile), sft_stage(profile), reward_stage(profile)
    return build_or_load("samples", profile, SAMPLES_FIELDS,
                         lambda out: build_samples(profile, base, sft, reward, gold_scorer(profile), out),
                         depends_on=[base, sft, reward, *gold_upstream(profile)], code=STAGE_CODE["samples"],
                         force=force)


# ------------------------------------------------------------------------------------------------------------
# The methods: RRHF, PRO, DPO. Each trains fresh LoRA adapters on the SFT model and is evaluated like the SFT model.
# ------------------------------------------------------------------------------------------------------------
def evaluate_adapter(profile, adapter_dir: Path) -> dict:
    """The SFT model with a trained adapter, measured like the SFT baseline of the samples stage
    (:func:`rrhf_lite.course.scoring.evaluate_adapter_with`)."""
    return evaluate_adapter_with(profile, adapter_dir, sft_stage(profile), reward_stage(profile),
                                 read_output(samples_stage(profile), "sft_eval"), gold_scorer(profile))


def load_samples(profile, name: str):
    """One dataset of the sampling stage: ``"rankings"``, ``"pairs"`` or ``"best_of_n"``."""
    return datasets.load_from_disk(samples_stage(profile) / name)


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
    """Train and evaluate ``method`` ("rrhf", "pro", "dpo", "simpo", "ppo", "grpo" or "rloo") from the SFT model;
    returns the stage folder.

    The folder holds ``adapter/`` (LoRA weights), ``history.json`` (training curves), ``cost.json`` (training wall
    time, peak memory, trainable parameters) and ``eval.json`` (gold and proxy
    reward, KL to the SFT model and win rate on held-out prompts, with the replies). ``data`` picks DPO's
    pairs (see :func:`dpo_pairs`; SimPO is DPO's trainer with ``profile.simpo_config()`` on the same pairs); RRHF and
    PRO train on the rankings of stage 03; PPO samples its own replies and scores them with the reward model of stage
    02; so do GRPO and RLOO (``data="proxy"``), or with the gold judge (``data="gold"``, :data:`GROUP_REWARDS`).
    """
    if method not in METHOD_FIELDS:
        raise ValueError(f"method must be one of {sorted(METHOD_FIELDS)}, got {method!r}")
    if method in ("grpo", "rloo") and data == "pairs":
        data = "proxy"  # the default of every method: what lesson 09's table compares
    sft, samples = sft_stage(profile), samples_stage(profile)
    trained = training_profile(profile)

    def train_fn(out: Path, ckpt: Path) -> None:
        if method in ("grpo", "rloo"):
            if data not in GROUP_REWARDS:
                raise ValueError(f"{method} is rewarded by one of {GROUP_REWARDS}, got data={data!r}")
            reward_fn = gold_scorer(profile) if data == "gold" else None  # None: the reward model of stage 02
            if data == "gold" and reward_fn is None:
                raise ValueError(f"profile {profile.name!r} has no gold judge to reward {method} with")
            config = trained.grpo_config(method)
            train_group_folder(trained, config, sft, reward_stage(profile), out, ckpt,
                               rollout_prompts(profile, config.prompts_per_iteration * config.iterations),
                               gold_scorer(profile), reward_fn=reward_fn)
            return
        if method == "ppo":
            train_ppo_folder(trained, sft, reward_stage(profile), out, ckpt,
                             rollout_prompts(profile, profile.ppo_rollout_prompts * profile.ppo_iterations),
                             gold_scorer(profile))
            return
        # RRHF, PRO and DPO train on lesson 03's samples, but for DPO on the labellers' pairs
        own_samples = not (method == "dpo" and data == "labels")
        with sampled_replies() if own_samples else contextlib.nullcontext():
            if method in ("dpo", "simpo"):
                train_data = dpo_pairs(profile, data)
            else:
                train_data = load_samples(profile, "rankings")
                if method == "pro" and profile.pro_ranking_length:
                    train_data = shorten_rankings(train_data, profile.pro_ranking_length)
            if method == "simpo":
                train_folder(trained, "dpo", sft / "model", train_data, out, ckpt, config=trained.simpo_config())
            else:
                train_folder(trained, method, sft / "model", train_data, out, ckpt)

    def evaluate_fn(out: Path) -> None:
        (out / "eval.json").write_text(json.dumps(evaluate_adapter(profile, out / "adapter"), indent=1))

    name = f"{method}-{data}" if method in ("dpo", "simpo") else f"{method}-gold" if data == "gold" else method
    return _build_with_checkpoints(name, profile, METHOD_FIELDS[method], [sft, samples], train_fn, force,
                                   evaluate_fn, code=STAGE_CODE[method])


def method_run(profile, method: str, data: str = "pairs") -> TrainingRun:
    """:func:`method_stage` (built on first use), read back: its history as a table, its held-out report, replies
    and per-reply values (:class:`~rrhf_lite.course.stages.TrainingRun`)."""
    return training_run(method_stage(profile, method, data))


# ------------------------------------------------------------------------------------------------------------
# One round of online data collection (Bai et al. 2022): see rrhf_lite/course/online.py
# ------------------------------------------------------------------------------------------------------------
ONLINE_FIELDS = tuple(dict.fromkeys(REWARD_FIELDS + SAMPLES_FIELDS + (
    "rrhf_config", "pro_config", "pro_ranking_length", "online_method", "online_samples_per_prompt")))


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
                      # held-out accuracy once, at the end: lesson 09 shows that one (the curve is lesson 02's)
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
    SFT model first as iteration 0 (KL exactly 0). Lesson 09 fits reward against sqrt(KL) on these points (Bai et al.
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
