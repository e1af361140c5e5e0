"""Log-probabilities of a *response* given its prompt: the quantity every alignment loss is built from.

For a prompt ``x`` and a response ``y = (y_1 .. y_T)`` a causal LM gives

    log pi(y | x) = sum_t log pi(y_t | x, y_<t)

Only response tokens count: the prompt is given, not generated, and padding is not text. This module

* tokenises (prompt, response) pairs into ``input_ids`` plus a ``response_mask`` that is 1 exactly on the response
  tokens and the closing ``<|eos|>`` (ending the reply is part of the reply);
* pads a batch on either side (:func:`pad_batch`);
* runs one forward pass and returns, per token, the log-prob of the token that is actually there, and per sequence
  the sum and the number of response tokens (:func:`sequence_logprobs`).

Position ids are computed from the attention mask, so a left-padded sequence gets exactly the same log-probs as the
same sequence unpadded: test ``tests/test_logprobs.py`` checks this against a one-example-at-a-time loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rrhf_lite.core.validation import rows_of


def tokenize_pair(tokenizer, prompt: str, response: str, max_length: int, add_eos: bool = True) -> dict:
    """Token ids of ``prompt + response (+ eos)`` and a mask marking the response tokens.

    Prompt and response are tokenised separately, so the boundary is exact. The truncation policy, when the pair is
    longer than ``max_length``: the reply has priority. The *prompt* is cut from the left (keeping its ``<|bos|>``
    and the turns nearest the reply); only if the reply alone does not fit is it cut from the right (losing its
    ``<|eos|>``). ``truncated`` tells whether anything was cut; ``prompt_cut`` and ``response_cut`` count the tokens
    removed from each, ``prompt_kept`` the prompt tokens left after the ``<|bos|>``.
    :func:`rrhf_lite.core.validation.report_truncation` turns these into counts of rows and a warning.
    """
    return tokenize_pairs(tokenizer, [prompt], [response], max_length, add_eos)[0]


def tokenize_pairs(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                   add_eos: bool = True) -> list[dict]:
    """:func:`tokenize_pair` for many pairs: the same rows, with one tokenizer call for all the prompts (each distinct
    prompt once: candidates share theirs) and one for all the responses, instead of two calls per pair."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    distinct = list(dict.fromkeys(prompts))
    prompt_ids = dict(zip(distinct, tokenizer(distinct)["input_ids"] if distinct else []))  # with <bos>, if added
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    tail = [tokenizer.eos_token_id] if add_eos else []
    return [_joined(prompt_ids[p], r + tail, max_length, tokenizer.bos_token_id) for p, r in zip(prompts, response_ids)]


def tokenize_preference_pairs(tokenizer, pairs, max_length: int) -> list[dict]:
    """``prompt/chosen/rejected`` rows -> per row, ``{"chosen": row, "rejected": row}`` as :func:`tokenize_pair`
    makes them: what a reward model and DPO train on. Each distinct prompt is tokenised once for both replies."""
    pairs = rows_of(pairs)
    rows = tokenize_pairs(tokenizer, [r["prompt"] for r in pairs] * 2,
                          [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs], max_length)
    return [{"chosen": c, "rejected": r} for c, r in zip(rows[:len(pairs)], rows[len(pairs):])]


def _joined(prompt_ids: list[int], response_ids: list[int], max_length: int, bos_token_id: int | None) -> dict:
    """One row of :func:`tokenize_pairs`: the two token lists joined, cut to ``max_length`` as
    :func:`tokenize_pair` says."""
    n_prompt, n_response = len(prompt_ids), len(response_ids)
    bos = prompt_ids[:1] if prompt_ids[:1] == [bos_token_id] else []
    truncated = n_prompt + n_response > max_length
    if truncated:
        room = max(0, max_length - len(bos) - len(response_ids))  # prompt tokens that still fit after the reply
        prompt_ids = bos + (prompt_ids[len(prompt_ids) - room:] if room else [])
        response_ids = response_ids[: max(0, max_length - len(prompt_ids))]
    return {"input_ids": prompt_ids + response_ids,
            "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),
            "truncated": truncated, "prompt_cut": n_prompt - len(prompt_ids),
            "prompt_kept": len(prompt_ids) - len(bos), "response_cut": n_response - len(response_ids)}


