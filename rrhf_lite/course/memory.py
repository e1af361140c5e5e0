"""How much memory a training stage needs, estimated from the model's shapes before anything is loaded.

A Colab user should learn before an out-of-memory error, not from one, whether a setting fits. The estimate adds up
what a step of each stage keeps at its peak, for the worst case of every sequence filling ``max_length``:

    weights      the frozen base model: on 4-bit profiles the blocks' linear layers in NF4 (half a byte per
                 parameter, plus 0.127 bits of quantisation constants with double quantisation: Dettmers et al. 2023)
                 and the embeddings (and an untied LM head) in float32, where peft's ``prepare_model_for_kbit_training``
                 puts every parameter that is not 4-bit; otherwise everything in the compute dtype
    adapters     LoRA's matrices in float32, their gradients and AdamW's two moments: 16 bytes per parameter
    activations  what the forward pass keeps for the backward pass: per token and layer the norms' inputs, normalised
                 values and outputs, q, k and v after the rotary embedding, the attention output (twice: as computed
                 and reshaped for o_proj), the MLP's four intermediates, LoRA's low-rank outputs, and, when the model
                 computes in 16 bits, the copies that bitsandbytes and peft's LoRA layers make of their inputs in
                 another dtype. With gradient checkpointing only each layer's input is kept. Attention is assumed
                 not to keep a [tokens x tokens] matrix (PyTorch's fused kernels; on a CPU, sequences without
                 padding)
    transient    the largest thing alive on top of that at one moment, named in the estimate: the LM head at the
                 end of the forward pass (:data:`rrhf_lite.core.logprobs.LOGIT_CHUNK_ELEMENTS` float32 logits, two alive
                 at once, and the gradient it forms per response position, replies taken as half of every
                 sequence); with checkpointing, the layer being recomputed in the backward pass and the gradients
                 flowing through it; in PPO, GRPO and RLOO, a rollout (the key/value cache of prompts and replies, a
                 step's logits)
    reward model PPO, GRPO, RLOO: a second copy of the base (4-bit) under the reward model's frozen adapter

What it leaves out: the CUDA context (≈ 0.3-0.5 GB on a GPU, reported by ``nvidia-smi`` but not by torch), allocator
fragmentation, and temporaries of single kernels. ``benchmarks/bench_memory.py`` compares the estimate with what a
step measures on a CPU (resident memory, float32) for small configurations; see benchmarks/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig

from rrhf_lite.core.logprobs import LOGIT_CHUNK_ELEMENTS
from rrhf_lite.core.models import hub_revision
from rrhf_lite.course.sources import is_tiny_world

GIB = 1024**3
NF4_BYTES = 0.5 + 0.127 / 8  # 4 bits per weight + double-quantised constants (QLoRA: 0.127 bits per parameter)
ADAPTER_BYTES = 16  # float32 weight + gradient + AdamW's exp_avg and exp_avg_sq
STAGES = ("sft", "reward", "dpo", "rrhf", "pro", "ppo", "grpo", "rloo")
ROLLOUT_STAGES = ("ppo", "grpo", "rloo")  # they sample while they train, and score with a second model


@dataclass(frozen=True)
class Shapes:
    """What memory depends on in a Llama/Qwen-style decoder (read from its transformers config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config) -> Shapes:
        heads = config.num_attention_heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)))

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """``{name: (in_features, out_features)}`` of one block's linear layers."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def dtype_bytes(profile) -> int:
    return 4 if profile.compute_dtype == "float32" else 2


def sequences_per_step(profile, stage: str) -> int:
    """Sequences in one forward pass of ``stage``'s training step (PPO: one update minibatch; GRPO, RLOO: the groups
    of ``grpo_prompts_per_step`` prompts)."""
    if stage == "sft":
        return profile.sft_batch_size
    if stage == "reward":
        return 2 * profile.rm_batch_size  # chosen and rejected
    if stage == "dpo":
        return 2 * profile.dpo_batch_size
    if stage in ("rrhf", "pro"):  # SFT and base samples, plus the expert replies (tiny: 1; real data: chosen, rejected)
        experts = 1 if is_tiny_world(profile) else 2
        return profile.ranking_batch_size * (profile.samples_per_prompt + profile.base_samples_per_prompt + experts)
    if stage == "ppo":
        return profile.ppo_minibatch_size
    if stage in ("grpo", "rloo"):  # whole groups (RLOO: one forward pass of them; a step sums several)
        return profile.grpo_prompts_per_step * profile.grpo_group_size
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def residual_bytes(profile) -> int:
    """Bytes per element of the residual stream (hidden states between layers): float32 on 4-bit profiles, where
    peft's ``prepare_model_for_kbit_training`` casts the embeddings and norms to float32; else the compute dtype."""
    return 4 if profile.load_in_4bit else dtype_bytes(profile)


