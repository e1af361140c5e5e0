"""Every method side by side (lesson 09): one results table and the numbers behind the frontier plots.

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

from rrhf_lite.course.claims import check, paired
from rrhf_lite.course.fits import gold_curve, gold_fit
from rrhf_lite.course.pipeline import (
    has_gold,
    load_samples,
    method_stage,
    online_stage,
    samples_stage,
    sft_stage,
    trajectory_stage,
)
from rrhf_lite.course.profiles import weak_kl_profile
from rrhf_lite.course.stages import read_output
from rrhf_lite.methods.best_of_n import best_of_n_curve, best_of_n_expectation, best_of_n_kl
from rrhf_lite.methods.evaluate import bootstrap_interval, paired_difference, prompt_means

# The table's columns, each measured in the run.
COLUMNS = {
    "gold_reward": "mean gold-judge score of held-out replies (real profiles: the judge model, normalised on SFT)",
    "proxy_reward": "mean reward-model score (normalised on SFT samples: SFT is about 0)",
    "kl": "KL(policy || SFT), nats per reply, at the sampling temperature (best-of-n: the bound log n - (n-1)/n)",
    "win_rate_vs_sft": "share of held-out prompts where the gold judge prefers the reply to SFT's (ties: half)",
    "train_seconds": "wall time to train (best-of-n: to sample and score its n replies per held-out prompt)",
    "peak_memory_mb": "peak memory while training (RSS above the start on CPU; allocated memory on a GPU)",
    "trainable_parameters": "parameters the method updates (LoRA adapters, plus PPO's value head)",
    "training_samples": "replies sampled from a model to train on (lesson 03's candidates, or PPO's, GRPO's and "
                        "RLOO's rollouts)",
    "samples_per_answer": "replies sampled at answer time for one answer",
}
# The measured columns, each with a 95% bootstrap interval over the distinct held-out prompts in <column>_lo and
# <column>_hi, and (but win rate, already a comparison with SFT) the paired difference from SFT with its interval.
MEASURED = ("gold_reward", "proxy_reward", "kl", "win_rate_vs_sft")
PAIRED = ("gold_reward", "proxy_reward", "kl")
for _column in MEASURED:
    COLUMNS[f"{_column}_lo"] = f"{_column}: lower end of its 95% bootstrap interval over held-out prompts"
    COLUMNS[f"{_column}_hi"] = f"{_column}: upper end of its 95% bootstrap interval over held-out prompts"
for _column in PAIRED:
    COLUMNS[f"{_column}_vs_sft"] = (f"{_column} minus SFT's on the same held-out prompts (per prompt, then averaged): "
                                    "the paired difference to read when comparing with SFT")
    COLUMNS[f"{_column}_vs_sft_lo"] = f"{_column}_vs_sft: lower end of its 95% bootstrap interval over held-out prompts"
    COLUMNS[f"{_column}_vs_sft_hi"] = f"{_column}_vs_sft: upper end of its 95% bootstrap interval over held-out prompts"
COLUMNS["prompts"] = "distinct held-out prompts that every interval of the row rests on (each answered k times)"
# (row name, method, data) of the trained methods, in the order of the lessons: SimPO is lesson 06's, GRPO and RLOO
# (on the reward model, and GRPO on the gold judge: a verifiable reward, where there is a judge) lesson 08's.
TRAINED = (("RRHF", "rrhf", "pairs"), ("PRO", "pro", "pairs"), ("DPO", "dpo", "pairs"), ("SimPO", "simpo", "pairs"),
           ("PPO", "ppo", "pairs"), ("GRPO", "grpo", "proxy"), ("RLOO", "rloo", "proxy"))
VERIFIABLE = ("GRPO, gold reward", "grpo", "gold")


def per_prompt(per_reply: dict | None, replies_per_prompt: int) -> dict[str, torch.Tensor]:
    """Each measured column's values averaged per distinct held-out prompt
    (:func:`~rrhf_lite.methods.evaluate.prompt_means`); columns without per-reply values are left out."""
    return {column: prompt_means(values, replies_per_prompt)
            for column, values in (per_reply or {}).items() if column in MEASURED and values}


def intervals(values: dict[str, torch.Tensor], sft: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """From per-prompt values (:func:`per_prompt`): ``<column>_lo`` / ``<column>_hi`` for every measured column, and,
    given SFT's per-prompt values on the same prompts, the paired difference ``<column>_vs_sft`` with its interval
    (:func:`~rrhf_lite.methods.evaluate.paired_difference`); NaN where a column has no values (a bound rather than a
    measurement, or no judge). ``prompts`` is how many distinct prompts they rest on."""
    out = {}
    for column in MEASURED:
        lo, hi = bootstrap_interval(values[column]) if column in values else (np.nan, np.nan)
        out[f"{column}_lo"], out[f"{column}_hi"] = lo, hi
    for column in PAIRED:
        both = column in values and sft is not None and column in sft
        diff = paired_difference(values[column], sft[column]) if both else (np.nan,) * 3
        out[f"{column}_vs_sft"], out[f"{column}_vs_sft_lo"], out[f"{column}_vs_sft_hi"] = diff
    out["prompts"] = len(next(iter(values.values()))) if values else 0
    return out


def policy_samples(profile, method: str, data: str = "pairs") -> int:
    """How many replies a method's training sampled from a model: its sampling budget.

    RRHF, PRO and DPO on the candidates of stage 03 use the SFT and base samples drawn there (the expert replies
    are not sampled); DPO on labellers' pairs samples nothing; PPO samples one reply per prompt per rollout, GRPO and
    RLOO a group of replies per prompt.
    """
    if method == "ppo":
        return profile.ppo_iterations * profile.ppo_rollout_prompts
    if method in ("grpo", "rloo"):
        return profile.grpo_iterations * profile.grpo_prompts_per_iteration * profile.grpo_group_size
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
    """One trained policy's row: its ``eval.json`` report (with per-reply values for the intervals and the paired
    differences from SFT) and ``cost.json``."""
    evaluation = read_output(folder, "eval")
    values = per_prompt(evaluation.get("per_reply"), profile.eval_samples_per_prompt)
    return _row(name, evaluation["report"], read_output(folder, "cost"),
                training_samples=policy_samples(profile, method, data),
                bounds=intervals(values, sft_per_prompt(profile)))


def sft_per_prompt(profile) -> dict[str, torch.Tensor]:
    """The SFT baseline's measured values per distinct held-out prompt: what every paired difference subtracts."""
    return per_prompt(read_output(samples_stage(profile), "sft_eval")["per_reply"], profile.eval_samples_per_prompt)


