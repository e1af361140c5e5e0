"""Every method side by side (lesson 08): one results table and the numbers behind the frontier plots.

All methods start from the same SFT model and are measured the same way (:func:`pipeline.evaluate_adapter`):
fresh samples at the sampling temperature on the same held-out prompts, judged by the proxy (the reward model of
lesson 02) and by the gold judge, KL to the SFT model, gold win rate against the SFT model's replies.

Best-of-n is not trained: it is the SFT model plus a reward model at answer time. Its row is computed exactly from
``bon_n`` SFT samples per held-out prompt (:func:`best_of_n.best_of_n_expectation`); its KL column is the upper
bound ``log n - (n - 1) / n`` (Beirami et al. 2024), not a measured KL; its cost is sampling and scoring ``n``
replies per answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .best_of_n import best_of_n_curve, best_of_n_expectation, best_of_n_kl
from .evaluate import bootstrap_interval
from .pipeline import (
    has_gold,
    load_samples,
    method_stage,
    online_stage,
    samples_stage,
    sft_stage,
    trajectory_stage,
)
from .profiles import weak_kl_profile  # noqa: F401  (lesson 08 and the tests ask for it here)
from .stages import read_output

# The table's columns, each measured in the run.
COLUMNS = {
    "gold_reward": "mean gold-judge score of held-out replies (real profiles: the judge model, normalised on SFT)",
    "proxy_reward": "mean reward-model score (normalised on SFT samples: SFT is about 0)",
    "kl": "KL(policy || SFT), nats per reply, at the sampling temperature (best-of-n: the bound log n - (n-1)/n)",
    "win_rate_vs_sft": "share of held-out prompts where the gold judge prefers the reply to SFT's (ties: half)",
    "train_seconds": "wall time to train (best-of-n: to sample and score its n replies per held-out prompt)",
    "peak_memory_mb": "peak memory while training (RSS above the start on CPU; allocated memory on a GPU)",
    "trainable_parameters": "parameters the method updates (LoRA adapters, plus PPO's value head)",
    "training_samples": "replies sampled from a model to train on (lesson 03's candidates, or PPO's rollouts)",
    "samples_per_answer": "replies sampled at answer time for one answer",
}
# The measured columns, each with a 95% bootstrap interval over held-out prompts in <column>_lo and <column>_hi.
MEASURED = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
for _column in MEASURED:
    COLUMNS[f"{_column}_lo"] = f"{_column}: lower end of its 95% bootstrap interval over held-out prompts"
    COLUMNS[f"{_column}_hi"] = f"{_column}: upper end of its 95% bootstrap interval over held-out prompts"
# (row name, method, data) of the trained methods, in the order of the lessons.
TRAINED = (("RRHF", "rrhf", "pairs"), ("PRO", "pro", "pairs"), ("DPO", "dpo", "pairs"), ("PPO", "ppo", "pairs"))


def intervals(per_reply: dict | None, prompts: int) -> dict[str, float]:
    """``<column>_lo`` / ``<column>_hi`` for every measured column that has per-reply values (NaN where not: a stage
    evaluated before per-reply values were kept, a bound rather than a measurement, or no judge)."""
    out = {}
    for column in MEASURED:
        values = (per_reply or {}).get(column)
        lo, hi = bootstrap_interval(values, prompts) if values else (np.nan, np.nan)
        out[f"{column}_lo"], out[f"{column}_hi"] = lo, hi
    return out


def policy_samples(profile, method: str, data: str = "pairs") -> int:
    """How many replies a method's training sampled from a model: its sampling budget.

    RRHF, PRO and DPO on the candidates of stage 03 use the SFT and base samples drawn there (the expert replies
    are not sampled); DPO on labellers' pairs samples nothing; PPO samples one reply per prompt per rollout.
    """
    if method == "ppo":
        return profile.ppo_iterations * profile.ppo_rollout_prompts
    if method == "dpo" and data == "labels":
        return 0
    return profile.sample_prompts * (profile.samples_per_prompt + profile.base_samples_per_prompt)


def _row(name: str, report: dict, cost: dict, *, win_rate: float | None = None, training_samples: int,
         samples_per_answer: int = 1, trainable_parameters: int | None = None, bounds: dict | None = None) -> dict:
    """One row of the table from a policy report (``policy_report``'s keys), a ``cost.json`` and the intervals."""
    return {"method": name, "gold_reward": report.get("gold_reward", np.nan), "proxy_reward": report["proxy_reward"],
            "kl": report["kl"],
            "win_rate_vs_sft": report.get("win_rate_vs_sft", np.nan) if win_rate is None else win_rate,
            "train_seconds": cost["seconds"], "peak_memory_mb": cost["peak_memory_mb"],
            "trainable_parameters": cost["trainable_parameters"] if trainable_parameters is None
            else trainable_parameters,
            "training_samples": training_samples, "samples_per_answer": samples_per_answer, **(bounds or {})}


def trained_row(name: str, folder: Path, profile, method: str, data: str = "pairs") -> dict:
    """One trained policy's row: its ``eval.json`` report (with per-reply values for the intervals) and
    ``cost.json``."""
    evaluation = read_output(folder, "eval")
    return _row(name, evaluation["report"], read_output(folder, "cost"),
                training_samples=policy_samples(profile, method, data),
                bounds=intervals(evaluation.get("per_reply"), profile.eval_prompts))


def sft_row(profile) -> dict:
    """The baseline: SFT measured on the held-out prompts; its KL to itself is 0 and it ties with itself."""
    baseline = read_output(samples_stage(profile), "sft_eval")
    return _row("SFT", baseline["report"], read_output(sft_stage(profile), "cost"),
                win_rate=0.5 if "gold_reward" in baseline["per_reply"] else np.nan, training_samples=0,
                bounds=intervals(baseline.get("per_reply"), profile.eval_prompts))


def best_of_n_scores(profile) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[prompts, bon_n]`` proxy and gold scores of the SFT model's samples on the held-out prompts."""
    bon = load_samples(profile, "best_of_n")
    proxy = torch.tensor(bon["scores"], dtype=torch.float64)
    gold = torch.tensor(bon["gold_scores"], dtype=torch.float64) if "gold_scores" in bon.column_names else None
    return proxy, gold


def baseline_gold_per_prompt(profile) -> torch.Tensor:
    """``[prompts, eval_samples_per_prompt]`` gold scores of the SFT baseline's replies, per held-out prompt."""
    gold = torch.tensor(read_output(samples_stage(profile), "sft_eval")["per_reply"]["gold_reward"],
                        dtype=torch.float64)
    return gold.reshape(profile.eval_samples_per_prompt, -1).T


def best_of_n_rows(profile) -> list[dict]:
    """Best-of-n rows, exact expectations over all ``C(bon_n, n)`` subsets of the SFT samples."""
    proxy, gold = best_of_n_scores(profile)
    cost = read_output(samples_stage(profile), "best_of_n_cost")
    if gold is not None:
        # per SFT baseline reply of each prompt: does each sample beat it? (ties count half)
        base = baseline_gold_per_prompt(profile)
        wins = [(gold > base[:, [j]]).double() + 0.5 * (gold == base[:, [j]]).double() for j in range(base.shape[1])]
    rows = []
    for n in profile.bon_table_n:
        # per held-out prompt: the exact expectations (one value per prompt; the KL is a bound, no interval)
        per_prompt = {"proxy_reward": best_of_n_expectation(proxy, proxy, n).tolist()}
        if gold is not None:
            per_prompt["gold_reward"] = best_of_n_expectation(proxy, gold, n).tolist()
            # win rate: the expected value, over the subsets, of "the selected reply beats the SFT reply"
            per_prompt["win_rate_vs_sft"] = torch.stack([best_of_n_expectation(proxy, w, n)
                                                         for w in wins]).mean(0).tolist()
        report = {column: float(np.mean(values)) for column, values in per_prompt.items()}
        rows.append(_row(f"best-of-{n}", {**report, "kl": best_of_n_kl(n)},
                         {**cost, "seconds": cost["seconds"] * n / profile.bon_n}, training_samples=0,
                         samples_per_answer=n, trainable_parameters=0, bounds=intervals(per_prompt, len(proxy))))
    return rows


def results_table(profile, *, weak_kl: bool = True, online: bool | None = None) -> pd.DataFrame:
    """One row per method (SFT, best-of-n, RRHF, PRO, DPO, PPO; PPO with a weak KL penalty and the online round's
    retrained policy when asked), the columns of :data:`COLUMNS`. Trains whatever is not cached yet.

    ``online`` defaults to whether the profile has labellers for fresh replies: the tiny world's, or on real data
    the judge model's scores seen through Bradley-Terry noise.
    """
    online = has_gold(profile) if online is None else online
    rows = [sft_row(profile), *best_of_n_rows(profile)]
    rows += [trained_row(name, method_stage(profile, method, data), profile, method, data)
             for name, method, data in TRAINED]
    if weak_kl:
        weak = weak_kl_profile(profile)
        rows.append(trained_row("PPO, weak KL", method_stage(weak, "ppo"), weak, "ppo"))
    if online:
        method = profile.online_method
        row = trained_row(f"{method.upper()}, online round", online_stage(profile), profile, method)
        # lesson 03's candidates (counted by trained_row) plus the replies the round-1 policy sampled for labels
        row["training_samples"] += profile.sample_prompts * profile.online_samples_per_prompt
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")[list(COLUMNS)]


def with_intervals(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The measured columns as text, ``mean [lo, hi]`` (95% bootstrap over held-out prompts), the rest as they are:
    the table to read. Two methods differ on a column only where their intervals do not overlap (and even then a
    single training seed says nothing about the spread between training runs)."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_lo", "_hi"))])
    for column in MEASURED:
        shown[column] = [f"{m:.{digits}f}" if np.isnan(lo) else f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                         for m, lo, hi in zip(table[column], table[f"{column}_lo"], table[f"{column}_hi"])]
    return shown


