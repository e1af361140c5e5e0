"""Tokenizer and model: the tiny world's own tokenizer and Llama, built offline and saved like a hub model.

The tiny profile needs a model without a download, so this module builds one the way a hub model is built:

1. :func:`build_tokenizer` trains a byte-level BPE tokenizer (the same kind GPT-2, Llama 3 and Qwen use) on
   the world's text with the ``tokenizers`` library, and wraps it as a ``transformers`` fast tokenizer with a
   beginning-of-sequence token, an end-of-sequence token, a *separate* padding token (PPO and reward models
   need to tell "the reply ended" from "this is padding"), and a chat template for the HH dialogue format.
2. :func:`build_tiny_model` makes a ``LlamaForCausalLM`` from a small config. Widths are multiples of 64,
   which bitsandbytes' 4-bit CPU kernels require.
3. Both are saved with ``save_pretrained`` and read back with ``AutoTokenizer`` / ``AutoModelForCausalLM``
   (:func:`load_pretrained`): the code path a hub model such as ``Qwen/Qwen2.5-0.5B`` takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

# Renders a list of {"role", "content"} messages in the HH-RLHF text format used everywhere in this package:
# "<|bos|>\n\nHuman: ...\n\nAssistant: ...<|eos|>". The end-of-sequence token follows only the final assistant
# turn, as in pretraining text; add_generation_prompt=True ends with "\n\nAssistant:" for the model to continue.
HH_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\n\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\n\nAssistant: ' + message['content'] }}"
    "{% if loop.last %}{{ eos_token }}{% endif %}"
    "{% else %}{{ raise_exception('roles must be user or assistant, got ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; any string round-trips through it exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Like Llama's tokenizer: every encoded text starts with <|bos|>. The <|eos|> is added by whoever builds
    # training examples, because a prompt alone must not end with it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=HH_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                                   model_max_length=1_000_000)


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, profile) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by the profile (``n_layer``, ``hidden_size``, ...)."""
    for name in ("hidden_size", "intermediate_size"):
        if getattr(profile, name) % 64:
            raise ValueError(f"profile.{name} = {getattr(profile, name)} must be a multiple of 64 (bitsandbytes)")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=profile.hidden_size,
        intermediate_size=profile.intermediate_size,
        num_hidden_layers=profile.n_layer,
        num_attention_heads=profile.n_head,
        num_key_value_heads=profile.n_head,
        max_position_embeddings=profile.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(profile.seed)
    return LlamaForCausalLM(config)


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a saved (or hub) causal LM and its tokenizer with the Auto classes. Returns ``(model, tokenizer)``."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        raise ValueError(f"the tokenizer at {path} has no pad token; set one distinct from eos "
                         f"(e.g. tokenizer.add_special_tokens({{'pad_token': '<|pad|>'}})) before training")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
