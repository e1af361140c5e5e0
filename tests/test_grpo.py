"""GRPO and RLOO on a small model against rules: the trainers on objects, the known answers, resuming."""

import math

import pytest
import torch
from conftest import SMALL  # tests/conftest.py

from rrhf_lite.core.loop import CHECKPOINT_FILE
from rrhf_lite.core.losses import group_advantages
from rrhf_lite.core.models import load_for_training
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld
from rrhf_lite.methods import grpo
from rrhf_lite.methods.grpo import GRPOConfig, collect_groups, group_rows, group_step, train_grpo, train_rloo

KEYS = {"iteration", "proxy_reward", "score", "gold_reward", "kl", "ended", "reply_tokens", "zero_advantage_groups",
        "lr", "loss", "grad_norm"}


def config(**changes) -> GRPOConfig:
    small = dict(iterations=2, prompts_per_iteration=4, group_size=4, prompts_per_step=2, max_new_tokens=8,
                 max_length=128, lr=1e-3)
    return GRPOConfig(**{**small, **changes})


def policy(saved_model):
    return load_for_training(saved_model, get_profile("tiny", **SMALL))


def shorter_is_better(prompts, replies):
    return [-len(reply.split()) / 4 for reply in replies]


PROMPTS = TinyWorld(seed=0).sample_prompts(8)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_trains_against_a_rule_and_records_what_it_sampled(saved_model, method):
    model, tokenizer = policy(saved_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    seen = []

    def rule(prompts, replies):
        scores = shorter_is_better(prompts, replies)
        seen.append((list(prompts), scores))
        return scores

    trainer = train_grpo if method == "grpo" else train_rloo
    history = trainer(model, tokenizer, rule, PROMPTS, config(method=method), progress=False)
    assert [row["iteration"] for row in history] == [1, 2]
    assert all(KEYS <= set(row) for row in history)
    assert all(math.isfinite(v) for row in history for v in row.values() if v is not None)
    # each prompt answered group_size times, the prompts taken in order; the history holds the rule's mean score
    assert [c[0] for c in seen] == [[p for p in PROMPTS[i * 4:(i + 1) * 4] for _ in range(4)] for i in range(2)]
    assert [row["proxy_reward"] for row in history] == pytest.approx([sum(s) / len(s) for _, s in seen])
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first groups come from the reference itself
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_a_group_of_equal_rewards_teaches_nothing(saved_model, method):
    """Every reply scored the same: zero advantages, and at the first step (policy = reference) a zero KL gradient,
    so the adapters do not move (no weight decay, which would move them without a gradient)."""
    model, tokenizer = policy(saved_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = config(method=method, iterations=1, prompts_per_step=4, weight_decay=0.0, no_eos_penalty=1.0)
    history = train_grpo(model, tokenizer, lambda prompts, replies: [1.0] * len(replies), PROMPTS, cfg,
                         progress=False)
    assert history[0]["zero_advantage_groups"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_rloo_takes_one_step_per_rollout_however_it_is_chunked(saved_model):
    """RLOO's one step per rollout (the paper) is the same step whether its gradient is summed over two forward passes
    of 2 prompts or taken in one of 4; GRPO with 2 prompts per step takes two steps."""
    weights, steps = {}, {}
    for method, per_step in (("rloo", 2), ("rloo", 4), ("grpo", 2)):
        model, tokenizer = policy(saved_model)
        history = train_grpo(model, tokenizer, shorter_is_better, PROMPTS,
                             config(method=method, iterations=1, prompts_per_step=per_step), progress=False)
        weights[method, per_step] = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        steps[method, per_step] = history[0]
    for a, b in zip(weights["rloo", 2], weights["rloo", 4]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert steps["rloo", 2]["loss"] == pytest.approx(steps["rloo", 4]["loss"], abs=1e-5)
    assert steps["rloo", 2]["grad_norm"] == pytest.approx(steps["rloo", 4]["grad_norm"], rel=1e-4)
    assert not all(torch.equal(a, b) for a, b in zip(weights["grpo", 2], weights["rloo", 2]))


def test_the_first_update_records_the_log_probs_that_the_rollout_skipped(saved_model):
    """The rows of a rollout's first update get their log pi_old from that update's own forward pass (the policy has
    not moved yet) instead of a pass of their own: the same numbers, and the same loss."""
    model, tokenizer = policy(saved_model)
    cfg = config(iterations=1, prompts_per_step=2)
    first = group_rows(torch.tensor([1, 3]), cfg.group_size)
    full = collect_groups(model, tokenizer, shorter_is_better, PROMPTS[:4], cfg, seed=0)
    skipped = collect_groups(model, tokenizer, shorter_is_better, PROMPTS[:4], cfg, seed=0, first_step_rows=first)
    assert skipped.logprobs[first].isnan().all() and not skipped.logprobs.isnan().all()
    advantages = group_advantages(full.scores.view(4, -1)).view(-1)
    full_loss, _ = group_step(model, full, advantages, first, cfg)
    skipped_loss, _ = group_step(model, skipped, advantages, first, cfg)
    torch.testing.assert_close(skipped_loss, full_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(skipped.logprobs * skipped.mask, full.logprobs * full.mask, rtol=1e-5, atol=1e-5)


def test_a_killed_run_resumes_to_the_same_numbers(saved_model, tmp_path, monkeypatch):
    cfg = config(iterations=3, checkpoint_every=1)
    model, tokenizer = policy(saved_model)
    uninterrupted = train_grpo(model, tokenizer, shorter_is_better, PROMPTS, cfg, progress=False)
    real_save = grpo.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(grpo, "save_checkpoint", save_then_die)
    model, tokenizer = policy(saved_model)
    with pytest.raises(KeyboardInterrupt):
        train_grpo(model, tokenizer, shorter_is_better, PROMPTS, cfg, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(grpo, "save_checkpoint", real_save)
    assert (tmp_path / CHECKPOINT_FILE).exists()
    model, tokenizer = policy(saved_model)
    resumed = train_grpo(model, tokenizer, shorter_is_better, PROMPTS, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed == uninterrupted


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        train_grpo(None, None, None, PROMPTS, config(method="ppo"))
    with pytest.raises(ValueError, match="must divide"):
        train_grpo(None, None, None, PROMPTS, config(prompts_per_step=3))
    with pytest.raises(ValueError, match="method='rloo'"):
        train_rloo(None, None, None, PROMPTS, config())


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_the_course_trains_them_against_its_reward_model_and_saves_them(stages, tmp_path, method):
    from rrhf_lite.course.training import train_group_folder

    profile = get_profile("tiny", **SMALL, max_new_tokens=8, grpo_iterations=2, grpo_prompts_per_iteration=4,
                          grpo_prompts_per_step=2)
    config = profile.grpo_config(method)
    assert config.method == method and config.prompts_per_step == 2
    history = train_group_folder(profile, config, *stages, tmp_path / "out", None, PROMPTS, progress=False)
    assert len(history) == 2 and history[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "history.json").exists()