def best_of_n_frontier(profile, ns: list[int] | None = None) -> pd.DataFrame:
    """Best-of-n for every ``n`` up to ``bon_n``: the KL upper bound, exact expected proxy and gold (the curve)."""
    proxy, gold = best_of_n_scores(profile)
    return pd.DataFrame(best_of_n_curve(proxy, gold, ns or list(range(1, profile.bon_n + 1))))


def best_of_n_draws(profile, ns: list[int] | None = None) -> pd.DataFrame:
    """Best-of-n actually drawn: for each prompt, the proxy's pick among its *first* ``n`` samples (the measured
    points that scatter around the exact curve)."""
    proxy, gold = best_of_n_scores(profile)
    rows = []
    for n in ns or [2 ** k for k in range(int(np.log2(profile.bon_n)) + 1)]:
        pick = proxy[:, :n].argmax(dim=1, keepdim=True)
        row = {"n": n, "kl_bound": best_of_n_kl(n), "proxy": proxy[:, :n].gather(1, pick).mean().item()}
        if gold is not None:
            row["gold"] = gold[:, :n].gather(1, pick).mean().item()
        rows.append(row)
    return pd.DataFrame(rows)


def training_trajectory(folder: Path, smooth: int = 5) -> pd.DataFrame:
    """A PPO run's rollouts: iteration, KL, proxy and gold reward, and their moving averages over ``smooth``
    iterations (each rollout has only ``ppo_rollout_prompts`` replies, so single points are noisy)."""
    history = pd.DataFrame(read_output(folder, "history")["history"])
    columns = [c for c in ("kl", "proxy_reward", "gold_reward") if c in history and history[c].notna().any()]
    for c in columns:
        history[f"{c}_smooth"] = history[c].rolling(smooth, min_periods=1, center=True).mean()
    return history


