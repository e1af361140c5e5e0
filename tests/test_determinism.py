"""Determinism: on the CPU, the same seed gives the same numbers, for every stage's training function.

Each stage is trained twice on a tiny configuration and both runs must agree exactly: the metrics history and every
saved weight. Then every stage is trained once more in a fresh process with another ``PYTHONHASHSEED``, which must
agree too. One stage is also trained with another seed, to show that these comparisons can tell runs apart.

Run as a script (``python tests/test_determinism.py OUT MODEL SFT_DIR REWARD_DIR``) it trains every stage into
``OUT/<stage>``.
"""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import RUN, SMALL  # tests/conftest.py
from safetensors.torch import load_file

from rrhf_lite.course.pretrain import train_base_model
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.training import train_folder, train_ppo_folder
from rrhf_lite.course.world import TinyWorld

TINY = dict(SMALL, log_every=1, max_length=96, pretrain_dialogues=200, pretrain_steps=3, pretrain_batch_size=8,
            pretrain_warmup_steps=1, tokenizer_vocab_size=400, sft_steps=3, sft_batch_size=4, sft_warmup_steps=1,
            rm_steps=3, rm_batch_size=4, rm_warmup_steps=1, rm_eval_every=3, ranking_steps=2, ranking_batch_size=2,
            ranking_warmup_steps=1, dpo_steps=3, dpo_batch_size=4, dpo_warmup_steps=1)
WORLD = TinyWorld(seed=0)


def weights(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor a training function saved under ``out`` (safetensors files and ``*.pt`` state dicts)."""
    tensors = {}
    for file in sorted(out.rglob("*.safetensors")):
        tensors.update({f"{file.relative_to(out)}:{k}": v for k, v in load_file(file).items()})
    for file in sorted(out.rglob("*.pt")):
        tensors.update({f"{file.relative_to(out)}:{k}": v for k, v in torch.load(file).items()})
    return tensors


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    assert a and a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"same seed, different weights: {different[:5]}"


def assert_same_files(a_dir: Path, b_dir: Path) -> None:
    """Every file the two runs wrote, byte for byte: weights, adapter configs, tokenizers, histories (no machine's
    paths, no set written in a process's own order)."""
    files = sorted(p.relative_to(a_dir) for p in a_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b_dir) for p in b_dir.rglob("*") if p.is_file())
    different = [str(f) for f in files if (a_dir / f).read_bytes() != (b_dir / f).read_bytes()]
    assert not different, f"same seed, different files: {different}"


def run_twice(train, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Train into ``tmp_path/a`` and ``tmp_path/b``; check the two runs saved identical weights and files; return
    histories."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = train(tmp_path / "a"), train(tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert_same_files(tmp_path / "a", tmp_path / "b")
    assert first and all(math.isfinite(v) for row in first for v in row.values() if isinstance(v, float))
    return first, second


def profile_for(stage: str, **overrides):
    return get_profile("tiny", **(RUN if stage == "ppo" else TINY), **overrides)


STAGES = {
    "pretrain": lambda p, out, paths: train_base_model(p, out, progress=False),
    "sft": lambda p, out, paths: train_folder(p, "sft", paths["model"], WORLD.sft_dataset(16), out, progress=False),
    "reward": lambda p, out, paths: train_folder(p, "reward", paths["model"], WORLD.preference_dataset(16), out,
                                                 eval_pairs=WORLD.preference_dataset(8, "test"), progress=False),
    "rrhf": lambda p, out, paths: train_folder(p, "rrhf", paths["model"], WORLD.ranking_dataset(8, k=3), out,
                                               progress=False),
    "pro": lambda p, out, paths: train_folder(p, "pro", paths["model"], WORLD.ranking_dataset(8, k=3), out,
                                              progress=False),
    "dpo": lambda p, out, paths: train_folder(p, "dpo", paths["model"], WORLD.preference_dataset(8), out,
                                              progress=False),
    "ppo": lambda p, out, paths: train_ppo_folder(p, paths["sft"], paths["reward"], out, None,
                                                  WORLD.sample_prompts(16, split="train"), progress=False),
}


@pytest.fixture(scope="module")
def paths(saved_model, stages):
    return {"model": saved_model, "sft": stages[0], "reward": stages[1]}


@pytest.mark.parametrize("stage", list(STAGES))
def test_same_seed_same_numbers(stage, paths, tmp_path):
    first, second = run_twice(lambda out: STAGES[stage](profile_for(stage), out, paths), tmp_path)
    assert first == second


def test_a_fresh_process_with_another_hash_seed_gets_the_same_numbers(paths, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, __file__, str(tmp_path / "sub"), str(paths["model"]), str(paths["sft"]),
                             str(paths["reward"])], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage, train in STAGES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            here = train(profile_for(stage), tmp_path / "here" / stage, paths)
        there = json.loads((tmp_path / "sub" / stage / "history.json").read_text())["history"]
        assert here == there, stage
        assert_same_weights(tmp_path / "here" / stage, tmp_path / "sub" / stage)
        assert_same_files(tmp_path / "here" / stage, tmp_path / "sub" / stage)  # a set's order is the hash seed's


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_two_builds_from_two_folders_write_the_same_bytes(stage, paths, tmp_path):
    """The same stage built from a base model in another folder (another runs folder, another machine): no path of
    this machine in what it saves (peft records the base model's folder in adapter_config.json)."""
    import shutil

    outs = []
    for name in ("one", "two"):
        model = shutil.copytree(paths["model"], tmp_path / name / "base")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            STAGES[stage](profile_for(stage), tmp_path / name / "out", {**paths, "model": model})
        outs.append(tmp_path / name / "out")
    assert_same_files(*outs)


def test_another_seed_gives_other_numbers(paths, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seed0 = STAGES["sft"](get_profile("tiny", **TINY), tmp_path / "a", paths)
        seed1 = STAGES["sft"](get_profile("tiny", **TINY, seed=1), tmp_path / "b", paths)
    assert [row["loss"] for row in seed0] != [row["loss"] for row in seed1]
    a, b = weights(tmp_path / "a" / "adapter"), weights(tmp_path / "b" / "adapter")
    assert any(not torch.equal(a[name], b[name]) for name in a)


if __name__ == "__main__":
    out, model, sft_dir, reward_dir = (Path(a) for a in sys.argv[1:5])
    warnings.simplefilter("ignore")
    for name, train_stage in STAGES.items():
        train_stage(profile_for(name), out / name, {"model": model, "sft": sft_dir, "reward": reward_dir})