def pad_batch(rows: list[dict], pad_token_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Stack tokenised rows into ``input_ids``, ``attention_mask`` and ``response_mask`` tensors (the last only when
    the rows have one: a reward model's sequences need none)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: the tokenizer has no pad token (tokenizer.pad_token); add a distinct "
                         "one, see rrhf_lite.core.validation.validate_tokenizer")
    width = max(len(r["input_ids"]) for r in rows)
    masked = all("response_mask" in r for r in rows)
    out = {"input_ids": [], "attention_mask": [], **({"response_mask": []} if masked else {})}
    for r in rows:
        n = width - len(r["input_ids"])
        columns = (("input_ids", r["input_ids"], pad_token_id), ("attention_mask", [1] * len(r["input_ids"]), 0),
                   *((("response_mask", r["response_mask"], 0),) if masked else ()))
        for key, value, fill in columns:
            out[key].append(value + [fill] * n if side == "right" else [fill] * n + value)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... counted over real tokens only, so left padding does not shift positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class SequenceLogprobs:
    """Per-token log-probs of the response (0 elsewhere), and their sum and count per sequence."""

    token_logps: torch.Tensor  # [batch, seq_len - 1]: log pi(token t+1 | tokens <= t), masked to the response
    mask: torch.Tensor  # [batch, seq_len - 1]: 1 where token t+1 is a response token
    sum: torch.Tensor  # [batch]: log pi(y | x)
    count: torch.Tensor  # [batch]: |y|, response tokens including eos

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalised log-prob, ``sum / count`` (RRHF's and PRO's score)."""
        return self.sum / self.count.clamp(min=1)


# How many logits (positions x vocabulary) the LM head computes at once: 2**25 float32 values are 128 MB. With a
# 151,936-token vocabulary that is 220 positions per chunk; with the tiny model's 1,024 tokens a whole batch at once.
LOGIT_CHUNK_ELEMENTS = 2**25


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """``log softmax((h W^T + b) / T)[y]`` for N positions, ``chunk`` positions at a time, and the entropy.

    No ``[N, vocab]`` tensor outlives its chunk. The gradient needs no second pass over the vocabulary: a log-prob
    depends only on its own position's logits ``z = (h W^T + b) / T``, and ``d log p_y / d z = onehot(y) - p``, so
    the forward pass also computes ``d log p_y / d h = (onehot(y) - p) W / T`` (``[N, hidden]``, the size of ``h``)
    while the chunk's ``p`` is at hand, and the backward pass only scales it by each position's incoming gradient.
    That costs one matmul with ``W``, as autograd's backward through full logits would. The entropy is measured, not
    trained (PPO logs it): it carries no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk, with_entropy):
        logps = hidden.new_empty(len(hidden), dtype=torch.float32)
        entropy = hidden.new_zeros(len(hidden) if with_entropy else 0, dtype=torch.float32)
        grad_per_row = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, len(hidden), chunk):  # at most two [chunk, vocab] tensors alive at once
            rows = slice(start, start + chunk)
            logp = F.log_softmax(F.linear(hidden[rows], weight, bias).float().div_(temperature), dim=-1)
            logps[rows] = logp.gather(-1, labels[rows, None])[:, 0]
            if with_entropy:
                entropy[rows] = -(logp.exp() * logp).sum(-1)
            if grad_per_row is not None:
                onehot_minus_p = logp.exp_().neg_().scatter_add_(-1, labels[rows, None], torch.ones_like(logp[:, :1]))
                grad_per_row[rows] = onehot_minus_p.div_(temperature).to(weight.dtype) @ weight
        ctx.save_for_backward(grad_per_row)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        (grad_per_row,) = ctx.saved_tensors
        grad_hidden = grad_per_row * grad_logps[:, None].to(grad_per_row.dtype)
        return grad_hidden, None, None, None, None, None, None


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, temperature: float = 1.0,
                  with_entropy: bool = False, chunk_elements: int = LOGIT_CHUNK_ELEMENTS):
    """Log-probs ``[N]`` of ``labels`` under ``softmax(head(hidden) / temperature)`` for ``N`` hidden states
    ``[N, hidden]``, and the entropy ``[N]`` of each distribution (None unless ``with_entropy``; no gradient).

    Values and gradient (with respect to ``hidden``) are those of ``log_softmax(head(hidden).float() / T)`` at the
    labels, but at most ``chunk_elements`` logits exist at any time (:class:`_ChunkedHeadLogprobs`): with a 150k-token
    vocabulary the logits, not the model, are what fills a GPU first. With gradients on, the head itself must be
    frozen, as it is under LoRA: its gradient would need every position's logits again.
    """
    if type(head) is not torch.nn.Linear:  # noqa: E721  (a LoRA-wrapped or scaled head is not a plain projection)
        raise ValueError(f"the LM head must be a plain torch.nn.Linear to be computed in chunks, got {type(head)}")
    if torch.is_grad_enabled() and any(p.requires_grad for p in head.parameters()):
        raise ValueError("the LM head is trainable; head_logprobs gives gradients for the hidden states only (LoRA "
                         "keeps the head frozen; freeze it with head.requires_grad_(False))")
    chunk = max(1, chunk_elements // head.out_features)
    logps, entropy = _ChunkedHeadLogprobs.apply(hidden, head.weight, head.bias, labels, temperature, chunk,
                                                with_entropy)
    return logps, entropy if with_entropy else None


# length_grouped splits a right-padded batch in two groups of rows when that spares at least this share of its tokens
MIN_PADDING_SAVED = 0.2


def length_grouped(forward, batch: dict[str, torch.Tensor], min_saved: float | None = None) -> torch.Tensor:
    """``forward(input_ids, attention_mask)`` of a right-padded batch, run on its rows in two groups of similar length,
    each cut to its own longest row; the outputs (one row per sequence, ``[B]`` or ``[B, T, ...]``) come back in the
    batch's order, padded back to its width ``T`` with zeros.

    A batch is padded to its longest row, and on the tiny world a third to a half of a training batch's tokens are
    padding: compute spent on nothing. Causal attention never looks right, so the real tokens of a right-padded row
    come out the same however much padding follows them: two groups (split where they spare the most tokens) hold the
    same rows, with the same loss and gradient, on fewer tokens. The numbers differ from the one-pass ones only in the
    last bits of float32 (a matrix product is not bitwise the same for every batch it is part of). Outputs at the
    padding positions a group was cut to are zeros, not whatever the model computed there: nothing may read them.
    One pass, as before, when the split spares less than ``min_saved`` (default :data:`MIN_PADDING_SAVED`) of the
    tokens, or the batch is not right-padded.
    """
    min_saved = MIN_PADDING_SAVED if min_saved is None else min_saved
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    if not bool((mask[:, 1:] <= mask[:, :-1]).all()):  # not right-padded: cutting would drop real tokens
        return forward(input_ids, mask)
    rows, width = mask.shape
    lengths = mask.sum(-1)
    order = torch.argsort(lengths, stable=True)
    ordered = lengths[order].tolist()
    # split before row i (1 <= i < rows): i rows padded to ordered[i - 1], the others to the longest
    cost, split = min(((i * ordered[i - 1] + (rows - i) * ordered[-1], i) for i in range(1, rows)),
                      default=(rows * width, 0))
    saved = rows * width - cost
    if saved <= 0 or saved < min_saved * rows * width:
        return forward(input_ids, mask)
    parts = []
    for group in (order[:split], order[split:]):
        cut = int(lengths[group].max())
        out = forward(input_ids[group, :cut], mask[group, :cut])
        if out.dim() > 1:  # [rows, cut, ...] -> [rows, T, ...]
            out = torch.cat([out, out.new_zeros(len(group), width - cut, *out.shape[2:])], dim=1)
        parts.append(out)
    return torch.cat(parts)[torch.argsort(order)]


def last_hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states ``[B, T, hidden]`` (after its final norm), without the LM head: what the
    logits are computed from. Works through peft's wrapper (LoRA layers included, or disabled with
    ``disable_adapter()``); no key/value cache is built, since nothing is generated. Rows run in two groups of
    similar length where that spares much padding (:func:`length_grouped`): read only the real tokens' states."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal_lm.get_decoder()

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return decoder(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state

    return length_grouped(forward, batch)


def response_token_logprobs(model, hidden: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                            with_entropy: bool = False):
    """Log-probs ``[B, T - 1]`` of the response tokens (0 elsewhere) from the last hidden states ``[B, T, hidden]``,
    the response mask, and with ``with_entropy`` the entropy of the next-token distribution there (else None).

    Only the positions that predict a response token go through the LM head (:func:`head_logprobs`), in float32.
    """
    kept = batch["response_mask"][:, 1:].bool()
    logps, entropy = head_logprobs(hidden[:, :-1][kept], model.get_output_embeddings(),
                                   batch["input_ids"][:, 1:][kept], temperature, with_entropy)

    def to_grid(v: torch.Tensor) -> torch.Tensor:  # back to [batch, seq_len - 1], zeros outside the response
        return torch.zeros(kept.shape, dtype=v.dtype, device=v.device).masked_scatter(kept, v)

    mask = batch["response_mask"][:, 1:].to(logps.dtype)
    return to_grid(logps), mask, to_grid(entropy) if with_entropy else None


def sequence_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> SequenceLogprobs:
    """One forward pass; log-probs of the response tokens of every sequence in ``batch``.

    ``batch`` needs ``input_ids``, ``attention_mask`` and ``response_mask`` (as built by :func:`pad_batch`).
    ``temperature`` divides the logits first (PPO scores samples with the temperature they were drawn at).

    Memory: a ``[batch, seq_len, vocab]`` logits tensor would be the largest thing in a small model's step (with a
    150k-token vocabulary and 512 tokens, 16 sequences of it are 5 GB in fp16, twice that in fp32). So the decoder
    runs without its LM head (:func:`last_hidden_states`), and only the positions that predict a response token go
    through the head, a chunk at a time, forward and backward (:func:`head_logprobs`).
    """
    hidden = last_hidden_states(model, batch)
    logps, mask, _ = response_token_logprobs(model, hidden, batch, temperature)
    return SequenceLogprobs(token_logps=logps, mask=mask, sum=logps.sum(-1), count=mask.sum(-1))


def sampled_rows(tokenizer, prompts: list[str], reply_ids: list[list[int]]) -> list[dict]:
    """Prompt token ids + *sampled* reply ids, one row each, with a response mask on the reply tokens.

    The prompt is tokenised as ``generate`` tokenised it and the reply is exactly the ids the model drew (its
    ``<|eos|>`` only if it drew one), so log-probs of these rows are log-probs of what was sampled. Decoding the reply
    to text and tokenising it again can give other ids, and appending an ``<|eos|>`` to a reply that never ended
    charges it a token it never sampled.
    """
    return [{"input_ids": prompt_ids + list(reply), "response_mask": [0] * len(prompt_ids) + [1] * len(reply)}
            for prompt_ids, reply in zip(tokenizer(list(prompts))["input_ids"] if prompts else [], reply_ids)]


def sampled_batch(tokenizer, prompts: list[str], reply_ids: list[list[int]]) -> dict[str, torch.Tensor]:
    """:func:`sampled_rows`, right-padded into one batch."""
    return pad_batch(sampled_rows(tokenizer, prompts, reply_ids), tokenizer.pad_token_id, side="right")


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices ``0 .. len(lengths) - 1`` in batches of ``batch_size``, shortest sequences first (a stable sort).

    A batch is padded to its longest sequence, so batches of sequences of similar length spend less compute on
    padding: on the tiny world's comparisons about half the tokens of a batch in the given order are padding, and
    scoring them in length order takes less than half the time. For passes without gradients, whose results are put
    back in the given order (:func:`in_given_order`); a sequence's numbers then differ from those of another batching
    only in the last bits of float32 (a batched matrix product is not bitwise the same for every batch it is part of).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def in_given_order(batches: list[list[int]], values: list[torch.Tensor]) -> torch.Tensor:
    """The per-sequence ``values`` computed for :func:`length_batches`, concatenated back into the given order."""
    flat = torch.cat(values) if values else torch.empty(0)
    out = torch.empty_like(flat)
    out[torch.tensor([i for batch in batches for i in batch], dtype=torch.long)] = flat
    return out


@torch.no_grad()
def _rows_logprobs(model, rows: list[dict], pad_token_id: int, batch_size: int,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response token counts of tokenised ``rows``, batched in length order
    (:func:`length_batches`), in the given order, on the CPU; no gradients."""
    was_training = model.training
    model.eval()
    batches, sums, counts = length_batches([len(r["input_ids"]) for r in rows], batch_size), [], []
    for indices in batches:
        batch = pad_batch([rows[i] for i in indices], pad_token_id)
        out = sequence_logprobs(model, {k: v.to(model.device) for k, v in batch.items()}, temperature)
        sums.append(out.sum.cpu())
        counts.append(out.count.cpu())
    model.train(was_training)
    return in_given_order(batches, sums), in_given_order(batches, counts)


def sampled_logprobs(model, tokenizer, prompts: list[str], reply_ids: list[list[int]], temperature: float = 1.0,
                     batch_size: int = 64) -> torch.Tensor:
    """``log pi(y | x)`` at ``temperature`` of exactly the sampled ids ``y`` (:func:`sampled_rows`), summed over each
    reply's tokens: a ``[len(prompts)]`` tensor on the CPU; no gradients. Batched in length order
    (:func:`length_batches`)."""
    if len(prompts) != len(reply_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(reply_ids)} replies")
    return _rows_logprobs(model, sampled_rows(tokenizer, prompts, reply_ids), tokenizer.pad_token_id, batch_size,
                          temperature)[0]


def response_logprobs(model, tokenizer, prompts: list[str], responses: list[str], max_length: int,
                      batch_size: int = 64, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(y | x)`` summed over each response's tokens, and their count, for many pairs; no gradients.

    What DPO's reference cache, perplexity filtering and KL estimates need. Returns two ``[len(prompts)]`` tensors
    on the CPU. Perplexity is ``exp(-sum / count)``. ``temperature`` divides the logits (see
    :func:`sequence_logprobs`): the policy that *samples* at temperature T is softmax(logits / T). Batched in length
    order (:func:`length_batches`).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = tokenize_pairs(tokenizer, prompts, responses, max_length)
    return _rows_logprobs(model, rows, tokenizer.pad_token_id, batch_size, temperature)
