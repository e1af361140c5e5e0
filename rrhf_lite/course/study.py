"""Several training seeds of every method, on the same SFT model and reward model: which differences hold over seeds?

One run of each method (lesson 09's table) mixes two kinds of noise: *evaluation* noise (which held-out prompts, what
was sampled; the table's bootstrap intervals) and *training* noise (another seed gives other adapters, another batch
order, other PPO rollouts). A single seed cannot show the second. The study trains RRHF, PRO, DPO and PPO with
``seeds`` training seeds each (``profile.method_seed``; SFT, the reward model, the candidates and the evaluation prompts
stay the same), DPO also on the perplexity-filtered pairs and on a random subset of the same size (the filter
isolated), and PRO also with rankings of 2, 3 and 4 candidates. It reports per method the mean over seeds with a
95% t-interval, and for every pair of methods the difference of their mean gold reward with its interval and Welch's
test. With many pairs, some intervals exclude 0 by chance alone, so a difference is reported as shown only when it
passes after Holm's correction for the number of pairs compared (at 3 seeds a t-interval is wide: its multiplier is
4.30, not 1.96).

It also trains lesson 09's KL sweep (PPO with fixed KL coefficients) with every training seed: whether the
over-optimisation that lesson 09 shows for one seed (across the sweep the gold reward rises, peaks at a KL above 0 and
falls while the proxy climbs, :func:`rrhf_lite.course.compare.held_out_overoptimisation`) has the same shape for every
seed; and measures the weak-KL run of the default seed on held-out prompts at snapshots along its training
(:func:`rrhf_lite.course.pipeline.trajectory_stage`).

Run it with ``make study`` (``python -m rrhf_lite.course.study --seeds 3``); it writes ``runs/<profile>/study.json``
(and the tables as CSV, and a frontier with error bars in ``figures/``). Lessons 05, 07 and 09 show it when it is there
and was made with the lesson's settings. Each (method, seed) is an ordinary stage, so an interrupted study resumes where
it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from rrhf_lite.course.compare import held_out_overoptimisation, held_out_trajectory, overoptimisation_claims
from rrhf_lite.course.fits import fitted_curve, gold_fit, sqrt_kl_fit
from rrhf_lite.course.pipeline import METHOD_FIELDS, method_stage
from rrhf_lite.course.plots import plot_study, save_figure
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.provenance import code_hash
from rrhf_lite.course.sources import has_gold
from rrhf_lite.course.stages import read_output

# (row name, method, DPO data, profile fields changed) of the methods compared
METHODS = (("RRHF", "rrhf", "pairs", {}), ("PRO", "pro", "pairs", {}), ("DPO", "dpo", "pairs", {}),
           ("SimPO", "simpo", "pairs", {}), ("PPO", "ppo", "pairs", {}), ("GRPO", "grpo", "proxy", {}),
           ("RLOO", "rloo", "proxy", {}),
           # GRPO trained on the gold judge (a verifiable reward): on the tiny world, or a profile with a judge model
           ("GRPO, gold reward", "grpo", "gold", {}),
           # perplexity filtering isolated (Kutalev and Markoff 2024): the same pairs filtered, and a random subset of
           # the filtered set's size
           ("DPO, filtered", "dpo", "filtered", {}), ("DPO, random subset", "dpo", "random", {}),
           # PRO's ranking length (Song et al. 2023 report gains as rankings grow): best and worst, then best, worst
           # and the candidates spread between; "PRO" above keeps all samples_per_prompt + base + expert candidates
           *((f"PRO, length {n}", "pro", "pairs", {"pro_ranking_length": n}) for n in (2, 3, 4)))
# what the weak-KL PPO run depends on besides the methods' fields (its held-out trajectory is in the study)
TRAJECTORY_FIELDS = ("overopt_kl_coefs", "overopt_snapshot_every")
MEASURES = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
# Two-sided 95% critical values of Student's t with df = 1 .. 10 degrees of freedom (1.96 is the limit).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the half-width of a 95% interval is this times the standard error."""
    if df < 1:
        raise ValueError("an interval over seeds needs at least 2 seeds")
    return T_975.get(df, 1.96 + 2.4 / df)  # beyond 10: within 0.01 of the exact value