def sft_row(profile) -> dict:
    """The baseline: SFT measured on the held-out prompts; its KL to itself is 0 and it ties with itself."""
    baseline = read_output(samples_stage(profile), "sft_eval")
    values = sft_per_prompt(profile)
    return _row("SFT", baseline["report"], read_output(sft_stage(profile), "cost"),
                win_rate=0.5 if "gold_reward" in baseline["per_reply"] else np.nan, training_samples=0,
                bounds=intervals(values, values))


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


def best_of_n_values(profile) -> dict[str, dict[str, torch.Tensor]]:
    """Per best-of-n row (``best-of-<n>`` for ``n`` in ``bon_table_n``), its values per held-out prompt: the exact
    expectations over all ``C(bon_n, n)`` subsets of the SFT samples (the KL is a bound, so it has none)."""
    proxy, gold = best_of_n_scores(profile)
    if gold is not None:
        # per SFT baseline reply of each prompt: does each sample beat it? (ties count half)
        base = baseline_gold_per_prompt(profile)
        wins = [(gold > base[:, [j]]).double() + 0.5 * (gold == base[:, [j]]).double() for j in range(base.shape[1])]
    rows = {}
    for n in profile.bon_table_n:
        expected = {"proxy_reward": best_of_n_expectation(proxy, proxy, n)}
        if gold is not None:
            expected["gold_reward"] = best_of_n_expectation(proxy, gold, n)
            # win rate: the expected value, over the subsets, of "the selected reply beats the SFT reply"
            expected["win_rate_vs_sft"] = torch.stack([best_of_n_expectation(proxy, w, n) for w in wins]).mean(0)
        rows[f"best-of-{n}"] = {column: v.to(torch.float64) for column, v in expected.items()}
    return rows


