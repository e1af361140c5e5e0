"""RRHF, PRO and DPO training plumbing: batching of rankings, one forward pass, the cached reference."""

import functools

import datasets
import pytest
import torch
from conftest import SMALL  # tests/conftest.py

from rrhf_lite.core.logprobs import pad_batch, sequence_logprobs, tokenize_pair
from rrhf_lite.core.losses import pro_loss, rrhf_loss
from rrhf_lite.core.models import load_for_training
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld
from rrhf_lite.methods.dpo import add_reference_logprobs, collate_preferences, dpo_step, tokenize_preferences
from rrhf_lite.methods.ranking import (
    collate_rankings,
    fold,
    ranking_step,
    shorten_rankings,
    tokenize_rankings,
    train_ranking,
)


def rankings(k_per_row=(3, 2)):
    ds = TinyWorld(seed=0).ranking_dataset(len(k_per_row), k=max(k_per_row))
    return ds.map(lambda row, i: {"responses": row["responses"][:k_per_row[i]], "scores": row["scores"][:k_per_row[i]]},
                  with_indices=True)


def test_fold_puts_values_back_in_their_slots():
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert fold(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), valid).tolist() == [[1, 2, 3], [4, 5, 0]]


def test_rankings_of_different_sizes_in_one_forward_pass_match_one_at_a_time(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    model.eval()
    rows = tokenize_rankings(tokenizer, rankings(), 96)
    batch = collate_rankings(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 5 and batch["valid"].tolist() == [[True] * 3, [True, True, False]]
    with torch.no_grad():
        loss, metrics = ranking_step(model, batch, loss_fn=rrhf_loss)
        # the same loss from log-probs computed one candidate at a time
        sums, lengths = torch.zeros(2, 3), torch.ones(2, 3)
        for b, row in enumerate(rows):
            for i, cand in enumerate(row["candidates"]):
                lp = sequence_logprobs(model, pad_batch([cand], tokenizer.pad_token_id))
                sums[b, i], lengths[b, i] = lp.sum, lp.count
        expected = rrhf_loss(sums, lengths, batch["rewards"], valid=batch["valid"]).loss
    assert loss.item() == pytest.approx(expected.item(), abs=1e-4)
    assert {"rank_loss", "sft_loss", "logp_best", "logp_all"} <= set(metrics)


def test_ranking_step_trains_only_the_adapters(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    batch = collate_rankings(tokenize_rankings(tokenizer, rankings(), 96), tokenizer.pad_token_id)
    loss, _ = ranking_step(model, batch, loss_fn=functools.partial(pro_loss, sft_weight=0.05))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_a_profile_gives_each_method_its_own_config():
    profile = get_profile("tiny", rrhf_sft_weight=0.0, pro_use_temperature=False, dpo_beta=0.3, ranking_steps=7)
    assert profile.rrhf_config().loss().keywords == {"length_penalty": 1.0, "sft_weight": 0.0}
    assert profile.pro_config().loss().keywords["use_temperature"] is False
    assert profile.rrhf_config().steps == profile.pro_config().steps == 7
    assert (profile.rrhf_config().lr, profile.pro_config().lr) == (profile.rrhf_lr, profile.pro_lr)
    assert profile.dpo_config().beta == 0.3 and profile.ppo_config().kl_coef == profile.ppo_kl_coef
    # every field of PPO's config comes from the profile (its ppo_ field, or the sampling and loop fields it shares)
    ppo = profile.ppo_config()
    assert (ppo.temperature, ppo.max_new_tokens, ppo.iterations) == (profile.sample_temperature,
                                                                      profile.max_new_tokens, profile.ppo_iterations)
    with pytest.raises(TypeError, match="RRHFConfig or a PROConfig"):
        train_ranking(None, None, rankings(), profile.dpo_config())


def test_shorten_rankings_keeps_best_worst_and_spread():
    ds = datasets.Dataset.from_dict({"prompt": ["p"], "responses": [list("abcde")],
                                     "scores": [[3.0, 5.0, 1.0, 4.0, 2.0]]})
    assert shorten_rankings(ds, 2)[0]["responses"] == ["b", "c"]  # best (5) and worst (1)
    assert shorten_rankings(ds, 3)[0]["scores"] == [5.0, 3.0, 1.0]
    assert shorten_rankings(ds, 9)[0]["scores"] == [5.0, 4.0, 3.0, 2.0, 1.0]  # all of them, best first
    with pytest.raises(ValueError, match="at least 2"):
        shorten_rankings(ds, 1)


def test_dpo_reference_cache_equals_the_model_with_adapters_disabled(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    pairs = TinyWorld(seed=0).preference_dataset(6)
    rows = add_reference_logprobs(model, tokenize_preferences(tokenizer, pairs, 96), tokenizer.pad_token_id)
    with torch.no_grad():  # a trained adapter is not zero: the policy now differs from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    batch = collate_preferences(rows, tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        ref = sequence_logprobs(model, batch).sum
    assert torch.allclose(ref, torch.cat([batch["ref_chosen"], batch["ref_rejected"]]), atol=1e-4)
    with torch.no_grad():
        policy = sequence_logprobs(model, batch).sum
    assert not torch.allclose(policy, ref, atol=1e-3)


def test_dpo_step_at_the_reference_is_ln2_and_trains_only_adapters(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    pairs = TinyWorld(seed=0).preference_dataset(4)
    rows = add_reference_logprobs(model, tokenize_preferences(tokenizer, pairs, 96), tokenizer.pad_token_id)
    batch = collate_preferences(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 8  # chosen and rejected in one forward pass
    model.train()
    loss, metrics = dpo_step(model, batch, beta=0.1)
    assert loss.item() == pytest.approx(0.6931, abs=1e-3)
    assert metrics["reward_margin"].item() == pytest.approx(0, abs=1e-4)
    loss.backward()
    assert all("lora_" in n for n, p in model.named_parameters() if p.grad is not None)
    ipo_loss, _ = dpo_step(model, batch, beta=0.1, loss_type="ipo")
    assert ipo_loss.item() == pytest.approx((1 / 0.2) ** 2, rel=1e-3)  # h = 0: (0 - 1/(2 beta))^2 = 25


def test_tokenized_pairs_share_their_prompt(saved_model):
    _, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    pair = TinyWorld(seed=0).preference_dataset(1)[0]
    row = tokenize_preferences(tokenizer, [pair], 512)[0]  # long enough that nothing is truncated
    prompt_len = len(tokenize_pair(tokenizer, pair["prompt"], "", 512, add_eos=False)["input_ids"])
    assert row["chosen"]["input_ids"][:prompt_len] == row["rejected"]["input_ids"][:prompt_len]
