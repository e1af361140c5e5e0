"""Profiles: selection by environment variable, overrides, and a comment on every hyperparameter."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from rrhf_lite.course import profiles
from rrhf_lite.course.profiles import PROFILES, get_profile


def test_default_is_tiny_and_env_var_selects(monkeypatch):
    monkeypatch.delenv("RRHF_LITE_PROFILE", raising=False)
    assert get_profile().name == "tiny"
    monkeypatch.setenv("RRHF_LITE_PROFILE", "colab-t4")
    p = get_profile()
    assert p.name == "colab-t4" and p.load_in_4bit and p.compute_dtype == "float16"
    assert p.dataset == "Anthropic/hh-rlhf" and p.base_model


def test_overrides_and_errors():
    assert get_profile("tiny", seed=7, pretrain_steps=5).pretrain_steps == 5
    with pytest.raises(TypeError, match="no field"):
        get_profile("tiny", not_a_field=1)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("a100-cluster")


def test_a_mistyped_field_or_profile_name_is_answered_with_the_nearest_one(monkeypatch):
    with pytest.raises(TypeError, match=r"no field\(s\) \['sft_stps'\]; did you mean 'sft_stps' -> 'sft_steps'\?"):
        get_profile("tiny", sft_stps=3)
    with pytest.raises(TypeError, match=r"'SFT_STEPS' -> 'sft_steps', 'dpo_betta' -> 'dpo_beta'\?"):
        get_profile("tiny", dpo_betta=0.2, SFT_STEPS=3, zzz=1)
    with pytest.raises(TypeError, match=r"\['not_a_field'\]$"):  # nothing close: no guess
        get_profile("tiny", not_a_field=1)
    from rrhf_lite.course import build

    with pytest.raises(TypeError, match="'pretrain_step' -> 'pretrain_steps'"):
        build.main(["base", "--set", "pretrain_step=3"])
    monkeypatch.setenv("RRHF_LITE_PROFILE", "colab_t4")
    with pytest.raises(ValueError, match=r"unknown profile 'colab_t4' \(did you mean 'colab-t4'\?\)"):
        get_profile()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"sft_lr": "abc"}, "sft_lr: expected a number, got 'abc'"),
    ({"sft_steps": 2.5}, "sft_steps: expected an integer, got 2.5"),
    ({"sft_steps": 0}, "sft_steps: expected an integer >= 1, got 0"),
    ({"ppo_iterations": -5}, "ppo_iterations: expected an integer >= 1, got -5"),
    ({"dpo_lr": 0.0}, "dpo_lr: expected a number > 0, got 0.0"),
    ({"lora_dropout": 1.5}, "lora_dropout: expected a number between 0 and 1, got 1.5"),
    ({"lora_target_modules": "q_proj"}, "lora_target_modules: expected a list of str values"),
    ({"overopt_kl_coefs": (0.1, "x")}, r"overopt_kl_coefs\[1\]: expected a number, got 'x'"),
    ({"grpo_group_size": 1}, "grpo_group_size: expected an integer >= 2"),
    ({"dpo_loss_type": "hinge"}, r"dpo_loss_type: expected one of \['sigmoid', 'ipo', 'simpo'\]"),
    ({"load_in_4bit": "yes"}, "load_in_4bit: expected true or false"),
    ({"base_model": 3}, "base_model: expected a string"),
    ({"name": "mine"}, "name: it is the profile's name"),
    # probes of issue 35: what would train to NaN, read the wrong thing, or fail only hours later
    ({"sft_lr": float("inf")}, "sft_lr: expected a finite number, got inf"),
    ({"weight_decay": 1e309}, "weight_decay: expected a finite number, got inf"),
    ({"ppo_no_eos_penalty": float("-inf")}, "ppo_no_eos_penalty: expected a finite number, got -inf"),
    ({"dataset": ""}, "dataset: expected a non-empty string, got ''"),
    ({"base_model": " "}, "base_model: expected a non-empty string, or None, got ' '"),
    ({"dataset_revision": ""}, "dataset_revision: expected a non-empty string, or None"),
    ({"judge_model": "None"}, r"judge_model: expected None \(null on the command line\), not a string, got 'None'"),
    ({"runs_dir": "  "}, "runs_dir: expected a non-empty string"),
    ({"lora_target_modules": ()}, "lora_target_modules: expected a non-empty list of str values"),
    ({"lora_target_modules": ("q_proj", "")}, r"lora_target_modules\[1\]: expected a non-empty string"),
    ({"overopt_kl_coefs": []}, "overopt_kl_coefs: expected a non-empty list of float values"),
    ({"seed": 2**32}, "seed: expected an integer between 0 and 4294967295, got 4294967296"),
    ({"bon_table_n": (4, 32)}, r"bon_table_n: expected values <= bon_n \(16\).*got \[4, 32\]"),
    ({"n_head": 3}, r"n_head: expected a divisor of hidden_size \(128\): the attention heads .*; got 3"),
    ({"grpo_prompts_per_step": 3}, r"grpo_prompts_per_step: expected a divisor of grpo_prompts_per_iteration \(16\)"),
])
def test_a_bad_override_is_refused_when_the_profile_is_made_naming_field_value_and_expectation(overrides, message):
    with pytest.raises(profiles.ProfileError, match=message):
        get_profile("tiny", **overrides)


def test_command_line_overrides_are_parsed_then_checked():
    from rrhf_lite.course import build

    parsed = build.parse_overrides(["lora_target_modules=q_proj,v_proj", "overopt_kl_coefs=0.3,0.05", "sft_lr=abc"],
                                   "tiny")
    assert parsed == {"lora_target_modules": ("q_proj", "v_proj"), "overopt_kl_coefs": (0.3, 0.05), "sft_lr": "abc"}
    assert get_profile("tiny", lora_target_modules=parsed["lora_target_modules"]).lora_target_modules == (
        "q_proj", "v_proj")
    with pytest.raises(profiles.ProfileError, match="sft_lr"):
        build.main(["sft", "--set", "sft_lr=abc"])
    assert get_profile("tiny", bon_table_n=[2, 4]).bon_table_n == (2, 4)  # a list from a notebook: kept as a tuple
    for name in PROFILES:  # every profile's own values pass
        get_profile(name)
    for item in ["sft_lr=Infinity", "sft_lr=1e309", "base_model=none", "base_model="]:  # --set: refused the same
        with pytest.raises(profiles.ProfileError, match="sft_lr: expected a finite|base_model: expected"):
            get_profile("tiny", **build.parse_overrides([item], "tiny"))
    assert get_profile("tiny", **build.parse_overrides(["judge_model=null", "runs_dir="], "tiny")).judge_model is None


def test_widths_are_multiples_of_64():
    for cls in PROFILES.values():
        p = cls()
        assert p.hidden_size % 64 == 0 and p.intermediate_size % 64 == 0


def test_fingerprint_depends_only_on_named_fields():
    a, b = get_profile("tiny"), get_profile("tiny", pretrain_lr=1e-4)
    assert a.fingerprint(["seed", "n_layer"]) == b.fingerprint(["n_layer", "seed"])
    assert a.fingerprint(["pretrain_lr"]) != b.fingerprint(["pretrain_lr"])


def test_a_config_in_a_key_stands_for_every_field_it_is_built_from():
    """Stage keys name the configs a stage trains with ("dpo_config"), not lists of the fields behind them: a change
    to any field a config reads changes the key, a change to a field it does not read leaves the key alone."""
    base = get_profile("tiny")
    assert base.values(["dpo_config"])["dpo_config"]["beta"] == base.dpo_beta
    for field, value in (("dpo_beta", 0.3), ("dpo_label_smoothing", 0.1), ("weight_decay", 0.0), ("max_length", 96),
                         ("log_every", 5), ("seed", 1)):
        changed = get_profile("tiny", **{field: value})
        assert changed.fingerprint(["dpo_config"]) != base.fingerprint(["dpo_config"]), field
    for field, value in (("rrhf_lr", 1e-3), ("ppo_lr", 1e-3), ("sft_steps", 7)):
        assert get_profile("tiny", **{field: value}).fingerprint(["dpo_config"]) == base.fingerprint(["dpo_config"])
    ppo = get_profile("tiny", sample_temperature=1.0)  # PPO samples its rollouts at the profile's temperature
    assert ppo.fingerprint(["ppo_config"]) != base.fingerprint(["ppo_config"])


def test_every_field_has_a_one_line_comment():
    source = inspect.getsource(profiles)
    lines = source.splitlines()
    for cls in PROFILES.values():
        node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign):
                line = lines[stmt.lineno - 1]
                assert "  # " in line, f"{cls.__name__}.{stmt.target.id} has no comment: {line.strip()}"
    assert {f.name for f in dataclasses.fields(profiles.Profile)} >= {"seed", "lora_r", "max_length"}


def test_a_checkout_keeps_its_stages_in_its_own_runs_folder_whatever_the_working_directory(monkeypatch, tmp_path):
    """make main runs the lessons from notebooks/ and the stage builder from the repository's root: both must find the
    same cache, or every stage is built twice (and the results table lands in notebooks/runs/)."""
    from rrhf_lite.course.profiles import RUNS_ENV_VAR, default_runs_dir

    monkeypatch.delenv(RUNS_ENV_VAR, raising=False)
    repo = Path(__file__).resolve().parents[1]
    for folder in (tmp_path, repo / "notebooks", repo):
        monkeypatch.chdir(folder)
        assert default_runs_dir() == repo / "runs"


def test_a_path_is_shown_without_the_machines_folders(monkeypatch, tmp_path):
    """What a lesson prints ends up on a published page: a stage's folder reads runs/<profile>/<stage>/<key> wherever
    the runs folder is ($RRHF_LITE_RUNS or the checkout's), another path under the working directory relative to it."""
    from rrhf_lite.course.profiles import RUNS_ENV_VAR, shown

    runs, work = tmp_path / "cache" / "runs", tmp_path / "work"
    (runs / "tiny" / "sft").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(RUNS_ENV_VAR, str(runs))
    assert shown(runs / "tiny" / "sft" / "ab12") == "runs/tiny/sft/ab12"
    assert shown(get_profile("tiny").runs_path) == "runs/tiny"  # as a lesson prints where it runs
    assert shown(tmp_path / "elsewhere" / "runs" / "tiny", runs_root=tmp_path / "elsewhere" / "runs") == "runs/tiny"
    assert shown(work / "figures" / "a.png") == "figures/a.png"
    assert shown("/opt/data/prefs.jsonl") == "/opt/data/prefs.jsonl"  # outside both: as given


def test_a_runs_folder_under_home_written_with_a_tilde_is_the_home_folder(monkeypatch, tmp_path):
    """%env RRHF_LITE_RUNS=~/runs (a notebook) or a quoted value does not expand the ~: a folder named '~' in the
    working directory would take the stages, and the next session, elsewhere, would not find them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRHF_LITE_RUNS", "~/course-runs")
    assert get_profile("tiny").runs_path == tmp_path / "course-runs" / "tiny"
    assert get_profile("tiny", runs_dir="~/mine").runs_path == tmp_path / "mine" / "tiny"
    monkeypatch.setenv("RRHF_LITE_RUNS", "  ")  # blank: as if unset, not a folder named '  '
    assert get_profile("tiny").runs_path.parent.name == "runs"