def best_of_n_rows(profile) -> list[dict]:
    """Best-of-n rows, exact expectations over all ``C(bon_n, n)`` subsets of the SFT samples."""
    cost = read_output(samples_stage(profile), "best_of_n_cost")
    sft = sft_per_prompt(profile)
    rows = []
    for (name, values), n in zip(best_of_n_values(profile).items(), profile.bon_table_n):
        report = {column: float(v.mean()) for column, v in values.items()}
        rows.append(_row(name, {**report, "kl": best_of_n_kl(n)},
                         {**cost, "seconds": cost["seconds"] * n / profile.bon_n}, training_samples=0,
                         samples_per_answer=n, trainable_parameters=0, bounds=intervals(values, sft)))
    return rows


def trained_policies(profile, *, weak_kl: bool = True, online: bool | None = None) -> list[tuple]:
    """The trained rows of the results table: ``(name, stage folder, profile, method, data)`` each."""
    online = has_gold(profile) if online is None else online
    trained = TRAINED + ((VERIFIABLE,) if has_gold(profile) else ())
    policies = [(name, method_stage(profile, method, data), profile, method, data) for name, method, data in trained]
    if weak_kl:
        for name, swept in kl_sweep_profiles(profile).items():
            policies.append((name, method_stage(swept, "ppo"), swept, "ppo", "pairs"))
    if online:
        method = profile.online_method
        policies.append((f"{method.upper()}, online round", online_stage(profile), profile, method, "pairs"))
    return policies


def kl_sweep_profiles(profile) -> dict:
    """Lesson 09's KL sweep: lesson 07's PPO with only its KL term changed, a fixed coefficient from
    ``overopt_kl_coefs`` (:func:`~rrhf_lite.course.profiles.weak_kl_profile`), by row name; the last is "PPO, weak
    KL"."""
    coefs = profile.overopt_kl_coefs
    return {("PPO, weak KL" if beta == coefs[-1] else f"PPO, fixed KL {beta:g}"): weak_kl_profile(profile, beta)
            for beta in coefs}


def results_table(profile, *, weak_kl: bool = True, online: bool | None = None) -> pd.DataFrame:
    """One row per method (SFT, best-of-n, :data:`TRAINED`, GRPO on the gold reward where there is a judge; PPO with
    fixed KL coefficients, the weakest "PPO, weak KL", and the online round's retrained policy, when asked), the
    columns of :data:`COLUMNS`. Trains whatever is not cached yet.

    ``online`` defaults to whether the profile has labellers for fresh replies: the tiny world's, or on real data
    the judge model's scores seen through Bradley-Terry noise.
    """
    rows = [sft_row(profile), *best_of_n_rows(profile)]
    for name, folder, row_profile, method, data in trained_policies(profile, weak_kl=weak_kl, online=online):
        row = trained_row(name, folder, row_profile, method, data)
        if name.endswith("online round"):
            # lesson 03's candidates (counted by trained_row) plus the replies the round-1 policy sampled for labels
            row["training_samples"] += profile.sample_prompts * profile.online_samples_per_prompt
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")[list(COLUMNS)]


def method_values(profile, **which) -> dict[str, dict[str, torch.Tensor]]:
    """Per row of the results table (``which`` as :func:`results_table`), its measured values per distinct held-out
    prompt: what paired comparisons between methods resample."""
    values = {"SFT": sft_per_prompt(profile), **best_of_n_values(profile)}
    for name, folder, row_profile, *_ in trained_policies(profile, **which):
        values[name] = per_prompt(read_output(folder, "eval").get("per_reply"), row_profile.eval_samples_per_prompt)
    return values


