"""Stages on several processes: ``accelerate launch --num_processes 2 -m rrhf_lite.course.build`` builds the SFT,
reward-model, DPO and RRHF stages with the numbers one process gets, writes each stage once, and PPO refuses to
start.

The two CPU processes talk over gloo (the launcher's ``--multi_gpu`` is its multi-process mode; with no GPU the
package makes them CPU processes). The stages are then trained again by this one process, on the very inputs the
data-parallel run cached (``--force`` on a copy, the last stage of the chain first), so that each comparison sees
the same data and initial weights.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL  # tests/conftest.py
from safetensors.torch import load_file

from rrhf_lite.course import build
from rrhf_lite.course.stages import STAGE_FILE
from rrhf_lite.methods.ppo import train_ppo

# A small course whose batches have odd sizes, so that the two processes get slices of unequal size (3 and 2 rows...)
# and SFT's token mean has to be weighted across them.
SMALL_COURSE = dict(
    SMALL, log_every=1, max_length=96, tokenizer_vocab_size=400,
    pretrain_dialogues=200, pretrain_steps=3, pretrain_batch_size=8, pretrain_warmup_steps=1,
    sft_examples=22, sft_steps=5, sft_batch_size=5, sft_warmup_steps=1,
    rm_pairs=20, rm_eval_pairs=8, rm_steps=4, rm_batch_size=5, rm_warmup_steps=1, rm_eval_every=2,
    sample_prompts=9, samples_per_prompt=2, base_samples_per_prompt=1, bon_n=2, bon_table_n=[2],
    ranking_steps=4, ranking_batch_size=3, ranking_warmup_steps=1, dpo_steps=4, dpo_batch_size=3, dpo_warmup_steps=1,
    eval_prompts=6, eval_samples_per_prompt=1, max_new_tokens=12, generation_batch_size=16)
STAGES = ["sft", "reward", "dpo", "rrhf"]


def build_args(runs: Path) -> list[str]:
    sets = [f"{k}={json.dumps(v)}" for k, v in {**SMALL_COURSE, "runs_dir": str(runs)}.items()]
    return ["--profile", "tiny", *(a for s in sets for a in ("--set", s))]


def adapter_weights(stage: Path) -> dict[str, torch.Tensor]:
    return {f"{f.parent.name}:{k}": v for f in sorted(stage.rglob("adapter_model.safetensors"))
            for k, v in load_file(f).items()}


def test_stages_on_two_processes_match_one_process(tmp_path):
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rrhf_lite.course.build",
           *STAGES, *build_args(parallel)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "waiting for another process" not in result.stdout + result.stderr  # no process waited for its partner
    assert result.stdout.count("building stage 'sft'") == 1  # the main process speaks for both

    # each stage written once: one complete folder, no other process's build left beside it
    stages = {}
    for name in ("base", "sft", "reward", "samples", "dpo-pairs", "rrhf"):
        folders = [p for p in (parallel / "tiny" / name).iterdir() if not p.name.endswith(".lock")]
        assert len(folders) == 1 and (folders[0] / STAGE_FILE).is_file(), (name, folders)
        stages[name] = folders[0]

    # the same stages trained again by one process, on the same cached inputs
    shutil.copytree(parallel, single)
    rebuilt = build.main([*reversed(STAGES), "--force", *build_args(single)])
    for name in STAGES:
        two, one = stages[name if name != "dpo" else "dpo-pairs"], Path(rebuilt[name])
        assert one.name == two.name  # the same stage key: same fields, upstream stages and code
        h2, h1 = (json.loads((s / "history.json").read_text())["history"] for s in (two, one))
        assert len(h1) == len(h2) >= 4
        for r1, r2 in zip(h1, h2):
            assert r1.keys() == r2.keys(), name
            for key in r1:
                if name == "dpo" and key == "reward_accuracy" and r1["step"] == 1:
                    # at step 1 the policy is the reference: every margin is 0 but for rounding (the reference's
                    # log-probs come from other batches), and the share of positive ones is rounding's, not DPO's
                    assert abs(r1["reward_margin"]) < 1e-5 and abs(r2["reward_margin"]) < 1e-5
                    continue
                assert abs(r1[key] - r2[key]) <= 1e-4 * (1 + abs(r1[key])), (name, key, r1[key], r2[key])
        w2, w1 = adapter_weights(two), adapter_weights(one)
        assert w1 and w1.keys() == w2.keys(), name
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


def test_ppo_refuses_to_train_on_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what `accelerate launch --num_processes 2` sets in each process
    with pytest.raises(RuntimeError, match="PPO trains on one process only"):
        train_ppo(None, None, lambda prompts, replies: [0.0] * len(replies), ["a prompt"])


def test_build_reads_overrides_as_json():
    assert build.parse_overrides(["sft_steps=20", "sft_lr=2e-3", "bon_table_n=[2, 4]", "base_model=/x/y"], "tiny") == \
        {"sft_steps": 20, "sft_lr": 2e-3, "bon_table_n": (2, 4), "base_model": "/x/y"}
    with pytest.raises(ValueError, match="field=value"):
        build.parse_overrides(["sft_steps"], "tiny")