def held_out_trajectory(profile) -> pd.DataFrame:
    """The weak-KL PPO run measured on held-out prompts at its snapshots (:func:`~rrhf_lite.pipeline.trajectory_stage`,
    built on first use): one row per snapshot (iteration 0 is the SFT model), the measured columns and their 95%
    bootstrap intervals over held-out prompts."""
    points = read_output(trajectory_stage(profile), "trajectory")["points"]
    rows = [{"iteration": p["iteration"], **{c: p["report"].get(c, np.nan) for c in MEASURED},
             **intervals(p["per_reply"], profile.eval_prompts)} for p in points]
    return pd.DataFrame(rows).set_index("iteration")


def sqrt_kl_fit(kl, reward) -> dict:
    """Least-squares line ``reward = intercept + slope * sqrt(KL)`` (Bai et al. 2022), its R^2 and the number of
    points (NaN where fewer than 3 distinct KLs leave nothing to test)."""
    x, y = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0, None)), np.asarray(reward, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(np.unique(x)) < 3:  # a line through fewer than 3 distinct points fits anything
        return {"slope": np.nan, "intercept": np.nan, "R2": np.nan, "points": len(x)}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    return {"slope": float(slope), "intercept": float(intercept),
            "R2": float(1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()), "points": len(x)}


GAO_FORMS = {"rl": "g0 + d (alpha - beta ln d)", "bon": "g0 + d (alpha - beta d)"}


def _gao_features(d: np.ndarray, form: str) -> np.ndarray:
    """The fitted form's terms ``[1, d, -shape(d)]``: ``shape = d ln d`` for RL (0 at d = 0), ``d^2`` for best-of-n."""
    if form not in GAO_FORMS:
        raise ValueError(f"form must be one of {sorted(GAO_FORMS)}, got {form!r}")
    bend = d * np.log(np.where(d > 0, d, 1.0)) if form == "rl" else d ** 2
    return np.stack([np.ones_like(d), d, -bend], axis=-1)


def gold_curve(fit: dict, kl) -> np.ndarray:
    """The gold reward that a :func:`gold_fit` result predicts at ``kl``."""
    d = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0, None))
    return _gao_features(d, fit["form"]) @ np.array([fit["g0"], fit["alpha"], fit["beta"]])