def paired_table(values: dict[str, dict[str, torch.Tensor]], pairs: list[tuple[str, str]],
                 column: str = "gold_reward") -> pd.DataFrame:
    """Methods compared two by two on the same held-out prompts (``values`` from :func:`method_values`): for each
    ``(a, b)``, the mean per-prompt difference ``a - b`` on ``column``, its 95% bootstrap interval over prompts, and
    the verdict it supports ("a above b" or "a below b" when the interval excludes 0, else "no difference shown")."""
    rows = []
    for a, b in pairs:
        diff = paired(values[a][column], values[b][column])
        verdict = f"{a} above {b}" if diff.positive else f"{a} below {b}" if diff.negative else "no difference shown"
        rows.append({"a": a, "b": b, f"{column} a - b": diff.mean, "lo": diff.lo, "hi": diff.hi, "verdict": verdict})
    return pd.DataFrame(rows)


def with_intervals(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The measured columns and the paired differences from SFT as text, ``mean [lo, hi]`` (95% bootstrap over the
    distinct held-out prompts), the rest as they are: the table to read. To compare a method with SFT, read its
    ``*_vs_sft`` column: a difference whose interval excludes 0 is a finding on these prompts; one whose interval
    contains 0 is not (:func:`~rrhf_lite.methods.evaluate.paired_difference`). Two trained methods are compared the same
    way, prompt by prompt (:func:`paired_table`). Either way a single training seed says nothing about the spread
    between training runs (``make study``)."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_lo", "_hi"))])
    for column in (*MEASURED, *(f"{c}_vs_sft" for c in PAIRED)):
        if column in table:
            shown[column] = [_with_interval(m, lo, hi, digits) for m, lo, hi in
                             zip(table[column], table[f"{column}_lo"], table[f"{column}_hi"])]
    return shown


def _with_interval(mean: float, lo: float, hi: float, digits: int) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if np.isnan(lo) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


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


def trajectory_values(profile) -> dict[int, dict[str, torch.Tensor]]:
    """The weak-KL PPO run at its snapshots (:func:`~rrhf_lite.course.pipeline.trajectory_stage`, built on first use):
    per iteration (0 is the SFT model), its measured values per held-out prompt."""
    points = read_output(trajectory_stage(profile), "trajectory")["points"]
    return {p["iteration"]: per_prompt(p["per_reply"], profile.eval_samples_per_prompt) for p in points}


def held_out_trajectory(profile) -> pd.DataFrame:
    """The weak-KL PPO run measured on held-out prompts at its snapshots (:func:`trajectory_values`): one row per
    snapshot (iteration 0 is the SFT model), the measured columns, their 95% bootstrap intervals over held-out prompts
    and the paired differences from SFT."""
    values = trajectory_values(profile)
    return values_table(values, values[0], "iteration")


def values_table(values: dict, sft: dict[str, torch.Tensor], index: str) -> pd.DataFrame:
    """One row per entry of ``values`` (name -> per-prompt values, :func:`per_prompt`), indexed by ``index``: the
    measured columns' means, their intervals and the paired differences from ``sft`` (:func:`intervals`)."""
    rows = [{index: name, **{c: float(v[c].mean()) for c in MEASURED if c in v}, **intervals(v, sft)}
            for name, v in values.items()]
    return pd.DataFrame(rows).set_index(index)


def kl_sweep_values(profile) -> dict[str, dict[str, torch.Tensor]]:
    """Over-optimisation across runs that differ only in their KL term: SFT (KL 0), lesson 07's PPO (adaptive
    coefficient) and PPO with each fixed coefficient of ``overopt_kl_coefs``, their measured values per held-out prompt
    (trained if missing)."""
    runs = {"PPO": method_stage(profile, "ppo"),
            **{name: method_stage(swept, "ppo") for name, swept in kl_sweep_profiles(profile).items()}}
    return {"SFT": sft_per_prompt(profile),
            **{name: per_prompt(read_output(folder, "eval")["per_reply"], profile.eval_samples_per_prompt)
               for name, folder in runs.items()}}


