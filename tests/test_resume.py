"""Interrupted runs lose nothing: a training process killed with SIGKILL resumes from its checkpoint, in a new
process, and ends with the same metrics and weights as a run that was never interrupted."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rrhf_lite.core.loop import CHECKPOINT_FILE, train

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import resume_task  # noqa: E402
from loop_task import make_batches, make_model, mse_step  # noqa: E402


def script(*args: Path | str) -> list[str]:
    return [sys.executable, str(HERE / "resume_task.py"), *map(str, args)]


def same_history(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and x == pytest.approx(y, rel=1e-6, abs=1e-9)
                                    for x, y in zip(a, b))


def test_a_run_killed_after_its_checkpoint_resumes_in_a_new_process_to_the_same_numbers(saved_model, tmp_path):
    # Same thread count in the subprocesses as here, so that CPU sums are done in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    ckpt, out = tmp_path / "run" / "ckpt", tmp_path / "run" / "out"
    killed = subprocess.Popen(script(saved_model, out, ckpt, "slow-after-checkpoint"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "run" / "progress"

    def steps_started() -> int:
        text = progress.read_text() if progress.exists() else ""
        return int(text) if text else 0

    try:
        # Wait until the checkpoint of step 10 is written and step 11 has been trained (step 12 has started): that
        # step is lost with the process and must be redone from the checkpoint.
        deadline = time.time() + 240
        while steps_started() < resume_task.CHECKPOINT_EVERY + 2 and killed.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert killed.poll() is None, f"the run ended before it could be killed:\n{killed.stderr.read()[-3000:]}"
        assert (ckpt / CHECKPOINT_FILE).exists()
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert steps_started() >= resume_task.CHECKPOINT_EVERY + 2  # it was killed mid-way, past its checkpoint
    assert torch.load(ckpt / CHECKPOINT_FILE, weights_only=False)["step"] == resume_task.CHECKPOINT_EVERY
    assert not out.exists()

    resumed = subprocess.run(script(saved_model, out, ckpt), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {resume_task.CHECKPOINT_EVERY}" in resumed.stdout + resumed.stderr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uninterrupted = resume_task.run(saved_model, tmp_path / "uninterrupted")
    history = json.loads((out / "history.json").read_text())["history"]
    assert [row["step"] for row in history] == list(range(1, resume_task.STEPS + 1))
    assert all(math.isfinite(row["loss"]) for row in history) and history[-1]["loss"] < history[0]["loss"]
    assert same_history(history, uninterrupted)
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "uninterrupted" / "adapter" / "adapter_model.safetensors")
    assert weights.keys() == reference.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], reference[name], rtol=1e-5, atol=1e-7)
    assert any(w.abs().sum() > 0 for n, w in weights.items() if "lora_B" in n)  # it did train


def test_an_unreadable_checkpoint_is_moved_aside_and_training_starts_over(tmp_path):
    reference = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 half of a zip file")  # a copy cut short
    with pytest.warns(UserWarning, match=r"cannot be read .* moved to checkpoint\.pt\.unreadable-.* from step 0"):
        history = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
                        checkpoint_dir=tmp_path, checkpoint_every=10)
    assert history == reference
    # the bad file kept aside (for a look), and a fresh checkpoint written by the new run
    names = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert names == [CHECKPOINT_FILE, f"{CHECKPOINT_FILE}.unreadable"]
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["step"] == 10  # plain tensors and numbers


class Payload:
    """What an attacker plants: unpickling it runs a command (here: creating a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_the_checkpoint_folder_does_not_run(tmp_path):
    """A checkpoint is read with weights_only=True: a pickle that asks for any object but tensors and plain containers
    is refused before anything runs, moved aside with a warning that names it, and training starts over."""
    marker = tmp_path / "the-payload-ran"
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    torch.save({"step": 10, "history": "[]", "trainable": {}, "optimizer": {}, "scheduler": {},
                "torch_rng": Payload(marker)}, checkpoints / CHECKPOINT_FILE)
    reference = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False)
    with pytest.warns(UserWarning, match=rf"checkpoint {checkpoints / CHECKPOINT_FILE} cannot be read \(Unpickling"):
        history = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
                        checkpoint_dir=checkpoints, checkpoint_every=10)
    assert not marker.exists()
    assert history == reference


def test_a_checkpoint_of_another_model_is_moved_aside_instead_of_failing_every_retry(tmp_path):
    reference = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
                      checkpoint_dir=tmp_path, checkpoint_every=10)  # leaves its checkpoint of step 10
    other = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    other["trainable"] = {f"renamed.{name}": value for name, value in other["trainable"].items()}
    torch.save(other, tmp_path / CHECKPOINT_FILE)
    with pytest.warns(UserWarning, match=r"trainable parameters are not the model's .* moved to"):
        history = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
                        checkpoint_dir=tmp_path, checkpoint_every=10)
    assert history == reference


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


@pytest.mark.parametrize("damage, reason", [
    (lambda state: state["trainable"].__setitem__("weight", torch.zeros(2, 5)), r"its weight is \(2, 5\), the model's"),
    (lambda state: state["trainable"]["weight"].__setitem__((0, 0), float("nan")), "its weight holds NaN"),
    (_set("step", 10**6), "its step is 1000000, not one of this run's"),
    (_set("step", -5), "its step is -5"),
    (_set("step", 10.5), "its step is 10.5"),
    (_set("history", '{"a": 1}'), "its history is not a list of rows"),
    (_set("optimizer", {}), "its optimizer or scheduler state"),
    (_set("torch_rng", torch.zeros(3)), "its torch_rng is not a generator state"),
], ids=["shape", "nan weight", "step beyond the run", "negative step", "float step", "history", "optimizer", "rng"])
def test_a_checkpoint_that_cannot_be_restored_is_moved_aside_before_anything_is_restored(tmp_path, damage, reason):
    """A valid torch file with the wrong contents: before, wrong shapes, the optimizer or the generator state failed
    on every retry, a NaN weight stopped at the next step with 'lower the learning rate' (keeping the checkpoint), a
    step beyond the run returned its old weights untrained, a negative one trained longer. Now each is moved aside,
    named, and the run starts over to the numbers of an uninterrupted one."""
    reference = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False)
    train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
          checkpoint_dir=tmp_path, checkpoint_every=10)  # leaves its checkpoint of step 10
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    damage(state)
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.warns(UserWarning, match=rf"cannot be read \(\w+: {reason}.*moved to"):
        history = train(make_model(), make_batches(), mse_step, steps=20, lr=0.1, log_every=5, progress=False,
                        checkpoint_dir=tmp_path, checkpoint_every=10)
    assert history == reference
