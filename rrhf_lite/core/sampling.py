"""Sampling replies from a causal LM with ``generate``: batched, left-padded, stopping at end-of-sequence.

Prompts are left-padded so that every prompt ends at the same position and generation continues from there. The
key/value cache is transformers' static one: allocated once per batch for the prompt plus ``max_new_tokens``, where
the default (dynamic) cache grows by copying itself at every step; both give the same tokens, and on the tiny model
the copies were a sixth of the sampling time. Each reply is cut right after its first ``<|eos|>``: whatever
``generate`` put after it (padding, while the other rows of the batch were still running) is dropped, so it can never
be scored or trained on. A reply that hit ``max_new_tokens`` without an ``<|eos|>`` is marked as not ``ended``: PPO
penalises those (Huang et al.).

* :func:`generate_tokens`: the token ids of each reply (the ``<|eos|>`` kept) and whether it ended;
* :func:`generate`: the same, decoded to text (what the gold judge and the datasets use);
* :func:`sample_candidates`: ``n`` replies per prompt, the raw material of best-of-n, RRHF and PRO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Generation:
    """Replies as token ids (up to and including the first ``<|eos|>``), and whether each one ended there."""

    prompts: list[str]
    reply_ids: list[list[int]]
    ended: list[bool]


@torch.no_grad()
def generate_tokens(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 1.0,
                    top_p: float = 1.0, batch_size: int = 64, seed: int = 0, progress: bool = False) -> Generation:
    """One sampled reply per prompt (greedy when ``temperature == 0``), as token ids cut after ``<|eos|>``."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("the tokenizer needs a pad token distinct from eos, or a finished reply cannot be told from "
                         "padding (rrhf_lite.core.models.load_tokenizer(..., add_pad=True) adds one)")
    torch.manual_seed(seed)
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    # top_k=0 (and no other processor) so that T and top-p mean what they say: transformers otherwise keeps only the
    # 50 most likely tokens, and a hub model's generation_config.json can add its own top-k or repetition penalty.
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0) \
        if temperature > 0 else dict(do_sample=False)
    reply_ids: list[list[int]] = []
    ended: list[bool] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, cache_implementation="static", **sampling)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                stop = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None
                reply_ids.append(row[:stop])  # stop is None: no eos, keep every token
                ended.append(stop is not None)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return Generation(list(prompts), reply_ids, ended)


def decode(tokenizer, generation: Generation) -> list[str]:
    """The replies of a :class:`Generation` as text, without special tokens: what judges and datasets read."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generation.reply_ids]


def generate(model, tokenizer, prompts: list[str], **kwargs) -> list[str]:
    """One sampled reply per prompt, decoded without special tokens. Keyword arguments as :func:`generate_tokens`."""
    return decode(tokenizer, generate_tokens(model, tokenizer, prompts, **kwargs))


def sample_candidates(model, tokenizer, prompts: list[str], n: int, **kwargs) -> list[list[str]]:
    """``n`` independent replies to every prompt: ``result[i]`` holds the ``n`` replies to ``prompts[i]``.

    Each prompt is repeated ``n`` times in the batch, so the replies are independent samples at the given
    temperature (what best-of-n assumes), not a beam search.
    """
    flat = generate(model, tokenizer, [p for p in prompts for _ in range(n)], **kwargs)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
