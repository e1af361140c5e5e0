"""The shared training loop: it learns, logs, evaluates, stops on NaN, resumes exactly, and runs data-parallel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrhf_lite.loop import CHECKPOINT_FILE, train, warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
from loop_task import TRUE_W, make_batches, make_model, mse_step  # noqa: E402

KW = dict(lr=0.1, log_every=5, progress=False)


def test_learns_and_logs():
    model = make_model()
    history = train(model, make_batches(), mse_step, steps=100, **KW)
    assert [row["step"] for row in history] == list(range(5, 101, 5))
    assert history[-1]["loss"] < 0.01 * history[0]["loss"]
    assert torch.allclose(model.weight.squeeze(), TRUE_W, atol=0.05)
    assert {"lr", "grad_norm", "batch_size"} <= set(history[0])


def test_schedule_warms_up_then_decays_to_ten_percent():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.1)


def test_eval_is_logged_on_eval_steps():
    history = train(make_model(), make_batches(), mse_step, steps=20, eval_every=10,
                    eval_fn=lambda m: {"w0": m.weight[0, 0]}, **KW)
    assert [("eval_w0" in row) for row in history] == [False, True, False, True]


def test_non_finite_loss_stops_with_the_step(tmp_path):
    calls = {"n": 0}

    def exploding(model, batch):
        calls["n"] += 1
        loss, metrics = mse_step(model, batch)
        return (loss * float("nan") if calls["n"] == 13 else loss), metrics

    with pytest.raises(FloatingPointError, match="at step 13"):
        train(make_model(), make_batches(), exploding, steps=30, checkpoint_dir=tmp_path, checkpoint_every=5, **KW)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["step"] == 10  # last good checkpoint kept


def test_interrupted_run_resumes_to_identical_numbers(tmp_path):
    reference_model = make_model()
    reference = train(reference_model, make_batches(), mse_step, steps=30, **KW)

    class Interrupt(Exception):
        pass

    calls = {"n": 0}

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] == 18:
            raise Interrupt
        return mse_step(model, batch)

    with pytest.raises(Interrupt):
        train(make_model(), make_batches(), interrupted, steps=30, checkpoint_dir=tmp_path, checkpoint_every=10, **KW)
    resumed_model = make_model()  # a fresh process would start from scratch weights too
    resumed = train(resumed_model, make_batches(), mse_step, steps=30, checkpoint_dir=tmp_path, checkpoint_every=10,
                    **KW)
    assert resumed == reference
    assert torch.equal(resumed_model.weight, reference_model.weight)


def test_checkpoint_every_must_align_with_logging():
    with pytest.raises(ValueError, match="multiple of log_every"):
        train(make_model(), make_batches(), mse_step, steps=10, checkpoint_dir="x", checkpoint_every=7, **KW)


def test_data_parallel_with_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` is accelerate's multi-process launcher (torchrun); the script's Accelerator(cpu=True) makes the
    # two ranks CPU processes that average gradients over gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).parent / "loop_task.py"),
           str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1)]
    # Gradients are averaged across processes, so both replicas hold the same weights ...
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    # ... while each process trained on its own shard of every epoch.
    first_epoch = [set(r["seen"][:32]) for r in ranks]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 64
    assert ranks[0]["history"][-1]["loss"] < ranks[0]["history"][0]["loss"]
