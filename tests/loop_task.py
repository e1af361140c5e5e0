"""A small, fast training task for the loop's tests: linear regression through the shared loop.

Run as a script (``accelerate launch --num_processes 2 tests/loop_task.py OUT``) it trains data-parallel and
writes each process's final weights and the indices it saw to ``OUT/rank<k>.pt``.
"""

import sys
from pathlib import Path

import torch

from rrhf_lite.loop import train

TRUE_W = torch.tensor([2.0, -3.0, 0.5])


def make_batches(n: int = 64, batch_size: int = 8, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=g)
    rows = [{"x": x[i], "y": x[i] @ TRUE_W, "index": torch.tensor(i)} for i in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1, bias=False)


def mse_step(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    return ((pred - batch["y"]) ** 2).mean(), {"batch_size": len(batch["y"])}


if __name__ == "__main__":
    from accelerate import Accelerator

    out = Path(sys.argv[1])
    accelerator = Accelerator(cpu=True)
    seen: list[int] = []

    def recording_step(model, batch):
        seen.extend(batch["index"].tolist())
        return mse_step(model, batch)

    model = make_model()
    history = train(model, make_batches(), recording_step, steps=16, lr=0.1, log_every=4, progress=False,
                    accelerator=accelerator)
    weights = accelerator.unwrap_model(model).weight.detach().clone()
    torch.save({"weights": weights, "seen": seen, "history": history}, out / f"rank{accelerator.process_index}.pt")