def weight_bytes(shapes: Shapes, profile) -> float:
    linear = shapes.layers * sum(i * o for i, o in shapes.linear_layers().values())
    embeddings = shapes.vocab * shapes.hidden * (1 if shapes.tied else 2)
    return linear * (NF4_BYTES if profile.load_in_4bit else dtype_bytes(profile)) + embeddings * residual_bytes(profile)


def adapter_parameters(shapes: Shapes, profile) -> int:
    layers = shapes.linear_layers()
    return shapes.layers * sum(profile.lora_r * (layers[name][0] + layers[name][1])
                               for name in profile.lora_target_modules if name in layers)


def activation_bytes_per_token_layer(shapes: Shapes, profile) -> float:
    """What one decoder layer keeps for the backward pass, per token, without gradient checkpointing."""
    b, r = dtype_bytes(profile), profile.lora_r
    h, i = shapes.hidden, shapes.intermediate
    q, kv = shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    layers = shapes.linear_layers()
    adapted = [n for n in profile.lora_target_modules if n in layers]
    attention = b * (3 * q + 2 * kv)  # q, k, v after the rotary embedding; the attention output, and reshaped
    mlp = b * 4 * i  # gate, its activation, up, their product
    lora = 4 * r * len(adapted)  # each adapter's rank-r output, float32
    if residual_bytes(profile) == 4:  # two RMSNorms on a float32 residual stream: input, normalised, scaled output
        norms = 2 * 3 * 4 * h
    else:  # 16-bit residual stream: RMSNorm computes in float32 (input copy, normalised values) and casts back
        norms = 2 * (3 * b * h + 2 * 4 * h)
    if b == 4:  # float32 throughout: every layer reads its input as it is
        casts = 0
    elif profile.load_in_4bit:  # 16-bit attention and MLP between float32 norms
        casts = 5 * b * h  # bitsandbytes' 16-bit copy of the float32 input of q, k, v, gate and up
        casts += 4 * sum(layers[n][0] for n in adapted if n in ("o_proj", "down_proj"))  # peft: 16-bit -> float32
    else:
        casts = 4 * sum(layers[n][0] for n in adapted)  # peft casts each adapter's input to float32
    return norms + casts + attention + mlp + lora


def kept_activation_bytes(shapes: Shapes, profile, tokens: int) -> float:
    """What the forward pass of a step over ``tokens`` tokens keeps for the backward pass: every layer's activations,
    or with gradient checkpointing only every layer's input."""
    if profile.gradient_checkpointing:
        return shapes.layers * tokens * shapes.hidden * residual_bytes(profile)
    return shapes.layers * activation_bytes_per_token_layer(shapes, profile) * tokens


def recompute_bytes(shapes: Shapes, profile, tokens: int) -> float:
    """With gradient checkpointing, what the backward pass holds for the layer it recomputes: that layer's activations
    and the gradients flowing through them (taken as half as much again; measured: benchmarks/bench_memory.py)."""
    return 1.5 * activation_bytes_per_token_layer(shapes, profile) * tokens