def mean_interval(values) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its 95% t-interval."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    half = t_quantile(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run_study(profile, seeds: int = 3, progress: bool = True) -> dict:
    """Train (or load) every method with training seeds ``0 .. seeds - 1`` and summarise. Returns the study's record
    (what :func:`save_study` writes)."""
    runs = []
    methods = [m for m in METHODS if m[2] != "gold" or has_gold(profile)]
    for seed, (name, method, data, changes) in itertools.product(range(seeds), methods):
        if progress:
            print(f"study: {name}, training seed {seed}", flush=True)
        folder = method_stage(dataclasses.replace(profile, method_seed=seed, **changes), method, data)
        report = read_output(folder, "eval")["report"]
        runs.append({"method": name, "seed": seed, **{m: report.get(m, np.nan) for m in MEASURES}})
    shapes = []
    for seed in range(seeds):
        if progress:
            print(f"study: the KL sweep, training seed {seed}", flush=True)
        shapes.append({"seed": seed, **overoptimisation_shape(dataclasses.replace(profile, method_seed=seed))})
    return {**summarise(pd.DataFrame(runs), profile, seeds), **trajectory(profile), "overoptimisation": shapes}


def overoptimisation_shape(profile) -> dict:
    """One training seed's KL sweep in numbers (:func:`~rrhf_lite.course.compare.held_out_overoptimisation`): the fitted
    peak, the rise, the fall and the proxy after the peak with their intervals, and whether each part of the shape is
    shown (``shape_shown``: a peak at KL above 0, a rise and a fall each excluding 0, the proxy still climbing)."""
    shape = held_out_overoptimisation(profile)
    row = {"peak_kl": float(shape["fit"]["peak_kl"]), "peak": shape["peak"],
           "max_kl": float(shape["sweep"]["kl"].max())}
    for part in ("rise", "fall", "proxy_after_peak"):
        d = shape[part]
        row.update({part: d.mean, f"{part}_lo": d.lo, f"{part}_hi": d.hi})
    row["shape_shown"] = all(holds for _, holds, _ in overoptimisation_claims(shape))
    return row


def trajectory(profile) -> dict:
    """The weak-KL PPO run (training seed ``profile.seed``) measured on held-out prompts at its snapshots
    (:func:`rrhf_lite.course.compare.held_out_trajectory`), with reward against sqrt(KL) fitted by a line for the proxy
    and the gold reward (Bai et al. 2022) and Gao et al.'s (2022) RL form for the gold reward."""
    points = held_out_trajectory(profile)
    fits = {column: sqrt_kl_fit(points["kl"], points[column]) for column in ("proxy_reward", "gold_reward")
            if points[column].notna().all()}
    out = {"trajectory": points.reset_index().to_dict(orient="records"), "trajectory_sqrt_kl_fits": fits}
    if "gold_reward" in fits:
        fit = gold_fit(points["kl"], points["gold_reward"])
        out["trajectory_gold_fit"] = {**{k: float(v) if k != "form" else v for k, v in fit.items()},
                                      **{k: v.tolist() for k, v in fitted_curve(fit, points["kl"].max()).items()}}
    return out


def holm(p_values, level: float = 0.05) -> list[bool]:
    """Holm's (1979) step-down correction: which of ``m`` tests are rejected at family-wise error ``level``.

    Sort the p-values; the i-th smallest (from 0) is compared with ``level / (m - i)``; reject up to the first that
    fails, and none after it. Any set of true null hypotheses is rejected, all together, with probability at most
    ``level`` (Bonferroni's guarantee, with more power)."""
    order = np.argsort(p_values)
    rejected = [False] * len(order)
    for rank, i in enumerate(order):
        if p_values[i] > level / (len(order) - rank):
            break
        rejected[i] = True
    return rejected


