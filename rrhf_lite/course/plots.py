"""Plots used across the lessons: training curves, score distributions, label noise.

Every function draws on a matplotlib ``Axes`` (made for you if not given) and returns it, so a notebook can
combine them; :func:`save_figure` writes a figure under ``runs/<profile>/figures/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]


def save_figure(fig, profile, name: str) -> Path:
    """Save ``fig`` as ``runs/<profile>/figures/<name>.png`` and return the path."""
    path = profile.runs_path / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_history(history, keys: tuple[str, ...] = ("loss",), ax=None, title: str = "", logy: bool = False):
    """One line per metric in ``keys`` against the optimiser step; ``history`` is a list of rows (dicts) or a
    DataFrame (:attr:`rrhf_lite.course.stages.TrainingRun.history`)."""
    ax = _axes(ax)
    rows = history.to_dict("records") if hasattr(history, "to_dict") else history
    steps = [row["step"] for row in rows]
    for key in keys:
        ax.plot(steps, [row[key] for row in rows], label=key)
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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")  # one per method, with its colour


def method_colours(methods) -> dict[str, tuple[float, float, float]]:
    """Each method's colour on the frontier, in order, best-of-n aside (drawn as a curve): one of tab20's, for more
    methods than the default cycle's 10 colours. The site's interactive frontier (website/frontier.py) draws each
    method in the same one."""
    trained = [name for name in methods if not name.startswith("best-of-")]
    return {name: plt.get_cmap("tab20").colors[2 * i % 20 + i // 10] for i, name in enumerate(trained)}


def plot_frontier(table, bon_curve, bon_draws=None, *, sqrt_kl: bool = False, reward: str = "gold", ax=None,
                  legend: bool = True):
    """Reward against KL from the SFT model (or against sqrt(KL)): the reward-KL frontier of lesson 09.

    ``table`` is :func:`rrhf_lite.course.compare.results_table` (one marker per method); ``bon_curve`` is best-of-n's
    exact expectation at every n (a line, at the upper bound on its KL); ``bon_draws`` are best-of-n picks actually
    drawn (hollow markers). ``reward`` is "gold" or "proxy". Where the table has ``<column>_lo``/``_hi`` (95% bootstrap
    intervals over held-out prompts), each method gets error bars in both directions.
    """
    ax = _axes(ax)
    x = (lambda kl: np.sqrt(np.clip(kl, 0, None))) if sqrt_kl else (lambda kl: np.asarray(kl))
    ax.plot(x(bon_curve["kl_bound"]), bon_curve[reward], "-", color="0.4",
            label="best-of-n (exact mean, at its KL bound)")
    if bon_draws is not None:
        ax.scatter(x(bon_draws["kl_bound"]), bon_draws[reward], facecolors="none", edgecolors="0.4",
                   label="best-of-n (drawn)")
    column = f"{reward}_reward"
    for i, (name, colour) in enumerate(method_colours(table.index).items()):
        row = table.loc[name]
        marker = ax.scatter(x(row["kl"]), row[column], s=60, zorder=3, label=name, color=colour,
                            marker=MARKERS[i % len(MARKERS)])
        if f"{column}_lo" in row and not np.isnan(row[f"{column}_lo"]):  # 95% intervals over held-out prompts
            kl_lo, kl_hi = x(max(row["kl_lo"], 0.0)), x(row["kl_hi"])
            ax.errorbar(x(row["kl"]), row[column], color=marker.get_facecolor()[0], lw=1, capsize=2, zorder=2,
                        yerr=[[row[column] - row[f"{column}_lo"]], [row[f"{column}_hi"] - row[column]]],
                        xerr=[[max(x(row["kl"]) - kl_lo, 0.0)], [max(kl_hi - x(row["kl"]), 0.0)]])
    ax.set_xlabel("sqrt(KL to SFT)  (sqrt nats)" if sqrt_kl else "KL to SFT (nats)")
    ax.set_ylabel(f"{reward} reward")
    if legend:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_study(summary, ax=None):
    """Every method of :mod:`rrhf_lite.course.study` at its mean (KL, gold reward) over training seeds, with 95%
    intervals over seeds in both directions (proxy reward where there is no judge)."""
    ax = _axes(ax)
    reward = "gold_reward" if "gold_reward" in summary and summary["gold_reward"].notna().all() else "proxy_reward"
    for name, row in summary.iterrows():
        ax.errorbar(row["kl"], row[reward], fmt="o", capsize=3, label=f"{name} ({int(row['seeds'])} seeds)",
                    xerr=[[row["kl"] - row["kl_lo"]], [row["kl_hi"] - row["kl"]]],
                    yerr=[[row[reward] - row[f"{reward}_lo"]], [row[f"{reward}_hi"] - row[reward]]])
    ax.set_xlabel("KL to SFT (nats)")
    ax.set_ylabel(reward.replace("_", " "))
    ax.set_title("mean over training seeds, 95% intervals")
    ax.legend(fontsize=8)
    return ax


def plot_sqrt_kl_trajectory(points, column: str, line: dict, curve: dict | None = None, ax=None):
    """Snapshots of a run on the plane (sqrt(KL), ``column``) with their 95% intervals on both axes, each labelled
    with its iteration; the least-squares ``line`` in sqrt(KL) (``slope``, ``intercept``, ``R2``) dashed, and a fitted
    ``curve`` (``curve_kl``, ``curve_gold``: Gao et al.'s form) dotted. ``points`` is indexed by iteration, with
    ``kl``, ``column`` and their ``_lo`` / ``_hi`` columns (:func:`rrhf_lite.course.compare.held_out_trajectory`)."""
    ax = _axes(ax)
    x = np.sqrt(points["kl"].to_numpy(dtype=float))
    y = points[column].to_numpy(dtype=float)
    lo, hi = (points[[f"kl{end}", f"{column}{end}"]].to_numpy(dtype=float) for end in ("_lo", "_hi"))
    xerr = np.clip([x - np.sqrt(np.clip(lo[:, 0], 0, None)), np.sqrt(hi[:, 0]) - x], 0, None)
    ax.errorbar(x, y, fmt="o", capsize=2, label="snapshot, 95% intervals", xerr=xerr,
                yerr=np.clip([y - lo[:, 1], hi[:, 1] - y], 0, None))
    for iteration, xi, yi in zip(points.index, x, y):
        ax.annotate(str(iteration), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    grid = np.linspace(0, x.max(), 60)
    ax.plot(grid, line["intercept"] + line["slope"] * grid, "k--", label=f"line in sqrt(KL): R² = {line['R2']:.2f}")
    if curve is not None:
        ax.plot(np.sqrt(curve["curve_kl"]), curve["curve_gold"], "k:", label="Gao et al., RL form")
    ax.set_xlabel("sqrt(KL to SFT) on held-out prompts (sqrt nats)")
    ax.set_ylabel(column.replace("_", " "))
    ax.legend(fontsize=8)
    return ax
