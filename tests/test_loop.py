"""The shared training loop: it learns, logs, evaluates, stops on NaN, resumes exactly, and runs data-parallel."""

import sys
from pathlib import Path

import pytest
import torch

from rrhf_lite.core.loop import CHECKPOINT_FILE, train, warmup_cosine
from rrhf_lite.core.parallel import split_batches

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


def test_split_batches_gives_each_process_a_slice_of_every_batch():
    """Data-parallel processes see the batches one process would, each a slice of it (sizes differing by at most
    one row), whatever the batch size; the stages' equality with one process is tests/test_data_parallel.py."""
    whole = [batch["index"].tolist() for batch in make_batches(n=31, batch_size=7)]  # 7, 7, 7, 7 and 3 rows
    for world in (2, 3):
        slices = [[(rows, batch["index"].tolist())
                   for rows, batch in split_batches(make_batches(n=31, batch_size=7), rank, world)]
                  for rank in range(world)]
        for number, indices in enumerate(whole):
            parts = [slices[rank][number] for rank in range(world)]
            assert sum((part for _, part in parts), []) == indices
            assert [rows for rows, _ in parts] == [len(part) for _, part in parts]
            assert max(rows for rows, _ in parts) - min(rows for rows, _ in parts) <= 1
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        list(split_batches(make_batches(n=2, batch_size=2), 0, 3))