def peak_policy(fit: dict, kl: pd.Series) -> str:
    """The policy (``kl``: each policy's KL, by name) that a :func:`gold_fit` curve puts highest."""
    return kl.index[int(np.argmax(gold_curve(fit, kl.to_numpy())))]


def held_out_overoptimisation(profile) -> dict:
    """Gao et al.'s (2022) over-optimisation, measured on held-out prompts across lesson 09's KL sweep
    (:func:`kl_sweep_values`): the looser the KL term, the further PPO moves from SFT and the higher the proxy climbs;
    does the gold reward rise, peak and fall?

    Gao et al.'s RL form is fitted to gold reward against KL over the sweep's policies (:func:`gold_fit`); the *peak* is
    the policy that the fitted curve puts highest (chosen from the curve through every point, not as the best single
    point, whose height would be flattered by its own noise; nor as the policy nearest the fitted peak's KL, which on a
    curve this asymmetric can be SFT although the curve is higher at the next policy). Then three paired differences on
    the same held-out prompts (:func:`rrhf_lite.course.claims.paired`): ``rise`` (gold at the peak minus SFT's),
    ``fall`` (gold of the run with the loosest KL term minus the peak's) and ``proxy_after_peak`` (the same for the
    proxy reward). Returns them with the fit, the sweep table (one row per policy in order of KL, :func:`values_table`)
    and the names of the peak and the loosest run.
    """
    values = kl_sweep_values(profile)
    sweep = values_table(values, values["SFT"], "policy").sort_values("kl")
    fit = gold_fit(sweep["kl"], sweep["gold_reward"])
    peak = peak_policy(fit, sweep["kl"])
    loosest = "PPO, weak KL"
    return {"fit": fit, "sweep": sweep, "peak": peak, "loosest": loosest,
            "rise": paired(values[peak]["gold_reward"], values["SFT"]["gold_reward"]),
            "fall": paired(values[loosest]["gold_reward"], values[peak]["gold_reward"]),
            "proxy_after_peak": paired(values[loosest]["proxy_reward"], values[peak]["proxy_reward"])}


def overoptimisation_claims(shape: dict) -> list[tuple[str, bool, str]]:
    """Lesson 09's story of over-optimisation as ``(claim, holds, evidence)``, from :func:`held_out_overoptimisation`'s
    numbers: a fitted peak inside the sweep, a rise and a fall beyond their intervals, the proxy still climbing."""
    fit, sweep, peak, loosest = shape["fit"], shape["sweep"], shape["peak"], shape["loosest"]
    return [
        ("the fitted gold reward peaks at a KL above 0, inside the sweep", 0 < fit["peak_kl"] < sweep["kl"].max(),
         f"peak at KL {fit['peak_kl']:.2f} nats (the sweep reaches {sweep['kl'].max():.2f}); the policy the curve "
         f"puts highest: {peak}"),
        ("the gold reward rises from SFT to the peak", shape["rise"].positive,
         f"gold of {peak} minus SFT's: {shape['rise']}"),
        ("then falls with a looser KL term", shape["fall"].negative,
         f"gold of {loosest} minus {peak}'s: {shape['fall']}"),
        ("while the proxy reward keeps climbing", shape["proxy_after_peak"].positive,
         f"proxy of {loosest} minus {peak}'s: {shape['proxy_after_peak']}")]


def check_overoptimisation(shape: dict) -> None:
    """Each of :func:`overoptimisation_claims` checked (:func:`rrhf_lite.course.claims.check`: printed when the run
    shows it, an error naming it when not): what lesson 09 runs."""
    for claim, holds, evidence in overoptimisation_claims(shape):
        check(claim, holds, evidence)


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