def summarise(runs: pd.DataFrame, profile, seeds: int) -> dict:
    """Per method: mean and 95% t-interval over seeds of every measure; per pair of methods: the difference of their
    mean gold reward (or proxy reward where there is no judge) with its Welch interval and p-value, and whether it
    passes Holm's correction over all the pairs (``shown``)."""
    summary = []
    for name, group in runs.groupby("method", sort=False):
        row = {"method": name, "seeds": len(group)}
        for measure in MEASURES:
            if group[measure].notna().all():
                row[measure], row[f"{measure}_lo"], row[f"{measure}_hi"] = mean_interval(group[measure])
        summary.append(row)
    measure = "gold_reward" if runs["gold_reward"].notna().all() else "proxy_reward"
    differences = []
    for a, b in itertools.combinations(runs["method"].unique(), 2):
        xa, xb = (runs.loc[runs["method"] == m, measure].to_numpy(dtype=float) for m in (a, b))
        diff = float(xa.mean() - xb.mean())
        if np.ptp(xa) == np.ptp(xb) == 0:  # no spread at all: t is undefined; only an exact tie is no difference
            lo = hi = diff
            p = 1.0 if diff == 0 else 0.0
        else:
            welch = stats.ttest_ind(xa, xb, equal_var=False)
            (lo, hi), p = welch.confidence_interval(0.95), float(welch.pvalue)
        differences.append({"a": a, "b": b, "measure": measure, "difference": diff, "lo": float(lo), "hi": float(hi),
                            "p": p})
    for d, shown in zip(differences, holm([d["p"] for d in differences])):
        d["shown"] = bool(shown)
    return {"profile": profile.name, "seeds": seeds, "settings": settings(profile),
            "runs": runs.to_dict(orient="records"), "summary": summary, "differences": differences}


def settings(profile) -> dict:
    """The profile fields every method's stages depend on, and the hash of the package's code that trains and
    measures them (:func:`~rrhf_lite.course.provenance.code_hash`): a study is shown only for the settings and the code
    it was made with, as a stage is only loaded for them."""
    fields = sorted({f for fields in METHOD_FIELDS.values() for f in fields} - {"method_seed"} | set(TRAJECTORY_FIELDS))
    return {**profile.values(fields), "code": code_hash(["course.study"])}


def save_study(study: dict, profile) -> None:
    """``runs/<profile>/study.json``, the tables as ``study_summary.csv`` / ``study_differences.csv``, and a frontier
    with error bars over seeds in ``figures/study_frontier.png``."""
    folder = profile.runs_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(study, indent=1, default=str))
    pd.DataFrame(study["summary"]).to_csv(folder / "study_summary.csv", index=False)
    pd.DataFrame(study["differences"]).to_csv(folder / "study_differences.csv", index=False)
    ax = plot_study(pd.DataFrame(study["summary"]).set_index("method"))
    save_figure(ax.figure, profile, "study_frontier")


def load_study(profile) -> dict | None:
    """The study in ``runs/<profile>/study.json`` if it was made with this profile's settings, else None."""
    path = profile.runs_path / "study.json"
    if not path.exists():
        return None
    study = json.loads(path.read_text())
    same = json.dumps(study.get("settings"), sort_keys=True, default=str) == \
        json.dumps(settings(profile), sort_keys=True, default=str)
    return study if same else None


def describe(study: dict) -> str:
    """The study's differences in words: which pass Holm's correction over all the pairs, which do not."""
    pairs = len(study["differences"])
    lines = []
    for d in study["differences"]:
        verdict = (f"the difference holds (p = {d['p']:.3f}, within Holm's correction over {pairs} pairs)" if d["shown"]
                   else f"no difference shown (p = {d['p']:.3f}; Holm's correction over {pairs} pairs)")
        lines.append(f"{d['a']} - {d['b']}: {d['measure']} {d['difference']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] "
                     f"over {study['seeds']} seeds: {verdict}")
    shapes = study.get("overoptimisation") or []
    for row in shapes:
        parts = ", ".join(f"{part.replace('_', ' ')} {row[part]:+.2f} [{row[f'{part}_lo']:+.2f}, "
                          f"{row[f'{part}_hi']:+.2f}]" for part in ("rise", "fall", "proxy_after_peak"))
        lines.append(f"over-optimisation, training seed {row['seed']}: fitted peak at KL {row['peak_kl']:.2f} "
                     f"({row['peak']}), {parts}: " + ("the shape holds" if row["shape_shown"] else "not shown"))
    if shapes:
        lines.append(f"over-optimisation (lesson 09's four checks) holds for {sum(r['shape_shown'] for r in shapes)} "
                     f"of {len(shapes)} training seeds")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per method (at least 2)")
    parser.add_argument("--profile", default=None, help="profile name (default: $RRHF_LITE_PROFILE or tiny)")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: one seed has no spread")
    profile = get_profile(args.profile)
    study = run_study(profile, args.seeds)
    save_study(study, profile)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(study["summary"]).set_index("method").round(3))
    print(describe(study))
    print(f"written: {profile.runs_path / 'study.json'}, study_summary.csv, study_differences.csv, "
          f"figures/study_frontier.png")


if __name__ == "__main__":
    main()
