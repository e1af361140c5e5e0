"""A small, fast training task for the loop's tests: linear regression through the shared loop."""

import torch

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
