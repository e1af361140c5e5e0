"""Plots used across the lessons: training curves, score distributions, label noise.

Every function draws on a matplotlib ``Axes`` (made for you if not given) and returns it, so a notebook can
combine them; :func:`save_figure` writes a figure under ``runs/<profile>/figures/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]


def save_figure(fig, profile, name: str) -> Path:
    """Save ``fig`` as ``runs/<profile>/figures/<name>.png`` and return the path."""
    path = profile.runs_path / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_history(history: list[dict], keys: tuple[str, ...] = ("loss",), ax=None, title: str = "",
                 logy: bool = False):
    """One line per metric in ``keys`` against the optimiser step."""
    ax = _axes(ax)
    steps = [row["step"] for row in history]
    for key in keys:
        ax.plot(steps, [row[key] for row in history], label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    return ax


def plot_score_histograms(scores: dict[str, list[float]], ax=None, title: str = "", bins: int = 30):
    """Overlaid histograms, one per named list of scores (e.g. gold reward of data vs model samples)."""
    ax = _axes(ax)
    lo = min(min(v) for v in scores.values())
    hi = max(max(v) for v in scores.values())
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)] if hi > lo else bins
    for label, values in scores.items():
        ax.hist(values, bins=edges, alpha=0.5, label=f"{label} (mean {sum(values) / len(values):+.2f})")
    ax.set_xlabel("gold score")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_label_noise(gold_chosen: list[float], gold_rejected: list[float], temperature: float, ax=None,
                     bins: int = 8):
    """How often labels agree with the judge against the size of the gold gap, with the Bradley-Terry curve.

    Pairs are binned by ``|gold_a - gold_b|``; each point is the share of pairs in the bin where the chosen
    reply has the higher gold score. Theory says ``sigmoid(gap / T)``.
    """
    ax = _axes(ax)
    gaps = [abs(c - r) for c, r in zip(gold_chosen, gold_rejected)]
    agree = [c > r for c, r in zip(gold_chosen, gold_rejected)]
    top = max(gaps)
    width = top / bins
    xs, ys, ns = [], [], []
    for b in range(bins):
        members = [a for g, a in zip(gaps, agree) if b * width <= g < (b + 1) * width or (b == bins - 1 and g == top)]
        if members:
            xs.append((b + 0.5) * width)
            ys.append(sum(members) / len(members))
            ns.append(len(members))
    ax.scatter(xs, ys, s=[max(10, 200 * n / max(ns)) for n in ns], label="labels (size = number of pairs)")
    grid = [top * i / 100 for i in range(101)]
    ax.plot(grid, [1 / (1 + math.exp(-g / temperature)) for g in grid], "k--", label=f"sigmoid(gap / {temperature:g})")
    ax.set_xlabel("gold score gap |a - b|")
    ax.set_ylabel("P(label agrees with judge)")
    ax.set_ylim(0.4, 1.02)
    ax.legend(loc="lower right")
    return ax


def plot_calibration(cal, ax=None, title: str = "Reward-model calibration"):
    """Reliability diagram: observed frequency against predicted ``P(a > b)``; the diagonal is perfect."""
    ax = _axes(ax)
    ax.plot([0, 1], [0, 1], "k--", label="perfectly calibrated")
    ax.scatter(cal.predicted, cal.observed, s=[max(10, 300 * n / max(cal.counts)) for n in cal.counts],
               label=f"reward model (ECE {cal.ece:.3f})")
    ax.set_xlabel("predicted P(a preferred to b)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return ax
