"""Shared test fixtures: a small Llama and its tokenizer, built from the tiny world and saved like a hub model."""

import json
from pathlib import Path

import pytest

from rrhf_lite.core.models import build_tokenizer
from rrhf_lite.course.pretrain import build_tiny_model
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld

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
    from rrhf_lite.core.models import load_for_training

    root = tmp_path_factory.mktemp("ppo")
    model_dir, reward_dir = root / "sft" / "model", root / "reward"
    save_small_model(model_dir)
    reward_model, reward_tokenizer = load_for_training(model_dir, get_profile("tiny", **SMALL), head="reward")
    reward_model.save_pretrained(reward_dir / "adapter")
    reward_tokenizer.save_pretrained(reward_dir / "adapter")
    (reward_dir / "normalisation.json").write_text(json.dumps(STATS))
    return root / "sft", reward_dir


def pytest_collection_modifyitems(items):
    """Order the suite for two workers that take one test at a time (``--maxschedchunk 1`` in the Makefile).

    The tiny profile's stages are the long pole: ``test_compare``'s table test builds the chain base -> SFT -> reward
    model -> samples and the stages only it and lesson 09 need, so it goes first, on one worker. The other worker
    meanwhile runs what needs none of those stages: the real track's rehearsal (its lessons, the install and study
    tests), then the unit tests. By then the chain is built, and it trains the four methods (``test_pipeline``) and
    lesson 08's GRPO, RLOO and GRPO on the gold judge (its lesson), then runs the two tiny lessons that train most of
    their own (06's DPO data sets and beta sweep, 05's second PRO), then lesson 09's firm-sweep check and the worked
    solutions that train most, longest first, so that the suite ends on the other tiny lessons and solutions, short,
    which both workers share. Within each group the order is kept.
    """
    heavy_lessons = ("test_lesson[tiny-06_dpo]", "test_lesson[tiny-05_pro]")
    early_lessons = ("test_lesson[tiny-08_grpo_rloo]",)  # GRPO, RLOO, GRPO on the gold judge: off the table's worker
    # what trains or samples most among the rest, longest first: lesson 09's check on a firm sweep (two PPO runs), the
    # worked solutions of lessons 06 (IPO, two long DPO runs), 08 (GRPO), 02 (a reward model), 03 (1,600 samples), 04
    heavy_tail = ("test_lesson_09s_overoptimisation_check_fails_when_the_sweep_stays_firm",
                       "test_solution[06_dpo]", "test_solution[08_grpo_rloo]", "test_solution[02_reward_model]",
                       "test_solution[03_sampling_best_of_n]", "test_solution[04_rrhf]")
    needs_tiny_stages = ("test_pipeline.py", "test_results_table_on_the_tiny_profile", "test_lesson[tiny-",
                         "test_lesson_09s_overoptimisation_check", "test_solution[")

    def rank(item) -> int:
        if item.nodeid.endswith("test_results_table_on_the_tiny_profile"):
            return 0
        if any(name in item.nodeid for name in ("test_rehearsal", "test_lesson[rehearsal-", "test_install",
                                                "test_study")):
            return 1
        if not any(name in item.nodeid for name in needs_tiny_stages):
            return 2
        if "test_method_raises_mean_gold_reward_over_sft" in item.nodeid or item.name in early_lessons:
            return 3
        if item.name in heavy_lessons:
            return 4 + heavy_lessons.index(item.name)
        if item.name in heavy_tail:  # longest first, so that the suite ends on short tests on both workers
            return 6 + heavy_tail.index(item.name)
        return 6 + len(heavy_tail)

    items.sort(key=rank)  # a stable sort keeps the order within each rank
    # `make test-unit` leaves out what trains the course: the lessons, the tiny stages' chain, the rehearsal, the
    # install into a fresh environment, the website's browser test
    for item in items:
        if any(name in item.nodeid for name in (*needs_tiny_stages, "test_lessons.py", "test_rehearsal", "test_install",
                                                "test_study", "test_site")):
            item.add_marker(pytest.mark.course)
