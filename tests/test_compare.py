"""Lesson 09's pieces: the results table, best-of-n rows, over-optimisation and the online round's helpers.

The unit tests use small hand-made inputs with known answers; the last test builds the real table from the tiny
profile's stage cache (shared with the notebooks) and checks its shape and sanity.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rrhf_lite.course import build, compare, fits, pipeline, sources
from rrhf_lite.course.claims import ClaimNotShown, Difference
from rrhf_lite.course.online import label_pairs, ranks_like_gold
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.methods.best_of_n import best_of_n_expectation


def test_gold_fit_recovers_a_known_peak_in_gao_et_al_rl_form():
    kl = np.linspace(0, 9, 40)
    d = np.sqrt(kl)
    gold = 2.0 + d * (1.0 - 0.5 * np.log(np.where(d > 0, d, 1.0)))  # peak where 1 - 0.5 (ln d + 1) = 0: d = e
    fit = fits.gold_fit(kl, gold)
    assert fit["form"] == "rl" and fit["alpha"] == pytest.approx(1.0) and fit["beta"] == pytest.approx(0.5)
    assert fit["peak_kl"] == pytest.approx(np.e ** 2) and fit["gold_at_peak"] == pytest.approx(2.0 + 0.5 * np.e)
    assert fits.gold_curve(fit, kl) == pytest.approx(gold)


def test_gold_fit_in_the_best_of_n_form_and_curves_that_never_turn():
    kl = np.linspace(0, 4, 30)
    fit = fits.gold_fit(kl, 2.0 + np.sqrt(kl) - 0.5 * kl, form="bon")  # peaks at sqrt(KL) = 1
    assert fit["peak_kl"] == pytest.approx(1.0) and fit["gold_at_peak"] == pytest.approx(2.5)
    assert fits.gold_fit(kl, 1.0 - kl, form="bon")["peak_kl"] == pytest.approx(0.0, abs=1e-9)  # never rises
    assert fits.gold_fit(kl, 1.0 + kl)["peak_kl"] == pytest.approx(4.0)  # never falls: peak at the last point
    with pytest.raises(ValueError, match="form"):
        fits.gold_fit(kl, kl, form="linear")


def test_the_overoptimisation_check_names_the_first_part_of_the_shape_that_is_missing(capsys):
    sweep = pd.DataFrame({"kl": [0.0, 0.5, 2.0, 6.0]}, index=["SFT", "PPO", "PPO, fixed KL 0.1", "PPO, weak KL"])
    up, down = Difference(0.3, 0.1, 0.5, 200), Difference(-1.0, -1.3, -0.7, 200)
    shape = {"fit": {"peak_kl": 0.4}, "sweep": sweep, "peak": "PPO", "loosest": "PPO, weak KL", "rise": up,
             "fall": down, "proxy_after_peak": up}
    compare.check_overoptimisation(shape)
    assert capsys.readouterr().out.count("✓") == 4
    with pytest.raises(ClaimNotShown, match="rises from SFT to the peak"):
        compare.check_overoptimisation({**shape, "rise": Difference(0.1, -0.1, 0.3, 200)})
    with pytest.raises(ClaimNotShown, match="peaks at a KL above 0"):
        compare.check_overoptimisation({**shape, "fit": {"peak_kl": 0.0}})


def test_best_of_n_win_rate_at_n_1_is_the_plain_win_rate():
    # Best-of-1 picks a random sample: its expected "beats the baseline" is the share of samples that beat it.
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]], dtype=torch.float64)
    baseline = torch.tensor([[2.5], [0.0]], dtype=torch.float64)
    wins = (gold > baseline).double() + 0.5 * (gold == baseline).double()
    win_1 = best_of_n_expectation(gold, wins, 1)
    assert win_1.tolist() == [0.5, (0.5 + 0.5 + 1 + 1) / 4]
    assert best_of_n_expectation(gold, wins, 4).tolist() == [1.0, 1.0]  # the best of all always wins here


def test_label_pairs_prefers_the_better_reply_at_low_noise_and_skips_identical_pairs():
    gold = {"good": 3.0, "bad": -3.0}
    score = lambda prompts, replies: [gold[r] for r in replies]  # noqa: E731
    pairs = label_pairs(["p1", "p2", "p3"], ["bad", "good", "good"], ["good", "good", "bad"], score,
                        temperature=0.01, seed=0)
    assert pairs["prompt"] == ["p1", "p3"]
    assert pairs["chosen"] == ["good", "good"] and pairs["rejected"] == ["bad", "bad"]
    assert pairs["gold_chosen"] == [3.0, 3.0]


def test_label_pairs_at_high_noise_follows_bradley_terry():
    score = lambda prompts, replies: [1.0 if r == "a" else 0.0 for r in replies]  # noqa: E731
    pairs = label_pairs(["p"] * 2000, ["a"] * 2000, ["b"] * 2000, score, temperature=1.0, seed=0)
    # Bradley-Terry: P(a chosen) = sigmoid(1 / 1) = 0.731
    share = sum(c == "a" for c in pairs["chosen"]) / len(pairs)
    assert abs(share - 1 / (1 + math.exp(-1))) < 0.03


def test_label_pairs_wants_one_reply_of_each_side_per_prompt():
    with pytest.raises(ValueError, match="2 prompts, 2 replies_a and 1 replies_b"):
        label_pairs(["p", "q"], ["a", "b"], ["c"], lambda p, r: [0.0] * len(r), 1.0, 0)


def test_ranks_like_gold_is_1_for_the_judge_itself_and_0_for_its_opposite_and_skips_ties():
    gold = lambda prompts, replies: [float(len(r)) for r in replies]  # noqa: E731
    anti = lambda prompts, replies: [-float(len(r)) for r in replies]  # noqa: E731
    args = (["p"] * 3, ["a", "bbb", "cc"], ["bb", "c", "dd"])
    assert ranks_like_gold(gold, gold, *args) == {"agreement": 1.0, "pairs": 2}
    assert ranks_like_gold(anti, gold, *args) == {"agreement": 0.0, "pairs": 2}


def test_the_kl_sweep_changes_only_ppo_s_kl_term():
    profile = get_profile("tiny")
    sweep = compare.kl_sweep_profiles(profile)
    assert list(sweep) == ["PPO, fixed KL 0.1", "PPO, weak KL"]
    for beta, weak in zip(profile.overopt_kl_coefs, sweep.values()):
        changed = {k for k, v in weak.to_dict().items() if v != getattr(profile, k)}
        assert changed <= {"ppo_kl_coef", "ppo_adaptive_kl", "ppo_snapshot_every"}
        assert weak.ppo_kl_coef == beta and not weak.ppo_adaptive_kl
    assert compare.weak_kl_profile(profile).ppo_snapshot_every == profile.overopt_snapshot_every


def test_the_peak_is_the_policy_the_fitted_curve_puts_highest():
    # training seed 2 of the study: the fitted peak (KL 0.21) is a little nearer SFT (KL 0) than PPO (KL 0.43), but
    # the curve is higher at PPO; "the policy nearest the peak's KL" picked SFT and hid a rise the data shows
    kl = pd.Series({"SFT": 0.0, "PPO": 0.429, "PPO, fixed KL 0.1": 2.088, "PPO, weak KL": 8.815})
    fit = fits.gold_fit(kl, [1.552, 1.777, 1.442, -0.611])
    assert abs(fit["peak_kl"] - 0.0) < abs(fit["peak_kl"] - 0.429)
    assert compare.peak_policy(fit, kl) == "PPO"
    assert compare.peak_policy(fits.gold_fit(kl, [2.0, 1.5, 1.0, 0.0]), kl) == "SFT"  # falling from the start


def test_results_table_on_the_tiny_profile(tmp_path):
    """The real table, from the shared stage cache: every method present, sane numbers, saved and read back."""
    profile = get_profile("tiny")
    # The stages that only this table and lesson 09 need, first, built as make main builds them beside lessons 04-07:
    # meanwhile the other pytest worker builds the methods that tests/test_pipeline.py asks for (RRHF, PRO, DPO, PPO),
    # so the two workers build different stages. Lesson 09 then finds them under the keys it asks for.
    built = build.main(["rrhf", "online", "ppo-sweep", "ppo-trajectory", "--profile", "tiny"])
    assert built["online"] == str(pipeline.online_stage(profile))
    assert built["ppo-sweep"] == str(pipeline.method_stage(compare.weak_kl_profile(profile), "ppo"))
    table = compare.results_table(profile)
    expected = {"SFT", "RRHF", "PRO", "DPO", "SimPO", "PPO", "GRPO", "RLOO", "GRPO, gold reward", "PPO, fixed KL 0.1",
                "PPO, weak KL", "RRHF, online round", *(f"best-of-{n}" for n in profile.bon_table_n)}
    assert set(table.index) == expected and list(table.columns) == list(compare.COLUMNS)
    assert table.loc["SFT", "kl"] == 0.0 and table.loc["SFT", "win_rate_vs_sft"] == 0.5
    assert (table["kl"] >= 0).all(), table["kl"]
    measured = table[[c for c in table.columns if not c.endswith(("_lo", "_hi"))]].drop(columns="kl_vs_sft")
    assert measured.notna().all().all() and np.isfinite(measured.to_numpy(dtype=float)).all()
    # every interval rests on the distinct held-out prompts; every paired difference from SFT is the difference of
    # the two means (the same prompts, as often each), inside its interval; SFT's from itself is exactly 0
    assert (table["prompts"] == profile.eval_prompts).all() and len(set(sources.eval_prompts(profile))) == 200
    for column in compare.PAIRED:
        rows = trained_rows(table) if column == "kl" else list(table.index)
        diff = table.loc[rows, f"{column}_vs_sft"]
        assert np.allclose(diff, table.loc[rows, column] - table.loc["SFT", column]), column
        assert (table.loc[rows, f"{column}_vs_sft_lo"] <= diff + 1e-9).all(), column
        assert (diff <= table.loc[rows, f"{column}_vs_sft_hi"] + 1e-9).all(), column
        assert table.loc["SFT", [f"{column}_vs_sft", f"{column}_vs_sft_lo", f"{column}_vs_sft_hi"]].tolist() == [0] * 3
    # every measured column has its interval around it, except best-of-n's KL, which is a bound, not a measurement
    for column in compare.MEASURED:
        lo, hi = table[f"{column}_lo"], table[f"{column}_hi"]
        if column == "kl":
            lo, hi, mid = lo[trained_rows(table)], hi[trained_rows(table)], table.loc[trained_rows(table), column]
        else:
            mid = table[column]
        assert (lo <= mid + 1e-9).all() and (mid <= hi + 1e-9).all(), column
    assert table["win_rate_vs_sft"].between(0, 1).all()
    trained = table.drop(index=["SFT", *(f"best-of-{n}" for n in profile.bon_table_n)])
    assert (trained["train_seconds"] > 0).all() and (trained["trainable_parameters"] > 0).all()
    # best-of-n's gold rises from n = 1 (the SFT samples' mean) and its proxy rises with n
    assert table.loc[f"best-of-{profile.bon_table_n[-1]}", "proxy_reward"] > table.loc[
        f"best-of-{profile.bon_table_n[0]}", "proxy_reward"]
    csv, js = compare.save_results(table, profile.__class__(runs_dir=str(tmp_path)))
    assert pd.read_csv(csv, index_col="method").shape == table.shape
    assert [row["method"] for row in json.loads(js.read_text())["rows"]] == list(table.index)


def test_lesson_09s_overoptimisation_check_fails_when_the_sweep_stays_firm():
    """Lesson 09's over-optimisation story rests on its KL sweep reaching past the gold peak. With one setting changed,
    a sweep whose loosest coefficient is nearly as firm as lesson 07's PPO (0.4 instead of 0.02), the same check that
    lesson 09 runs (compare.check_overoptimisation) must fail, naming the sentence this run no longer supports (here
    the first: no peak inside the sweep, since the gold reward never turns down)."""
    profile = get_profile("tiny", overopt_kl_coefs=(0.4,))
    with pytest.raises(ClaimNotShown, match="the lesson says: "):
        compare.check_overoptimisation(compare.held_out_overoptimisation(profile))


def trained_rows(table) -> list[str]:
    return [name for name in table.index if not name.startswith("best-of-")]


def test_intervals_and_their_display():
    values = compare.per_prompt({"gold_reward": [1.0, 3.0, 3.0, 1.0], "proxy_reward": [0.5] * 4}, 2)  # two prompts
    sft = {"gold_reward": torch.tensor([1.0, 1.5], dtype=torch.float64)}
    bounds = compare.intervals(values, sft)
    assert bounds["gold_reward_lo"] == pytest.approx(2.0) and bounds["gold_reward_hi"] == pytest.approx(2.0)
    assert bounds["proxy_reward_lo"] == bounds["proxy_reward_hi"] == pytest.approx(0.5)
    assert bounds["gold_reward_vs_sft"] == pytest.approx(0.75)  # (2 - 1 + 2 - 1.5) / 2
    assert bounds["gold_reward_vs_sft_lo"] == pytest.approx(0.5) and bounds["gold_reward_vs_sft_hi"] == pytest.approx(1)
    assert np.isnan(bounds["proxy_reward_vs_sft"]) and bounds["prompts"] == 2  # SFT has no proxy values here
    assert np.isnan(bounds["kl_lo"]) and np.isnan(compare.intervals({})["win_rate_vs_sft_hi"])  # not measured
    table = pd.DataFrame([{"method": "A", "gold_reward": 2.0, "proxy_reward": 0.5, "kl": 0.25,
                           "win_rate_vs_sft": 0.5, **bounds}]).set_index("method")
    shown = compare.with_intervals(table)
    assert shown.loc["A", "gold_reward"] == "2.00 [2.00, 2.00]" and shown.loc["A", "kl"] == "0.25"
    assert shown.loc["A", "gold_reward_vs_sft"] == "0.75 [0.50, 1.00]" and shown.loc["A", "kl_vs_sft"] == "n/a"
    assert not any(c.endswith(("_lo", "_hi")) for c in shown.columns)


def test_paired_table_gives_a_verdict_only_where_the_interval_excludes_0():
    easy_and_hard = torch.tensor([5.0, -5.0] * 50, dtype=torch.float64)
    values = {"A": {"gold_reward": easy_and_hard + 0.5}, "B": {"gold_reward": easy_and_hard},
              "C": {"gold_reward": easy_and_hard + torch.tensor([1.0, -1.0] * 50, dtype=torch.float64)}}
    table = compare.paired_table(values, [("A", "B"), ("B", "A"), ("C", "B")])
    assert table["verdict"].tolist() == ["A above B", "B below A", "no difference shown"]
    assert table["gold_reward a - b"].tolist() == pytest.approx([0.5, -0.5, 0.0])
