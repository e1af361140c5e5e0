"""A short SFT run on the small test model, as a script, for the resume test (``tests/test_resume.py``).

    python tests/resume_task.py MODEL_DIR OUT_DIR CHECKPOINT_DIR [slow-after-checkpoint]

trains with :func:`rrhf_lite.methods.sft.train_sft`, through the course's :func:`rrhf_lite.course.training.train_folder`
(checkpoint every 10 steps of 20). With ``slow-after-checkpoint`` each step after the first checkpoint writes its
number to ``CHECKPOINT_DIR/../progress`` and then waits 1 s, so that the test can kill the process (``kill -9``)
while it is training past its checkpoint, long before it would end.
"""

import sys
import time
from pathlib import Path

from conftest import SMALL  # tests/conftest.py: this folder is sys.path[0] when run as a script

from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld

STEPS, CHECKPOINT_EVERY = 20, 10  # train_sft checkpoints every 10 * log_every steps


def profile():
    return get_profile("tiny", **SMALL, sft_steps=STEPS, sft_batch_size=4, sft_warmup_steps=2, log_every=1,
                       max_length=96)


def demonstrations():
    return TinyWorld(seed=0).sft_dataset(24)


def run(model_dir, out_dir, checkpoint_dir=None):
    from rrhf_lite.course.training import train_folder

    return train_folder(profile(), "sft", model_dir, demonstrations(), out_dir, checkpoint_dir, progress=False)


if __name__ == "__main__":
    model_dir, out_dir, checkpoint_dir = (Path(a) for a in sys.argv[1:4])
    if sys.argv[4:] == ["slow-after-checkpoint"]:
        from rrhf_lite.core import loop
        from rrhf_lite.methods import sft

        real_save, real_step = loop.save_checkpoint, sft.sft_step
        progress, steps = checkpoint_dir.parent / "progress", {"n": 0, "saved": False}

        def save(*args, **kwargs):
            real_save(*args, **kwargs)
            steps["saved"] = True

        def slow_step(model, batch):
            steps["n"] += 1
            if steps["saved"]:
                progress.write_text(str(steps["n"]))
                time.sleep(1.0)
            return real_step(model, batch)

        loop.save_checkpoint, sft.sft_step = save, slow_step
    run(model_dir, out_dir, checkpoint_dir)
