"""PPO: per-token rewards, the KL controller, the one-model memory layout, and short runs on a small model."""

import json
import math

import pytest
import torch
from conftest import RUN, SMALL, STATS  # tests/conftest.py; the `stages` fixture lives there too
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rrhf_lite.core.logprobs import sampled_batch, sequence_logprobs, tokenize_pair
from rrhf_lite.core.loop import CHECKPOINT_FILE
from rrhf_lite.core.models import load_for_training
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.sources import rollout_prompts
from rrhf_lite.course.training import train_ppo_folder
from rrhf_lite.course.world import TinyWorld, gold_rewards
from rrhf_lite.methods import ppo
from rrhf_lite.methods.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyAndValue,
    PPOConfig,
    collect_rollout,
    init_value_head,
    kl_controller,
    policy_forward,
    ppo_update,
    reference_logprobs,
    reward_head_weight,
    score_replies,
    token_rewards,
    train_ppo,
)
from rrhf_lite.methods.reward import load_reward_model, normalised_scorer

HISTORY_KEYS = {"iteration", "proxy_reward", "score", "gold_reward", "kl", "beta", "lr", "approx_kl",
                "clip_fraction", "value_loss", "policy_loss", "entropy", "ended", "reply_tokens"}


def small_policy(stages) -> tuple[PolicyAndValue, object]:
    policy, tokenizer = load_for_training(stages[0] / "model", get_profile("tiny", **SMALL))
    return PolicyAndValue(policy), tokenizer


def run(profile, stages, out, checkpoint_dir=None, gold_fn=None):
    """The course's PPO stage body: PPO from the small SFT model against the small reward model, saved in ``out``."""
    prompts = rollout_prompts(profile, profile.ppo_rollout_prompts * profile.ppo_iterations)
    return train_ppo_folder(profile, *stages, out, checkpoint_dir, prompts, gold_fn=gold_fn, progress=False)


