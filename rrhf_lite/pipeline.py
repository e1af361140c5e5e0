"""The course's stages, each built from the ones before it and cached under ``runs/<profile>/<stage>/``.

A notebook asks for what it needs, e.g. ``sft_stage(profile)``; the first call trains the stage (and, if needed,
the stages before it) and saves it; every later call, from any notebook or process, loads it. Each stage names
the profile fields it depends on, so changing one of them builds a new entry instead of reusing a stale one.

    base    the tiny base model (on real profiles: the hub model, nothing to build)
    sft     base + LoRA fine-tuned on demonstrations, merged:  <stage>/model, <stage>/adapter, history.json
    reward  SFT model + LoRA + scalar head, on comparisons:  <stage>/adapter, history.json

This module also says which data each profile uses: the tiny world, or Anthropic's HH-RLHF.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .pretrain import train_base_model
from .stages import build_or_load, checkpoint_dir
from .world import TinyWorld

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
                                              "rm_warmup_steps", "rm_center_coef")


# ------------------------------------------------------------------------------------------------------------
# Data for a profile: the tiny world, or HH-RLHF
# ------------------------------------------------------------------------------------------------------------
def is_tiny_world(profile) -> bool:
    return profile.dataset == "tiny-world"


def sft_data(profile):
    """Demonstrations, ``prompt/completion``: the world's, or HH-RLHF's chosen replies (as in the DPO paper)."""
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).sft_dataset(profile.sft_examples,
                                                           expert_fraction=profile.sft_expert_fraction)
    pairs = preference_data(profile, "train", profile.sft_examples)
    return pairs.rename_column("chosen", "completion").remove_columns(["rejected"])


def preference_data(profile, split: str, n: int):
    """``n`` comparisons, ``prompt/chosen/rejected``, from the train or test split."""
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).preference_dataset(n, split)
    from .data import load_hh_rlhf

    return load_hh_rlhf(split=split, max_rows=n)


def eval_prompts(profile) -> list[str]:
    """Held-out prompts on which every lesson samples and judges its model."""
    if is_tiny_world(profile):
        return TinyWorld.from_profile(profile).sample_prompts(profile.eval_prompts, "test")
    return list(preference_data(profile, "test", profile.eval_prompts)["prompt"])


# ------------------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------------------
def _build_with_checkpoints(stage, profile, fields, depends_on, train_fn, force):
    """``build_or_load`` for a training stage whose checkpoints live in a stable folder until it completes."""
    ckpt = checkpoint_dir(stage, profile, fields, depends_on)

    def build(out: Path) -> None:
        train_fn(out, ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)

    return build_or_load(stage, profile, fields, build, depends_on=depends_on, force=force)


def base_model_path(profile, force: bool = False) -> str | Path:
    """Where the base model lives: the hub id on real profiles, or the cached tiny model (trained if missing)."""
    if profile.base_model is not None:
        return profile.base_model
    return build_or_load("base", profile, BASE_FIELDS, lambda out: train_base_model(profile, out), force=force)


def sft_stage(profile, force: bool = False) -> Path:
    """The SFT stage folder; the merged SFT model is ``sft_stage(profile) / "model"``."""
    from .sft import train_sft

    base = base_model_path(profile)
    return _build_with_checkpoints(
        "sft", profile, SFT_FIELDS, [base],
        lambda out, ckpt: train_sft(profile, base, sft_data(profile), out, checkpoint_dir=ckpt), force)


def reward_stage(profile, force: bool = False) -> Path:
    """The reward-model stage folder: a LoRA adapter with a scalar head on top of the SFT model."""
    from .reward import train_reward_model

    sft = sft_stage(profile)

    def train_fn(out: Path, ckpt: Path):
        train_pairs = preference_data(profile, "train", profile.rm_pairs)
        eval_pairs = preference_data(profile, "test", profile.rm_eval_pairs)
        return train_reward_model(profile, sft / "model", train_pairs, eval_pairs, out, checkpoint_dir=ckpt)

    return _build_with_checkpoints("reward", profile, REWARD_FIELDS, [sft], train_fn, force)
