"""Pretraining the tiny base model: next-token prediction on the world's dialogues of mixed quality.

A real base model has read the internet, good and bad. Ours reads :meth:`TinyWorld.dialogues`: requests
followed by replies of every quality the world can produce. It learns the *language* of the world and the
*mix* of behaviours, so its samples vary in quality, which is what SFT, reward models and RL then work on.

The loss is the usual causal-LM cross-entropy over every token (prompt and reply alike), ``-mean log p(x_t | x_<t)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rrhf_lite.core.logprobs import length_grouped
from rrhf_lite.core.loop import save_run, train
from rrhf_lite.core.models import build_tokenizer
from rrhf_lite.course.world import TinyWorld


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


def tokenize_texts(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """``<|bos|> text <|eos|>`` token ids per text, truncated to ``max_length``."""
    enc = tokenizer([t + tokenizer.eos_token for t in texts], truncation=True, max_length=max_length)
    return [{"input_ids": ids} for ids in enc["input_ids"]]


def lm_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled, right-padded batches; labels are the inputs with padding set to -100 (ignored by the loss)."""
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return torch.utils.data.DataLoader(tokenize_texts(tokenizer, texts, max_length), batch_size=batch_size,
                                       shuffle=True, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed))


def lm_step(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Causal-LM loss: the cross-entropy of every token given the ones before it, averaged over the batch's predicted
    tokens (padding is not predicted), as transformers computes it from ``labels``. The rows run in two groups of
    similar length (:func:`~rrhf_lite.core.logprobs.length_grouped`), so the sum over each row's tokens is taken
    here."""

    def summed_nll(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # [rows]
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        nll = F.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")
        return (nll * attention_mask[:, 1:]).sum(-1)

    if not torch.equal(batch["labels"] != -100, batch["attention_mask"].bool()):
        raise ValueError("lm_step predicts every token the attention mask keeps: labels must be -100 on padding only")
    return length_grouped(summed_nll, batch).sum() / predicted_tokens(batch), {}


def predicted_tokens(batch: dict) -> torch.Tensor:
    """What the causal-LM loss is a mean over: the labels that are predicted (not -100), after the shift by one."""
    return (batch["labels"][:, 1:] != -100).sum()


def train_base_model(profile, out_dir: Path, progress: bool = True) -> list[dict]:
    """World text -> tokenizer -> fresh tiny Llama -> pretraining -> ``save_pretrained(out_dir)``.

    Writes the model, the tokenizer and ``history.json`` (the loss curve) into ``out_dir``; returns the history.
    """
    world = TinyWorld.from_profile(profile)
    texts = world.dialogues(profile.pretrain_dialogues)
    tokenizer = build_tokenizer(texts, profile.tokenizer_vocab_size)
    model = build_tiny_model(tokenizer, profile)
    batches = lm_batches(tokenizer, texts, profile.pretrain_batch_size, profile.max_length, profile.seed)
    history = train(model, batches, lm_step, steps=profile.pretrain_steps, lr=profile.pretrain_lr,
                    warmup_steps=profile.pretrain_warmup_steps, weight_decay=profile.weight_decay,
                    max_grad_norm=profile.max_grad_norm, log_every=profile.log_every, seed=profile.seed,
                    desc="pretrain base", progress=progress, loss_units=predicted_tokens)
    save_run(out_dir, model, tokenizer, history, folder="", dialogues=len(texts))
    return history