def perturb_adapters(model) -> None:
    """Fresh LoRA adapters are zero (B = 0); give them weights so the policy differs from the reference."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)


def some_batch(tokenizer, n=3):
    prompts = TinyWorld(seed=0).sample_prompts(n)
    replies = [tokenizer(" Boil fresh water.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
               tokenizer(" No.", add_special_tokens=False)["input_ids"],  # a reply without eos
               tokenizer(" Sure. Pour it.", add_special_tokens=False)["input_ids"]][:n]
    return sampled_batch(tokenizer, prompts, replies), replies


# --------------------------------------------------------------------------------------------------------------------
# Rewards and the KL coefficient, by hand
# --------------------------------------------------------------------------------------------------------------------


def test_token_rewards_hand_example():
    # Row 0: a prompt position, 2 reply tokens, 1 padding position; row 1: a prompt position, 3 reply tokens.
    # Garbage (9.0) outside the mask must not leak into the rewards.
    logprobs = torch.tensor([[9.0, -1.0, -2.0, 9.0], [9.0, -0.5, -1.5, -3.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0], [0.0, -0.5, -2.5, -1.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    scores = torch.tensor([2.0, -1.0])
    # k1 = logp - ref_logp: row 0 (0.5, -1.0), row 1 (0.0, 1.0, -2.0); reward -0.1 * k1, + score on the last token.
    rewards = token_rewards(logprobs, ref, scores, mask, beta=0.1)
    assert rewards[0].tolist() == pytest.approx([0.0, -0.05, 0.1 + 2.0, 0.0])
    assert rewards[1].tolist() == pytest.approx([0.0, 0.0, -0.1, 0.2 - 1.0])
    # Summed over a reply: score - beta * KL.
    assert rewards.sum(1).tolist() == pytest.approx([2.0 - 0.1 * (0.5 - 1.0), -1.0 - 0.1 * (0.0 + 1.0 - 2.0)])
    # k3 = (r - 1) - log r with r = exp(ref - logp): never negative.
    k3 = token_rewards(logprobs, ref, torch.zeros(2), mask, beta=1.0, estimator="k3")
    assert k3[0, 1].item() == pytest.approx(-(math.exp(-0.5) - 1 + 0.5))
    assert (k3 <= 0).all()


def test_adaptive_kl_controller_hand_values_and_clip():
    c = AdaptiveKLController(beta=0.1, target=2.0, horizon=100)
    c.update(kl=2.2, n_steps=10)  # error 0.1: beta * (1 + 0.1 * 10 / 100)
    assert c.beta == pytest.approx(0.1 * 1.01)
    c.update(kl=3.0, n_steps=10)  # error 0.5, clipped to 0.2
    assert c.beta == pytest.approx(0.1 * 1.01 * 1.02)
    c.update(kl=0.0, n_steps=50)  # error -1, clipped to -0.2: beta * (1 - 0.2 * 0.5)
    assert c.beta == pytest.approx(0.1 * 1.01 * 1.02 * 0.9)
    fixed = FixedKLController(beta=0.1)
    fixed.update(kl=100.0, n_steps=1000)
    assert fixed.beta == 0.1
    assert isinstance(kl_controller(PPOConfig(adaptive_kl=False)), FixedKLController)
    adaptive = kl_controller(PPOConfig(kl_coef=0.2, kl_target=3.0, kl_horizon=500))
    assert (adaptive.beta, adaptive.target, adaptive.horizon) == (0.2, 3.0, 500)


def test_a_reply_without_eos_gets_the_penalty():
    rm_scores, scores = score_replies(lambda prompts, replies: [0.3, 0.7], ["p", "q"], ["a", "b"],
                                      torch.tensor([True, False]), no_eos_penalty=-1.0)
    assert rm_scores.tolist() == pytest.approx([0.3, 0.7])
    assert scores.tolist() == pytest.approx([0.3, -1.0])


# --------------------------------------------------------------------------------------------------------------------
# One base model: reference = adapters disabled; value head from the reward head
# --------------------------------------------------------------------------------------------------------------------


def test_reference_is_the_plain_base_model_even_after_the_adapters_moved(stages):
    model, tokenizer = small_policy(stages)
    perturb_adapters(model)
    batch, _ = some_batch(tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(stages[0] / "model").eval()
    model.eval()
    ref = reference_logprobs(model, batch, temperature=0.7).token_logps
    with torch.no_grad():
        expected = sequence_logprobs(plain, batch, temperature=0.7).token_logps
        policy = policy_forward(model, batch, temperature=0.7)[1]  # after the reference: adapters are back on
    assert torch.allclose(ref, expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-3)  # the policy itself has moved


def test_value_head_starts_as_the_normalised_reward_head(stages):
    model, _ = small_policy(stages)
    reward_model, reward_tokenizer = load_reward_model(stages[0] / "model", stages[1] / "adapter",
                                                       get_profile("tiny", **SMALL))
    init_value_head(model.value_head, "reward", reward_model, STATS)
    head = reward_head_weight(reward_model)
    assert head.shape == (1, 64) and head.abs().sum() > 0
    assert torch.equal(model.value_head.weight, head / STATS["std"])
    assert model.value_head.bias.item() == pytest.approx(-STATS["mean"] / STATS["std"])
    # Reading the reward model's own hidden state, the value head gives the normalised reward exactly.
    prompts, replies = TinyWorld(seed=0).sample_prompts(2), [" Boil fresh water.", " No."]
    normalised = normalised_scorer(reward_model, reward_tokenizer, STATS, 128)(prompts, replies)
    with torch.no_grad():
        last_hidden = torch.stack([
            reward_model(input_ids=torch.tensor([tokenize_pair(reward_tokenizer, p, r, 128)["input_ids"]]),
                         output_hidden_states=True).hidden_states[-1][0, -1]
            for p, r in zip(prompts, replies)])
        assert torch.allclose(model.value_head(last_hidden).squeeze(-1), normalised, atol=1e-5)
    init_value_head(model.value_head, "zero")
    assert model.value_head.weight.abs().sum() == 0 and model.value_head.bias.item() == 0
    with pytest.raises(ValueError, match="ppo_value_init"):
        init_value_head(model.value_head, "random")


# --------------------------------------------------------------------------------------------------------------------
# A rollout and one update
# --------------------------------------------------------------------------------------------------------------------


def test_rollout_records_the_sampled_tokens_and_penalises_unfinished_replies(stages):
    profile = get_profile("tiny", **RUN, ppo_no_eos_penalty=-3.0)
    model, tokenizer = small_policy(stages)
    reward_model, reward_tokenizer = load_reward_model(stages[0] / "model", stages[1] / "adapter", profile)
    reward_fn = normalised_scorer(reward_model, reward_tokenizer, STATS, profile.max_length)
    prompts = TinyWorld(seed=0).sample_prompts(6)
    rollout = collect_rollout(model, tokenizer, reward_fn, prompts, profile.ppo_config(), seed=0)
    assert rollout.mask.sum(1).tolist() == [len(ids) for ids in rollout.reply_ids]
    # An untrained model rarely says <|eos|> within 8 tokens: unfinished replies get the penalty, not their score.
    assert (~rollout.ended).any()
    assert torch.equal(rollout.scores, torch.where(rollout.ended, rollout.rm_scores, -3.0))
    assert rollout.ended.tolist() == [ids[-1] == tokenizer.eos_token_id for ids in rollout.reply_ids]
    # Fresh adapters: the policy is the reference; and the first update step starts at ratio 1.
    assert torch.allclose(rollout.logprobs, rollout.ref_logprobs, atol=1e-5)
    with torch.no_grad():
        again = policy_forward(model, rollout.batch, profile.sample_temperature)[1]
    assert torch.allclose(again, rollout.logprobs, atol=1e-5)


def test_one_update_changes_only_the_adapters_and_the_value_head(stages):
    profile = get_profile("tiny", **RUN)
    model, tokenizer = small_policy(stages)
    reward_model, reward_tokenizer = load_reward_model(stages[0] / "model", stages[1] / "adapter", profile)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    assert not any(p.requires_grad for p in reward_model.parameters())
    rollout = collect_rollout(model, tokenizer, normalised_scorer(reward_model, reward_tokenizer, STATS, 128),
                              TinyWorld(seed=0).sample_prompts(8), profile.ppo_config(), seed=0)
    rewards = token_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.mask, beta=0.05)
    advantages, returns = ppo.advantages_and_returns(rewards, rollout.values, rollout.mask, gamma=1.0, lam=0.95)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reward_before = {n: p.detach().clone() for n, p in reward_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    metrics = ppo_update(model, optimizer, rollout, advantages, returns, profile.ppo_config(), iteration=0,
                         generator=torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in metrics.values())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert {"value_head.weight", "value_head.bias"} <= changed and any("lora_B" in n for n in changed)
    assert all(torch.equal(p, reward_before[n]) for n, p in reward_model.named_parameters())
    assert all(p.grad is None for p in reward_model.parameters())


def test_a_non_finite_loss_stops_naming_the_iteration(stages):
    profile = get_profile("tiny", **RUN)
    model, tokenizer = small_policy(stages)
    rollout = collect_rollout(model, tokenizer, lambda p, r: torch.zeros(len(p)), TinyWorld(seed=0).sample_prompts(4),
                              profile.ppo_config(), seed=0)
    returns = torch.full_like(rollout.values, float("nan"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(FloatingPointError, match="iteration 7"):
        ppo_update(model, optimizer, rollout, torch.zeros_like(returns), returns, profile.ppo_config(), iteration=6,
                   generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------------------------------------


def test_two_iterations_end_to_end(stages, tmp_path):
    history = run(get_profile("tiny", **RUN), stages, tmp_path / "out", gold_fn=gold_rewards)
    assert [row["iteration"] for row in history] == [1, 2]
    for row in history:
        assert HISTORY_KEYS <= set(row)
        assert all(math.isfinite(v) for v in row.values())
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from the reference itself
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    assert set(load_file(tmp_path / "out" / "value_head.safetensors")) == {"weight", "bias"}
    saved = json.loads((tmp_path / "out" / "history.json").read_text())
    assert saved["history"] == history and 0 < saved["trainable_parameters"] < saved["parameters"]


def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_starts_over(stages, tmp_path):
    profile = get_profile("tiny", **RUN)
    uninterrupted = run(profile, stages, tmp_path / "a")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / CHECKPOINT_FILE).write_bytes(b"cut short by a sync")
    with pytest.warns(UserWarning, match="cannot be read"):
        again = run(profile, stages, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt")
    assert again == uninterrupted
    assert [p.name.split("-")[0] for p in (tmp_path / "ckpt").iterdir()] == [f"{CHECKPOINT_FILE}.unreadable"]


def test_a_killed_run_resumes_to_the_same_numbers(stages, tmp_path, monkeypatch):
    profile = get_profile("tiny", **RUN, ppo_snapshot_every=1, ppo_checkpoint_every=1)
    uninterrupted = run(profile, stages, tmp_path / "a")

    real_save = ppo.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the checkpoint of iteration 1

    monkeypatch.setattr(ppo, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(profile, stages, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt")
    monkeypatch.setattr(ppo, "save_checkpoint", real_save)
    assert (tmp_path / "ckpt" / CHECKPOINT_FILE).exists() and not (tmp_path / "b").exists()
    resumed = run(profile, stages, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt")
    assert resumed == uninterrupted
    # a snapshot after every iteration, the one from before the kill kept across the resume; the last is the final
    # adapter, and each matches the uninterrupted run's
    weights = lambda folder: load_file(folder / "adapter" / "adapter_model.safetensors")  # noqa: E731
    assert sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir()) == ["0001", "0002"]
    for name in ("0001", "0002"):
        a, b = weights(tmp_path / "a" / "snapshots" / name), weights(tmp_path / "b" / "snapshots" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    final, last = weights(tmp_path / "b"), weights(tmp_path / "b" / "snapshots" / "0002")
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_train_ppo_on_objects_against_a_rule(stages):
    """No course, no reward model: a policy, a tokenizer, prompts, and a reward function that is a rule."""
    policy, tokenizer = load_for_training(stages[0] / "model", get_profile("tiny", **SMALL))
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    calls = []

    def shorter_is_better(prompts, replies):  # any (prompts, replies) -> scores callable
        scores = [-len(reply.split()) / 4 for reply in replies]
        calls.append((list(prompts), scores))
        return scores

    prompts = TinyWorld(seed=0).sample_prompts(6)
    config = PPOConfig(iterations=3, rollout_prompts=4, minibatch_size=4, epochs=1, max_new_tokens=8, max_length=128,
                       lr=1e-3, no_eos_penalty=-2.0)
    history = train_ppo(policy, tokenizer, shorter_is_better, prompts, config, progress=False)
    assert [row["iteration"] for row in history] == [1, 2, 3]
    assert all(math.isfinite(v) for row in history for v in row.values() if v is not None)
    # each rollout took the next prompts in order (cycling), and the history holds the rule's mean score
    assert [c[0] for c in calls] == [prompts[0:4], prompts[4:6] + prompts[0:2], prompts[2:6]]
    assert [row["proxy_reward"] for row in history] == pytest.approx([sum(s) / len(s) for _, s in calls])
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4) and history[0]["gold_reward"] is None
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if "lora_B" in n)