def fitted_curve(fit: dict, max_kl: float, points: int = 100) -> dict[str, np.ndarray]:
    """``curve_kl`` (``points`` KLs from 0 to ``max_kl``) and ``curve_gold`` (what ``fit`` predicts there), to plot."""
    grid = np.linspace(0, float(max_kl), points)
    return {"curve_kl": grid, "curve_gold": gold_curve(fit, grid)}


def gold_fit(kl, gold, form: str = "rl") -> dict:
    """Least-squares fit of Gao et al.'s (2022) scaling form for the gold reward, in ``d = sqrt(KL)``:

    * ``form="rl"`` (their form for RL): ``gold = g0 + d (alpha - beta ln d)``, which peaks where its slope
      ``alpha - beta (ln d + 1)`` is 0, at ``d* = exp(alpha / beta - 1)``;
    * ``form="bon"`` (their form for best-of-n): ``gold = g0 + d (alpha - beta d)``, peak at ``d* = alpha / (2 beta)``.

    Gao et al. fit the reward *gained* from the initial policy; ``g0`` is the gold reward at KL 0. Returns the
    coefficients, the form and the peak (``peak_kl = d*^2``, and the fitted gold there); a curve with ``beta <= 0``
    never turns down: its peak is reported at the largest KL fitted, a curve that never rises at KL 0.
    """
    kl = np.clip(np.asarray(kl, dtype=float), 0, None)
    d = np.sqrt(kl)
    (g0, alpha, beta), *_ = np.linalg.lstsq(_gao_features(d, form), np.asarray(gold, dtype=float), rcond=None)
    fit = {"form": form, "g0": g0, "alpha": alpha, "beta": beta}
    if beta <= 0:  # no downturn: the curve rises (or falls) all the way
        peak_d = float(d.max()) if alpha > 0 else 0.0
    elif form == "rl":
        peak_d = float(np.exp(alpha / beta - 1))
    else:
        peak_d = max(alpha / (2 * beta), 0.0)
    fit.update(peak_kl=peak_d ** 2, gold_at_peak=float(gold_curve(fit, peak_d ** 2)))
    return fit


def overoptimisation(history: pd.DataFrame, tail: int = 5) -> dict:
    """Where the gold reward peaks in a PPO run and what the proxy does afterwards (Gao et al. 2022).

    Single rollouts are noisy, so the peak comes from :func:`gold_fit` (Gao et al.'s form for RL) over all rollouts;
    ``peak_iteration`` is the iteration where the smoothed KL first crosses it; ``curve_kl``/``curve_gold`` trace the
    fitted curve (for plotting). The proxy and gold reward "at the peak" are the smoothed
    values there; "at the end", the mean of the last ``tail`` rollouts. ``proxy_gain_after_peak > 0`` together with
    ``gold_loss_after_peak > 0`` is over-optimisation: the proxy still climbs while the gold reward falls.
    """
    fit = gold_fit(history["kl"], history["gold_reward"])
    positions = np.flatnonzero(history["kl_smooth"].to_numpy() >= fit["peak_kl"])
    at = int(positions[0]) if len(positions) else len(history) - 1
    if at > 0 and abs(history["kl_smooth"].iloc[at - 1] - fit["peak_kl"]) < abs(history["kl_smooth"].iloc[at] -
                                                                                 fit["peak_kl"]):
        at -= 1  # the crossing's nearer side
    peak = history.index[at]
    end = history.tail(tail)
    return {**fit, **fitted_curve(fit, history["kl"].max()),
            "curve_label": f"{GAO_FORMS[fit['form']]},  d = sqrt(KL)",
            "peak_iteration": int(history.loc[peak, "iteration"]),
            "proxy_at_peak": float(history.loc[peak, "proxy_reward_smooth"]),
            "proxy_at_end": float(end["proxy_reward"].mean()), "gold_at_end": float(end["gold_reward"].mean()),
            "proxy_gain_after_peak": float(end["proxy_reward"].mean() - history.loc[peak, "proxy_reward_smooth"]),
            "gold_loss_after_peak": float(fit["gold_at_peak"] - end["gold_reward"].mean())}


def save_results(table: pd.DataFrame, profile, name: str = "results") -> tuple[Path, Path]:
    """Write the table as ``runs/<profile>/<name>.csv`` and ``.json`` (with the column descriptions)."""
    folder = profile.runs_path
    folder.mkdir(parents=True, exist_ok=True)
    csv, js = folder / f"{name}.csv", folder / f"{name}.json"
    table.to_csv(csv)
    payload = {"profile": profile.name, "columns": COLUMNS,
               "rows": json.loads(table.reset_index().to_json(orient="records"))}
    js.write_text(json.dumps(payload, indent=1))
    return csv, js
