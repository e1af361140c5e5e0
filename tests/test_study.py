"""The multi-seed study: every method trained with several seeds on the same SFT and reward model (rehearsal profile,
2 seeds, a few steps each), summarised with intervals over seeds."""

import json

import numpy as np
import pandas as pd
import pytest

from rrhf_lite.course import study
from rrhf_lite.course.plots import plot_sqrt_kl_trajectory
from rrhf_lite.course.profiles import get_profile


def test_t_intervals_have_known_answers():
    assert study.mean_interval([1.0, 3.0]) == pytest.approx((2.0, 2.0 - 12.706, 2.0 + 12.706))  # sd sqrt(2), n 2
    assert study.mean_interval([5.0, 5.0, 5.0]) == pytest.approx((5.0, 5.0, 5.0))
    assert study.t_quantile(30) == pytest.approx(2.042, abs=0.01)
    with pytest.raises(ValueError, match="2 seeds"):
        study.t_quantile(0)


def test_holm_rejects_step_down_and_stops_at_the_first_that_fails():
    assert study.holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= 0.05/3, then 0.03 > 0.05/2: stop
    assert study.holm([0.01, 0.02, 0.04]) == [True, True, True]  # 0.01 <= 0.0167, 0.02 <= 0.025, 0.04 <= 0.05
    assert study.holm([0.2]) == [False] and study.holm([0.05]) == [True]


def test_differences_are_shown_only_after_holm_s_correction():
    runs = pd.DataFrame({"method": ["A"] * 3 + ["B"] * 3 + ["C"] * 3 + ["D"] * 3, "seed": [0, 1, 2] * 4,
                         "gold_reward": [1.0, 1.1, 0.9, 3.0, 3.1, 2.9, 1.0, 3.0, -1.0, 1.2, 1.35, 1.25],
                         "proxy_reward": 0.0, "kl": 0.5, "win_rate_vs_sft": 0.5})
    result = study.summarise(runs, get_profile("tiny"), seeds=3)
    by_pair = {(d["a"], d["b"]): d for d in result["differences"]}
    assert by_pair[("A", "B")]["shown"] and not by_pair[("A", "C")]["shown"]
    # A - D: its own 95% interval excludes 0 (p about 0.02), but not after correcting for six pairs
    assert by_pair[("A", "D")]["hi"] < 0 and 0.01 < by_pair[("A", "D")]["p"] < 0.05 and not by_pair[("A", "D")]["shown"]
    text = study.describe(result)
    assert "A - B: gold_reward -2.00" in text and "no difference shown" in text and "real" not in text


def test_study_on_the_rehearsal_profile():
    # the shared stage cache: the seed-0 runs, the SFT and reward models and the samples are the rehearsal lessons'
    # (tests/test_lessons.py), built once for both
    profile = get_profile("rehearsal")
    result = study.run_study(profile, seeds=2, progress=False)
    runs = pd.DataFrame(result["runs"])
    assert len(runs) == 2 * len(study.METHODS) and set(runs["seed"]) == {0, 1}
    # another training seed trains another model: the measured KL differs between seeds for every method
    assert (runs.groupby("method")["kl"].nunique() == 2).all()
    summary = pd.DataFrame(result["summary"]).set_index("method")
    assert (summary["kl_lo"] <= summary["kl"]).all() and (summary["kl"] <= summary["kl_hi"]).all()
    assert np.isfinite(summary[["gold_reward_lo", "gold_reward_hi"]].to_numpy()).all()
    # PRO's ranking lengths are methods of their own
    assert {"PRO, length 2", "PRO, length 3", "PRO, length 4"} <= set(summary.index)
    # the weak-KL PPO run on held-out prompts: the SFT model at KL 0, then every snapshot (one per iteration here)
    points = pd.DataFrame(result["trajectory"]).set_index("iteration")
    assert list(points.index) == list(range(profile.ppo_iterations + 1)) and points.loc[0, "kl"] == 0
    assert (points["kl_lo"] <= points["kl"] + 1e-9).all() and (points["kl"] <= points["kl_hi"] + 1e-9).all()
    lines = result["trajectory_sqrt_kl_fits"]
    assert set(lines) == {"proxy_reward", "gold_reward"} and lines["gold_reward"]["points"] == len(points)
    ax = plot_sqrt_kl_trajectory(points, "gold_reward", lines["gold_reward"], result["trajectory_gold_fit"])
    # the weak-KL run's over-optimisation, once per training seed: every part of the shape with its interval
    shapes = pd.DataFrame(result["overoptimisation"]).set_index("seed")
    assert list(shapes.index) == [0, 1] and shapes["shape_shown"].dtype == bool
    assert ((shapes["rise_lo"] <= shapes["rise"]) & (shapes["rise"] <= shapes["rise_hi"])).all()
    assert len(ax.get_lines()) >= 2  # the line and Gao et al.'s curve
    study.save_study(result, profile)
    assert study.load_study(profile)["seeds"] == 2
    assert (profile.runs_path / "figures" / "study_frontier.png").exists()
    assert study.load_study(get_profile("rehearsal", dpo_beta=0.5)) is None  # other settings
    assert study.load_study(get_profile("rehearsal", overopt_kl_coefs=(0.5,))) is None
    made_by_other_code = {**result, "settings": {**result["settings"], "code": "0" * 12}}
    (profile.runs_path / "study.json").write_text(json.dumps(made_by_other_code, default=str))
    assert study.load_study(profile) is None
    study.save_study(result, profile)
    assert json.loads((profile.runs_path / "study.json").read_text())["profile"] == "rehearsal"
