"""Sampling replies from a causal LM with ``generate``: batched, left-padded, stopping at end-of-sequence.

Prompts are left-padded so that every prompt ends at the same position and generation continues from there.
Each reply is cut at its first ``<|eos|>``; whatever ``generate`` put after it (padding) is dropped.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, temperature: float = 1.0,
             top_p: float = 1.0, batch_size: int = 64, seed: int = 0, progress: bool = False) -> list[str]:
    """One sampled reply per prompt (greedy when ``temperature == 0``), decoded without special tokens."""
    torch.manual_seed(seed)
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else \
                dict(do_sample=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[:row.index(tokenizer.eos_token_id)]
                replies.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return replies
