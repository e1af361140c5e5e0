"""Best-of-n: sample ``n`` replies, keep the one the reward model likes best. No training at all.

It is the simplest way to spend a reward model, a strong baseline for every trained method, and the yardstick
RRHF's authors use: RRHF "is a best-of-n learner" whose quality follows the samples it learns from.

**How far it moves from the policy.** Picking the best of ``n`` samples is a new policy; its KL divergence from the
sampling policy is at most (Stiennon et al. 2020; Beirami et al. 2024)

    KL(best-of-n || pi) <= log n - (n - 1) / n

an *upper bound*, tight only in the limit where every reply has negligible probability (a continuous space of
replies with distinct rewards). Where some replies are likely (a tiny world, a low temperature, a model that often
repeats itself) or rewards tie, the true KL is smaller, so plots that use the bound place best-of-n too far right.

**Estimating the curve without noise.** Given ``N`` scored samples per prompt, the expected value of best-of-n for
any ``n <= N`` is computed *exactly* over all ``C(N, n)`` subsets instead of by drawing a few: sort the samples by
the selection score; the ``i``-th smallest (1-based) is the best of a random ``n``-subset with probability
``C(i - 1, n - 1) / C(N, n)``.
"""

from __future__ import annotations

import math

import torch


def best_of_n_kl(n: int) -> float:
    """The upper bound ``log n - (n - 1) / n`` (nats) on the KL of best-of-n from its sampling policy (not its KL)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(select_by: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Expected ``values`` of the sample that maximises ``select_by`` among ``n`` drawn without replacement.

    ``select_by`` and ``values`` are ``[prompts, N]``: for each prompt, ``N`` samples with the score used to pick
    (e.g. the proxy reward) and the score reported (e.g. the gold reward). Returns ``[prompts]``.
    """
    if select_by.shape != values.shape or select_by.dim() != 2:
        raise ValueError(f"select_by and values must be [prompts, N] of one shape, got {select_by.shape} "
                         f"and {values.shape}")
    big_n = select_by.shape[1]
    if not 1 <= n <= big_n:
        raise ValueError(f"n must be between 1 and the {big_n} samples per prompt, got {n}")
    order = select_by.argsort(dim=1, stable=True)
    sorted_values = values.gather(1, order).double()
    ranks = torch.arange(1, big_n + 1)  # the i-th smallest is the best of the subset iff the other n-1 are below it
    weights = torch.tensor([math.comb(i - 1, n - 1) for i in ranks.tolist()], dtype=torch.float64) / math.comb(big_n, n)
    return (sorted_values * weights).sum(dim=1).to(values.dtype)


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor | None, ns: list[int]) -> list[dict]:
    """One row per ``n``: the KL bound, mean proxy and gold reward of best-of-n *selected by the proxy*.

    With ``gold`` given, ``gold_oracle`` is best-of-n selected by the gold judge itself: the most selection can
    buy. The gap between ``gold`` and ``gold_oracle`` is what the proxy's mistakes cost.
    """
    rows = []
    for n in ns:
        row = {"n": n, "kl_bound": best_of_n_kl(n), "proxy": best_of_n_expectation(proxy, proxy, n).mean().item()}
        if gold is not None:
            row["gold"] = best_of_n_expectation(proxy, gold, n).mean().item()
            row["gold_oracle"] = best_of_n_expectation(gold, gold, n).mean().item()
        rows.append(row)
    return rows


def select_best(responses: list[list[str]], scores: list[list[float]]) -> list[str]:
    """The best-of-n policy's actual output: for each prompt, the response with the highest score."""
    return [rs[max(range(len(rs)), key=ss.__getitem__)] for rs, ss in zip(responses, scores)]
