"""How a course stage trains: load the model as the profile says, train it with the profile's config for the method
(:mod:`rrhf_lite.methods`' trainers), save what it trained.

The stages of :mod:`rrhf_lite.course.pipeline` call these with their folders (and a checkpoint folder, so that an
interrupted stage resumes); the trainers themselves take model objects and know nothing of profiles.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

from safetensors.torch import save_file

from rrhf_lite.core.loop import save_run
from rrhf_lite.core.models import load_for_training, merge_adapter
from rrhf_lite.core.validation import (
    DataWarning,
    validate_demonstrations,
    validate_preference_dataset,
    validate_rankings,
)
from rrhf_lite.course.scoring import proxy_scorer, reward_normalisation
from rrhf_lite.course.sources import preference_data
from rrhf_lite.course.stages import read_output
from rrhf_lite.methods.dpo import train_dpo
from rrhf_lite.methods.grpo import GRPOConfig, train_grpo
from rrhf_lite.methods.ppo import PolicyAndValue, init_value_head, train_ppo, use_plain_sampling
from rrhf_lite.methods.ranking import train_pro, train_rrhf
from rrhf_lite.methods.reward import load_reward_model, normalised_scorer, train_reward_model
from rrhf_lite.methods.sft import train_sft

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
    ``out/history.json`` (:func:`rrhf_lite.core.loop.save_run`), and for SFT ``out/model``, the base with the adapter
    merged in; return the history.

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
    if method == "sft":  # the SFT model every later stage starts from: the base with the adapter merged in
        merge_adapter(init_path, out / "adapter", out / "model", dtype=profile.compute_dtype,
                      revision=profile.base_model_revision)
    return history


def train_reward_folder(profile, sft: Path, train_pairs, out: Path, ckpt: Path, eval_every: int | None = None) -> None:
    """Train a reward model from the SFT model on ``train_pairs`` (held-out accuracy on the test comparisons, every
    ``eval_every`` steps as :func:`~rrhf_lite.methods.reward.train_reward_model`) into ``out``: its adapter and
    ``history.json``, and ``normalisation.json`` for :func:`proxy_scorer`."""
    eval_pairs = preference_data(profile, "test", profile.rm_eval_pairs)
    config = profile.reward_config()
    config = config if eval_every is None else dataclasses.replace(config, eval_every=eval_every)
    train_folder(profile, "reward", sft / "model", train_pairs, out, ckpt, config=config, eval_pairs=eval_pairs)
    (out / "normalisation.json").write_text(json.dumps(reward_normalisation(profile, sft / "model", out)))


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
    ``out``: ``adapter/``, ``value_head.safetensors``, ``history.json`` and, with ``ppo_snapshot_every``, ``snapshots/``
    (kept beside the checkpoints until the run ends, so that a resumed run still has the earlier ones)."""
    model, tokenizer, reward_fn = ppo_models(profile, sft_dir, reward_dir)
    snapshots = (ckpt or out) / "snapshots"
    history = train_ppo(model, tokenizer, reward_fn, prompts, profile.ppo_config(), gold_fn=gold_fn,
                        checkpoint_dir=ckpt, snapshot_dir=snapshots, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    if profile.ppo_snapshot_every and snapshots != out / "snapshots":
        shutil.copytree(snapshots, out / "snapshots", dirs_exist_ok=True)
    save_run(out, model.policy, tokenizer, history, counted=model, method="ppo")
    save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()}, out / "value_head.safetensors")
    return history


def train_group_folder(profile, config: GRPOConfig, sft_dir: Path, reward_dir: Path, out: Path, ckpt: Path | None,
                       prompts: list[str], gold_fn=None, *, reward_fn=None, progress: bool = True) -> list[dict]:
    """GRPO or RLOO (``config.method``) from the SFT model with fresh LoRA adapters, rewarded by ``reward_fn`` (default:
    the reward model of ``reward_dir``, normalised on SFT samples as for PPO); saved in ``out``: ``adapter/`` and
    ``history.json``. ``gold_fn`` is only recorded."""
    policy, tokenizer = load_for_training(sft_dir / "model", profile, head="lm")
    reward_fn = proxy_scorer(profile, sft_dir, reward_dir) if reward_fn is None else reward_fn
    history = train_grpo(policy, tokenizer, reward_fn, prompts, config, gold_fn=gold_fn, checkpoint_dir=ckpt,
                         progress=progress)
    save_run(out, policy, tokenizer, history, method=config.method)
    return history
