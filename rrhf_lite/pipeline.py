"""The course's stages, each built from the ones before it and cached under ``runs/<profile>/<stage>/``.

A notebook asks for what it needs, e.g. ``base_model_path(profile)``; the first call trains the stage and saves
it, every later call (from any notebook or process) loads it. Each stage names the profile fields it depends on,
so changing one of them (say ``pretrain_steps``) builds a new entry instead of reusing a stale one.
"""

from __future__ import annotations

from pathlib import Path

from .pretrain import train_base_model
from .stages import build_or_load

# Profile fields the tiny base model depends on.
BASE_FIELDS = ("seed", "dataset", "world_harmful_fraction", "world_label_temperature", "world_test_fraction",
               "pretrain_dialogues", "tokenizer_vocab_size", "n_layer", "n_head", "hidden_size",
               "intermediate_size", "max_length", "pretrain_steps", "pretrain_batch_size", "pretrain_lr",
               "pretrain_warmup_steps", "weight_decay", "max_grad_norm")


def base_model_path(profile, force: bool = False) -> str | Path:
    """Where the base model lives: the hub id on real profiles, or the cached tiny model (trained if missing)."""
    if profile.base_model is not None:
        return profile.base_model
    return build_or_load("base", profile, BASE_FIELDS, lambda out: train_base_model(profile, out), force=force)