def logprob_bytes(shapes: Shapes, profile, tokens: int) -> float:
    """The chunked LM head over the response positions (taken as half the tokens): two float32 chunks of logits and
    the per-position gradient with respect to the hidden states."""
    responses = tokens // 2
    chunk = min(responses, max(1, LOGIT_CHUNK_ELEMENTS // shapes.vocab)) * shapes.vocab
    return 2 * 4 * chunk + responses * shapes.hidden * residual_bytes(profile)


def generation_bytes(shapes: Shapes, profile, prompts: int) -> float:
    """Sampling ``prompts`` replies at once: the key/value cache over prompt + reply, and one step's logits."""
    cache = 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * dtype_bytes(profile) * prompts * profile.max_length
    return cache + 2 * 4 * prompts * shapes.vocab


@dataclass
class MemoryEstimate:
    """Bytes per part of a stage's peak (:func:`estimate_memory`)."""

    stage: str
    sequences: int
    tokens: int
    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self, limit_gib: float | None = None) -> str:
        """One line per part and the total (against ``limit_gib`` if given), in GiB, or MiB for a small model."""
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", 2**20)
        lines = [f"{self.stage}: {self.sequences} sequences x {self.tokens // self.sequences} tokens per step"]
        lines += [f"  {name:<17}{value / scale:8.2f} {unit}" for name, value in self.parts.items() if value]
        verdict = "" if limit_gib is None else ("  fits" if self.total / GIB < limit_gib else "  DOES NOT FIT") + \
            f" in {limit_gib:g} GiB"
        return "\n".join(lines + [f"  {'total':<17}{self.total / scale:8.2f} {unit}{verdict}"])


def estimate_memory(profile, config, stage: str) -> MemoryEstimate:
    """Estimated peak memory of one training step of ``stage`` (one of :data:`STAGES`) for ``profile`` on a base model
    with transformers ``config`` (``AutoConfig.from_pretrained(base)``), every sequence ``max_length`` tokens long.
    The peak of PPO, GRPO and RLOO is the larger of a rollout and an update step."""
    shapes = Shapes.from_config(config)
    sequences = sequences_per_step(profile, stage)
    tokens = sequences * profile.max_length
    adapters = adapter_parameters(shapes, profile)
    # On top of what the forward pass keeps, the largest thing alive at one moment: at the end of the forward pass
    # the LM head's chunks, or, with checkpointing, a layer recomputed in the backward pass (PPO: or a rollout)
    transients = {"log-prob head": 0.0 if stage == "reward" else logprob_bytes(shapes, profile, tokens)}
    if profile.gradient_checkpointing:
        transients["recomputed layer"] = recompute_bytes(shapes, profile, tokens)
    if stage == "ppo":
        transients["generation"] = generation_bytes(shapes, profile, profile.ppo_rollout_prompts)
    if stage in ("grpo", "rloo"):  # a rollout samples group_size replies per prompt, generation_batch_size at once
        rollout = profile.grpo_prompts_per_iteration * profile.grpo_group_size
        transients["generation"] = generation_bytes(shapes, profile, min(rollout, profile.generation_batch_size))
    largest = max(transients, key=transients.get)
    parts = {"weights": weight_bytes(shapes, profile), "adapters": float(ADAPTER_BYTES * adapters),
             "activations": kept_activation_bytes(shapes, profile, tokens), largest: transients[largest]}
    if stage in ROLLOUT_STAGES:  # the reward model (or on real profiles, trained on gold, the judge: as large)
        parts["reward model"] = weight_bytes(shapes, profile) + 4.0 * adapters
    return MemoryEstimate(stage, sequences, tokens, parts)


def device_gib() -> float | None:
    """Memory of the first CUDA device in GiB, or None without one."""
    return torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else None


def memory_report(profile, base, stage: str) -> str:
    """What a lesson prints before it trains ``stage`` on a real model: the estimate for ``base`` (a hub id or a
    folder; only its ``config.json`` is read), against this machine's GPU when it has one."""
    config = AutoConfig.from_pretrained(base, **hub_revision(base, profile.base_model_revision))
    return estimate_memory(profile, config, stage).describe(device_gib())
