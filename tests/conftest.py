"""Shared test fixtures: a small Llama and its tokenizer, built from the tiny world and saved like a hub model."""

import json
from pathlib import Path

import pytest

from rrhf_lite.models import build_tiny_model, build_tokenizer
from rrhf_lite.profiles import get_profile
from rrhf_lite.world import TinyWorld

# A model small enough for unit tests (a few seconds to build), with small LoRA adapters.
SMALL = dict(n_layer=2, hidden_size=64, intermediate_size=128, n_head=2, lora_r=4, lora_alpha=8)
# A PPO run small enough for a test: 8 prompts per rollout, short replies.
RUN = dict(SMALL, ppo_iterations=2, ppo_rollout_prompts=8, ppo_minibatch_size=4, ppo_epochs=1, max_new_tokens=8)
STATS = {"mean": 0.5, "std": 2.0}  # the reward normalisation written by the `stages` fixture


def save_small_model(path: Path) -> Path:
    """Build the ``SMALL`` model and its tokenizer and ``save_pretrained`` both into ``path``."""
    tokenizer = build_tokenizer(TinyWorld(seed=0).dialogues(1000), vocab_size=400)
    build_tiny_model(tokenizer, get_profile("tiny", **SMALL)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    """Folder of a saved ``SMALL`` model, shared by every test of a worker (tests must not modify it)."""
    return save_small_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def stages(tmp_path_factory) -> tuple[Path, Path]:
    """What PPO starts from: a small "SFT model" (``sft/model``) and a reward model on it (``reward/adapter``,
    ``normalisation.json``). Returns ``(sft_dir, reward_dir)``; tests must not modify them."""
    from rrhf_lite.models import load_for_training

    root = tmp_path_factory.mktemp("ppo")
    model_dir, reward_dir = root / "sft" / "model", root / "reward"
    save_small_model(model_dir)
    reward_model, reward_tokenizer = load_for_training(model_dir, get_profile("tiny", **SMALL), head="reward")
    reward_model.save_pretrained(reward_dir / "adapter")
    reward_tokenizer.save_pretrained(reward_dir / "adapter")
    (reward_dir / "normalisation.json").write_text(json.dumps(STATS))
    return root / "sft", reward_dir


def pytest_collection_modifyitems(items):
    """Run the real track's rehearsal (and the install test) after the tiny profile's tests and notebooks.

    The tiny profile's stages are the suite's long pole (``test_compare`` builds nearly all of them); with the quick
    rehearsal tests last, both workers spend the first minutes building tiny stages side by side instead of one
    worker building them alone.
    """
    late = ("test_rehearsal", "test_install", "test_study")
    items.sort(key=lambda item: any(name in item.nodeid for name in late))  # a stable sort keeps the order otherwise
