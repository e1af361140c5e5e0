"""The real track rehearsed offline: the ``rehearsal`` profile, its stand-ins, the judge, one SFT model for all.

``rehearsal`` runs ``colab-t4``'s code (4-bit NF4 + LoRA, a Qwen2 base whose tokenizer has no pad token, HH-RLHF's raw
format, a judge model with its own tokenizer and chat template) on local stand-ins; every lesson is executed on it
by ``tests/test_lessons.py``.
"""

import dataclasses
import json

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from rrhf_lite.core.models import load_for_training
from rrhf_lite.core.preferences import load_preferences, parse_turns
from rrhf_lite.course import pipeline, scoring, sources
from rrhf_lite.course.profiles import REHEARSAL_CHANGES, get_profile
from rrhf_lite.course.standins import TEST_ROWS, TRAIN_ROWS, resolve
from rrhf_lite.methods.judge import judge_scores, load_judge, render


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return get_profile("rehearsal", runs_dir=str(tmp_path_factory.mktemp("runs")))


def test_rehearsal_differs_from_colab_t4_only_where_this_machine_forces_it():
    rehearsal, colab = get_profile("rehearsal").to_dict(), get_profile("colab-t4").to_dict()
    differ = {f for f in colab if rehearsal[f] != colab[f]}
    assert differ <= REHEARSAL_CHANGES, f"rehearsal also differs in {sorted(differ - REHEARSAL_CHANGES)}"
    assert rehearsal["load_in_4bit"] and rehearsal["gradient_checkpointing"] and rehearsal["max_length"] == 512
    for field in ("dataset", "base_model", "judge_model"):
        assert rehearsal[field].startswith("stand-in:") and not colab[field].startswith("stand-in:")


def test_the_base_stand_in_is_a_qwen2_without_a_pad_token_of_its_own(profile):
    path = resolve(profile.base_model, profile)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen2" and config.architectures == ["Qwen2ForCausalLM"]
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention, as in Qwen2.5
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.bos_token is None
    # Qwen2's tokenizer class, like the hub's Qwen2.5 tokenizer, pads with <|endoftext|>: no pad token of its own
    assert tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id
    assert config.vocab_size > len(tokenizer)  # spare embedding rows, as Qwen's: room for the pad token we add
    text = "\n\nHuman: Qu'est-ce que c'est? 🙂\n\nAssistant:"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: any string round-trips
    model, tokenizer = scoring.load_policy(profile, path)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # colab-t4's QLoRA path


def test_the_data_stand_in_is_raw_hh_rlhf_with_multi_turn_dialogues(profile):
    folder = resolve(profile.dataset, profile)
    for split, n in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and all(set(r) == {"chosen", "rejected"} for r in rows)
        assert all(r["chosen"].startswith("\n\nHuman: ") for r in rows)
        turns = [len(parse_turns(r["chosen"])) for r in rows]
        assert min(turns) == 2 and max(turns) == 4 and 0.2 < sum(t == 4 for t in turns) / n < 0.5
    pairs = load_preferences(str(folder), split="test", max_rows=10)
    assert pairs.column_names == ["prompt", "chosen", "rejected"] and len(pairs) == 10
    assert all(p.endswith("\n\nAssistant:") for p in pairs["prompt"])


def test_the_judge_reads_dialogues_in_its_own_chat_template(profile):
    model, tokenizer = load_judge(resolve(profile.judge_model, profile))
    assert type(model).__name__ == "Qwen3ForSequenceClassification" and model.config.num_labels == 1
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert render(tokenizer, prompt, " Mix flour.") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\nMix flour.<|im_end|>\n")
    prompts = [prompt, "\n\nHuman: Why?\n\nAssistant:", prompt]
    replies = [" Mix flour.", " Because it is a much longer answer than the others, with more words in it.", ""]
    batched = judge_scores(model, tokenizer, prompts, replies, max_length=512, batch_size=3)
    alone = torch.cat([judge_scores(model, tokenizer, [p], [r], max_length=512) for p, r in zip(prompts, replies)])
    assert torch.allclose(batched, alone, atol=1e-5)  # padding changes nothing: the head reads the last real token
    # in batches of two, shortest first (the third, the second): the scores still come back in the given order
    assert torch.allclose(judge_scores(model, tokenizer, prompts, replies, max_length=512, batch_size=2), alone,
                          atol=1e-5)
    tokenizer.pad_token = None  # a judge without a pad token reads one dialogue at a time
    assert torch.allclose(judge_scores(model, tokenizer, prompts, replies, max_length=512), alone, atol=1e-5)


def test_the_sft_baseline_is_the_model_every_method_starts_from(profile, tmp_path):
    """On a 4-bit profile the baseline must be the quantised SFT model: a method that has not moved (fresh adapters,
    B = 0) then has KL exactly 0 to it, samples exactly its replies and wins exactly half of the comparisons."""
    sft = pipeline.sft_stage(profile)
    model, tokenizer = load_for_training(sft / "model", profile, head="lm")
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    baseline = json.loads((pipeline.samples_stage(profile) / "sft_eval.json").read_text())
    unmoved = pipeline.evaluate_adapter(profile, tmp_path / "adapter")
    assert unmoved["replies"] == baseline["replies"]
    assert unmoved["report"]["kl"] == 0.0
    assert unmoved["report"]["win_rate_vs_sft"] == 0.5
    assert unmoved["report"]["gold_reward"] == baseline["report"]["gold_reward"]


def test_the_judge_is_the_gold_standard_of_real_profiles(profile):
    stats = json.loads((pipeline.judge_stage(profile) / "normalisation.json").read_text())
    gold = pipeline.gold_scorer(profile)
    prompts, samples = scoring.normalisation_samples(profile, pipeline.sft_stage(profile) / "model")
    scores = torch.tensor(gold(prompts, samples))
    # normalised on exactly these SFT samples: mean 0, standard deviation 1
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4
    assert stats["std"] > 0
    rankings = pipeline.load_samples(profile, "rankings")
    assert "gold_scores" in rankings.column_names  # candidates carry the judge's scores, as the world's gold
    no_judge = dataclasses.replace(profile, judge_model=None)
    assert pipeline.gold_scorer(no_judge) is None and not sources.has_gold(no_judge)


def test_model_data_and_judge_fields_take_local_paths(profile):
    """A profile pointed at plain local folders (here: the stand-ins' own) reads them as it reads the hub."""
    local = dataclasses.replace(profile, base_model=str(resolve(profile.base_model, profile)),
                                dataset=str(resolve(profile.dataset, profile)),
                                judge_model=str(resolve(profile.judge_model, profile)))
    assert pipeline.base_model_path(local) == local.base_model
    pairs = sources.preference_data(local, "train", 7)
    assert len(pairs) == 7 and pairs[0] == sources.preference_data(profile, "train", 7)[0]
    model, tokenizer = load_judge(local.judge_model)
    assert judge_scores(model, tokenizer, pairs["prompt"], pairs["chosen"], max_length=512).shape == (7,)
