"""The memory estimate's arithmetic, checked against models the libraries build (benchmarks/bench_memory.py checks
its totals against measured training steps)."""

import json
from pathlib import Path

import pytest
from peft import get_peft_model
from transformers import Qwen2Config

from rrhf_lite.core.models import count_parameters, lora_config
from rrhf_lite.course.memory import (
    GIB,
    STAGES,
    Shapes,
    adapter_parameters,
    estimate_memory,
    sequences_per_step,
    weight_bytes,
)
from rrhf_lite.course.profiles import get_profile

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=512, tie_word_embeddings=True)


def test_weights_and_adapters_count_what_transformers_and_peft_build():
    from transformers import Qwen2ForCausalLM

    config = Qwen2Config(**SMALL)
    model = Qwen2ForCausalLM(config)
    profile = get_profile("tiny")
    shapes = Shapes.from_config(config)
    norms_and_biases = sum(p.numel() for n, p in model.named_parameters() if "norm" in n or n.endswith(".bias"))
    assert weight_bytes(shapes, profile) == 4 * (count_parameters(model) - norms_and_biases)
    peft_model = get_peft_model(model, lora_config(profile, "CAUSAL_LM"))
    assert adapter_parameters(shapes, profile) == count_parameters(peft_model, trainable_only=True)


def test_four_bit_checkpointing_and_batch_move_the_estimate_the_right_way():
    config = json.loads((CONFIGS / "qwen2.5-0.5b.json").read_text())
    config = Qwen2Config(**{k: v for k, v in config.items() if not k.startswith("_") and k != "model_type"})
    t4 = get_profile("colab-t4")
    for stage in STAGES:
        estimate = estimate_memory(t4, config, stage)
        assert estimate.tokens == sequences_per_step(t4, stage) * t4.max_length and estimate.total > 0
        full = estimate_memory(get_profile("colab-t4", load_in_4bit=False), config, stage)
        assert full.parts["weights"] > estimate.parts["weights"]  # 16-bit linear layers, though 16-bit embeddings
        plain = estimate_memory(get_profile("colab-t4", gradient_checkpointing=False), config, stage)
        assert plain.parts["activations"] > 4 * estimate.parts["activations"]
    small = estimate_memory(get_profile("colab-t4", dpo_batch_size=1), config, "dpo")
    assert small.parts["activations"] < estimate_memory(t4, config, "dpo").parts["activations"] / 8
    ppo = estimate_memory(t4, config, "ppo")
    assert ppo.parts["reward model"] >= ppo.parts["weights"]  # a second 4-bit base under the reward adapter
    assert "GiB" in ppo.describe(15.0) and ppo.total / GIB > 0.3


def test_unknown_stage():
    with pytest.raises(ValueError, match="stage must be one of"):
        sequences_per_step(get_profile("tiny"), "rlhf")
