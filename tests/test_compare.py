"""Lesson 08's pieces: the results table, best-of-n rows, over-optimisation and the online round's helpers.

The unit tests use small hand-made inputs with known answers; the last test builds the real table from the tiny
profile's stage cache (shared with the notebooks) and checks its shape and sanity.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rrhf_lite import build, compare, pipeline
from rrhf_lite.best_of_n import best_of_n_expectation
from rrhf_lite.online import label_pairs, ranks_like_gold
from rrhf_lite.profiles import get_profile


def test_gold_fit_recovers_a_known_peak_in_gao_et_al_rl_form():
    kl = np.linspace(0, 9, 40)
    d = np.sqrt(kl)
    gold = 2.0 + d * (1.0 - 0.5 * np.log(np.where(d > 0, d, 1.0)))  # peak where 1 - 0.5 (ln d + 1) = 0: d = e
    fit = compare.gold_fit(kl, gold)
    assert fit["form"] == "rl" and fit["alpha"] == pytest.approx(1.0) and fit["beta"] == pytest.approx(0.5)
    assert fit["peak_kl"] == pytest.approx(np.e ** 2) and fit["gold_at_peak"] == pytest.approx(2.0 + 0.5 * np.e)
    assert compare.gold_curve(fit, kl) == pytest.approx(gold)


def test_gold_fit_in_the_best_of_n_form_and_curves_that_never_turn():
    kl = np.linspace(0, 4, 30)
    fit = compare.gold_fit(kl, 2.0 + np.sqrt(kl) - 0.5 * kl, form="bon")  # peaks at sqrt(KL) = 1
    assert fit["peak_kl"] == pytest.approx(1.0) and fit["gold_at_peak"] == pytest.approx(2.5)
    assert compare.gold_fit(kl, 1.0 - kl, form="bon")["peak_kl"] == pytest.approx(0.0, abs=1e-9)  # never rises
    assert compare.gold_fit(kl, 1.0 + kl)["peak_kl"] == pytest.approx(4.0)  # never falls: peak at the last point
    with pytest.raises(ValueError, match="form"):
        compare.gold_fit(kl, kl, form="linear")


def test_overoptimisation_finds_the_gold_peak_and_the_proxy_gain_after_it():
    iterations = np.arange(1, 21)
    kl = iterations * 0.2
    d = np.sqrt(kl)
    history = pd.DataFrame({"iteration": iterations, "kl": kl, "proxy_reward": iterations * 0.1,  # climbs
                            "gold_reward": 2.0 + d * (1.0 - 2.0 * np.log(d))})  # RL form, peaks at d = e^-0.5
    for c in ("kl", "proxy_reward", "gold_reward"):
        history[f"{c}_smooth"] = history[c]
    info = compare.overoptimisation(history, tail=1)
    peak_kl = np.exp(-1.0)  # d*^2 = 0.37: nearest rollout KL 0.4 = iteration 2
    assert info["peak_kl"] == pytest.approx(peak_kl) and info["peak_iteration"] == 2
    assert info["gold_at_peak"] == pytest.approx(2.0 + 2.0 * np.sqrt(peak_kl))
    assert info["proxy_gain_after_peak"] == pytest.approx(2.0 - 0.2)
    assert info["gold_loss_after_peak"] == pytest.approx(info["gold_at_peak"] - history["gold_reward"].iloc[-1])
    assert info["curve_gold"][0] == pytest.approx(2.0)


def test_training_trajectory_smooths_each_curve(tmp_path):
    rows = [{"iteration": i, "kl": float(i), "proxy_reward": float(i % 2), "gold_reward": 1.0} for i in range(6)]
    (tmp_path / "history.json").write_text(pd.Series({"history": rows}).to_json())
    history = compare.training_trajectory(tmp_path, smooth=3)
    assert history["gold_reward_smooth"].tolist() == [1.0] * 6
    assert history["proxy_reward_smooth"].iloc[1] == pytest.approx(1 / 3)  # mean of 0, 1, 0


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


def test_weak_kl_profile_changes_only_ppo_s_kl_penalty_length_learning_rate_and_snapshots():
    profile = get_profile("tiny")
    weak = compare.weak_kl_profile(profile)
    changed = {k for k, v in weak.to_dict().items() if v != getattr(profile, k)}
    assert changed <= {"ppo_kl_coef", "ppo_adaptive_kl", "ppo_iterations", "ppo_lr", "ppo_snapshot_every"}
    assert weak.ppo_kl_coef == profile.overopt_kl_coef and not weak.ppo_adaptive_kl


def test_results_table_on_the_tiny_profile(tmp_path):
    """The real table, from the shared stage cache: every method present, sane numbers, saved and read back."""
    profile = get_profile("tiny")
    # The stages that only this table and lesson 08 need, first, built as make main builds them beside lessons 04-07:
    # meanwhile the other pytest worker builds the methods that tests/test_pipeline.py asks for (RRHF, PRO, DPO, PPO),
    # so the two workers build different stages. Lesson 08 then finds them under the keys it asks for.
    built = build.main(["rrhf", "online", "ppo-weak", "--profile", "tiny"])
    assert built["online"] == str(pipeline.online_stage(profile))
    assert built["ppo-weak"] == str(pipeline.method_stage(compare.weak_kl_profile(profile), "ppo"))
    table = compare.results_table(profile)
    expected = {"SFT", "RRHF", "PRO", "DPO", "PPO", "PPO, weak KL", "RRHF, online round",
                *(f"best-of-{n}" for n in profile.bon_table_n)}
    assert set(table.index) == expected and list(table.columns) == list(compare.COLUMNS)
    assert table.loc["SFT", "kl"] == 0.0 and table.loc["SFT", "win_rate_vs_sft"] == 0.5
    assert (table["kl"] >= 0).all(), table["kl"]
    measured = table[[c for c in table.columns if not c.endswith(("_lo", "_hi"))]]
    assert measured.notna().all().all() and np.isfinite(measured.to_numpy(dtype=float)).all()
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


def trained_rows(table) -> list[str]:
    return [name for name in table.index if not name.startswith("best-of-")]


def test_intervals_and_their_display():
    per_reply = {"gold_reward": [1.0, 3.0, 3.0, 1.0], "proxy_reward": [0.5] * 4}  # two prompts, two replies each
    bounds = compare.intervals(per_reply, prompts=2)
    assert bounds["gold_reward_lo"] == pytest.approx(2.0) and bounds["gold_reward_hi"] == pytest.approx(2.0)
    assert bounds["proxy_reward_lo"] == bounds["proxy_reward_hi"] == pytest.approx(0.5)
    assert np.isnan(bounds["kl_lo"]) and np.isnan(compare.intervals(None, 2)["win_rate_vs_sft_hi"])  # not measured
    table = pd.DataFrame([{"method": "A", "gold_reward": 2.0, "proxy_reward": 0.5, "kl": 0.25,
                           "win_rate_vs_sft": 0.5, **bounds}]).set_index("method")
    shown = compare.with_intervals(table)
    assert shown.loc["A", "gold_reward"] == "2.00 [2.00, 2.00]" and shown.loc["A", "kl"] == "0.25"
    assert not any(c.endswith(("_lo", "_hi")) for c in shown.columns)
