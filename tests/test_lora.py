"""The one loader for every profile: LoRA on the tiny model, QLoRA (4-bit NF4) on the same code path."""

import pytest
import torch
from conftest import SMALL  # tests/conftest.py

from rrhf_lite.core.logprobs import pad_batch, sequence_logprobs, tokenize_pair
from rrhf_lite.core.losses import sft_loss
from rrhf_lite.core.models import load_for_training, load_tokenizer, merge_adapter
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld
from rrhf_lite.methods.reward import collate_comparisons, reward_step, score, tokenize_comparisons


def sft_batch(tokenizer):
    pairs = TinyWorld(seed=0).sft_dataset(4)
    rows = [tokenize_pair(tokenizer, r["prompt"], r["completion"], 96) for r in pairs]
    return pad_batch(rows, tokenizer.pad_token_id)


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_only_lora_adapters_train(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL))
    names = trainable_names(model)
    assert names and all("lora_" in n for n in names)
    loss = sft_loss(*(lambda lp: (lp.token_logps, lp.mask))(sequence_logprobs(model, sft_batch(tokenizer))))
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_reward_head_and_adapters_train(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL), head="reward")
    names = trainable_names(model)
    assert any("score" in n for n in names) and all("lora_" in n or "score" in n for n in names)
    rows = tokenize_comparisons(tokenizer, TinyWorld(seed=0).preference_dataset(4), 96)
    loss, metrics = reward_step(model, collate_comparisons(rows, tokenizer.pad_token_id))
    assert torch.isfinite(loss) and 0.0 <= metrics["accuracy"] <= 1.0


def test_reward_reads_the_last_real_token_whatever_the_padding(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL), head="reward")
    model.eval()
    rows = tokenize_comparisons(tokenizer, TinyWorld(seed=0).preference_dataset(3), 96)
    batch = collate_comparisons(rows, tokenizer.pad_token_id)  # 6 sequences of different lengths, right-padded
    with torch.no_grad():
        together = model(**batch).logits.squeeze(-1)
        alone = [model(input_ids=torch.tensor([r[k]])).logits.item() for k in ("chosen", "rejected") for r in rows]
    assert together.tolist() == pytest.approx([alone[i] for i in (0, 1, 2, 3, 4, 5)], abs=1e-5)


def test_score_batches_by_length_and_returns_rewards_in_the_given_order(saved_model):
    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL), head="reward")
    pairs = TinyWorld(seed=0).preference_dataset(5)
    prompts, replies = list(pairs["prompt"]) * 2, list(pairs["chosen"]) + list(pairs["rejected"])
    rewards = score(model.eval(), tokenizer, prompts, replies, 96, batch_size=3)  # 10 replies, 4 batches by length
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([tokenize_pair(tokenizer, p, r, 96)["input_ids"]])).logits.item()
                 for p, r in zip(prompts, replies)]
    assert rewards.tolist() == pytest.approx(alone, abs=1e-5)


def test_adapter_save_reload_and_merge_give_the_same_model(saved_model, tmp_path):
    profile = get_profile("tiny", **SMALL)
    model, tokenizer = load_for_training(saved_model, profile)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # a trained adapter is not zero
    model.eval()
    batch = sft_batch(tokenizer)
    with torch.no_grad():
        before = sequence_logprobs(model, batch).sum
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    reloaded, _ = load_for_training(saved_model, profile, adapter=tmp_path / "adapter", trainable=False)
    merged, _ = load_for_training(merge_adapter(saved_model, tmp_path / "adapter", tmp_path / "merged"), profile)
    with torch.no_grad():
        assert torch.allclose(sequence_logprobs(reloaded.eval(), batch).sum, before, atol=1e-5)
        assert torch.allclose(sequence_logprobs(merged.eval(), batch).sum, before, atol=1e-4)  # fresh LoRA adds 0
    assert not trainable_names(reloaded)


def test_qlora_4bit_path_trains_on_cpu(saved_model):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    profile = get_profile("tiny", **SMALL, load_in_4bit=True)
    model, tokenizer = load_for_training(saved_model, profile)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(not m.support_avx512bf16_for_cpu for m in four_bit)  # the repacking workaround
    batch = sft_batch(tokenizer)
    model.eval()
    with torch.no_grad():
        sequence_logprobs(model, batch)  # an inference pass first: the step that broke gradients on AVX512-BF16
    model.train()
    lp = sequence_logprobs(model, batch)
    sft_loss(lp.token_logps, lp.mask).backward()
    # lora_B starts at zero (so lora_A's first gradient is zero too); every lora_B must get a gradient, including
    # layer 0's, which only arrives through the frozen 4-bit layers above it.
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert any(".layers.0." in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all("lora_" in n for n in trainable_names(model))


def test_pad_equal_to_eos_is_refused_or_fixed(saved_model, tmp_path):
    tokenizer = load_tokenizer(saved_model)
    tokenizer.pad_token = tokenizer.eos_token  # what many hub tokenizers do
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="equal to its eos"):
        load_tokenizer(tmp_path)
    fixed = load_tokenizer(tmp_path, add_pad=True)
    assert fixed.pad_token_id != fixed.eos_token_id


def test_unknown_head_is_an_error(saved_model):
    with pytest.raises(ValueError, match="head must be"):
        load_for_training(saved_model, get_profile("tiny", **SMALL), head="value")
