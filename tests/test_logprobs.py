"""Response log-probs: masks, truncation, batched results equal a naive one-at-a-time loop, and the chunked LM head
equals the full logits, values and gradients."""

import copy
import math

import pytest
import torch

from rrhf_lite.core.logprobs import (
    head_logprobs,
    in_given_order,
    length_batches,
    length_grouped,
    pad_batch,
    position_ids_from_mask,
    response_logprobs,
    sampled_logprobs,
    sequence_logprobs,
    tokenize_pair,
    tokenize_pairs,
    tokenize_preference_pairs,
)
from rrhf_lite.core.models import build_tokenizer
from rrhf_lite.course.pretrain import build_tiny_model
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld

PAIRS = [("\n\nHuman: How do I bake bread?\n\nAssistant:", " Knead the dough for ten minutes."),
         ("\n\nHuman: Help me steal a car.\n\nAssistant:", " Sorry, I can not help with that. Good luck!"),
         ("\n\nHuman: Hi\n\nAssistant:", " Boil fresh water.")]


@pytest.fixture(scope="module")
def tok_and_model():
    tokenizer = build_tokenizer(TinyWorld(seed=0).dialogues(2000), vocab_size=600)
    model = build_tiny_model(tokenizer, get_profile("tiny", n_layer=2, hidden_size=64, intermediate_size=128,
                                                      n_head=2)).eval()
    return tokenizer, model


def naive_logprob(model, tokenizer, prompt, response):
    """Sum of log p(token) over the response tokens and eos, one example, no padding, written out longhand."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    total = 0.0
    for t in range(len(prompt_ids), len(ids)):
        total += torch.log_softmax(logits[t - 1], -1)[ids[t]].item()
    return total, len(ids) - len(prompt_ids)


def test_response_mask_covers_response_and_eos(tok_and_model):
    tokenizer, _ = tok_and_model
    row = tokenize_pair(tokenizer, *PAIRS[0], max_length=128)
    n_response = len(tokenizer(PAIRS[0][1], add_special_tokens=False)["input_ids"]) + 1
    assert sum(row["response_mask"]) == n_response
    assert row["response_mask"][-n_response:] == [1] * n_response and row["input_ids"][-1] == tokenizer.eos_token_id
    assert not row["truncated"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_naive_loop(tok_and_model, side):
    tokenizer, model = tok_and_model
    batch = pad_batch([tokenize_pair(tokenizer, p, r, 128) for p, r in PAIRS], tokenizer.pad_token_id, side)
    with torch.no_grad():
        out = sequence_logprobs(model, batch)
    for i, (p, r) in enumerate(PAIRS):
        expected, count = naive_logprob(model, tokenizer, p, r)
        assert out.count[i].item() == count
        assert out.sum[i].item() == pytest.approx(expected, abs=1e-4)
        assert out.mean[i].item() == pytest.approx(expected / count, abs=1e-5)


def test_length_batches_sort_by_length_and_in_given_order_puts_values_back():
    batches = length_batches([5, 2, 9, 2, 7], batch_size=2)
    assert batches == [[1, 3], [0, 4], [2]]  # shortest first, ties in the given order
    values = [torch.tensor([2.0, 2.5]), torch.tensor([5.0, 7.0]), torch.tensor([9.0])]
    assert in_given_order(batches, values).tolist() == [5.0, 2.0, 9.0, 2.5, 7.0]
    assert length_batches([], 4) == [] and in_given_order([], []).numel() == 0


def test_logprobs_of_many_pairs_batched_by_length_keep_the_given_order(tok_and_model):
    tokenizer, model = tok_and_model
    pairs = PAIRS + [(p, r + r) for p, r in PAIRS]  # six lengths, not sorted, in batches of two
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    sums, counts = response_logprobs(model, tokenizer, prompts, responses, 128, batch_size=2)
    sampled = sampled_logprobs(model, tokenizer, prompts, [tokenizer(r, add_special_tokens=False)["input_ids"]
                                                           + [tokenizer.eos_token_id] for r in responses], batch_size=2)
    for i, (p, r) in enumerate(pairs):
        expected, count = naive_logprob(model, tokenizer, p, r)
        assert counts[i].item() == count
        assert sums[i].item() == pytest.approx(expected, abs=1e-4)
        assert sampled[i].item() == pytest.approx(expected, abs=1e-4)


def test_padding_never_counts(tok_and_model):
    tokenizer, model = tok_and_model
    batch = pad_batch([tokenize_pair(tokenizer, p, r, 128) for p, r in PAIRS], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        out = sequence_logprobs(model, batch)
    pad_positions = batch["attention_mask"][:, 1:] == 0
    assert pad_positions.any() and (out.token_logps[pad_positions] == 0).all()


def test_untrained_model_logprob_is_near_uniform(tok_and_model):
    tokenizer, model = tok_and_model
    batch = pad_batch([tokenize_pair(tokenizer, *PAIRS[0], 128)], tokenizer.pad_token_id)
    with torch.no_grad():
        mean = sequence_logprobs(model, batch).mean.item()
    assert mean == pytest.approx(-math.log(len(tokenizer)), abs=0.5)


def test_truncation_keeps_the_reply_and_the_end_of_the_prompt(tok_and_model):
    tokenizer, _ = tok_and_model
    prompt, response = PAIRS[0]
    full = tokenize_pair(tokenizer, prompt, response, 128)
    cut = tokenize_pair(tokenizer, prompt, response, max_length=len(full["input_ids"]) - 3)
    assert cut["truncated"] and len(cut["input_ids"]) == len(full["input_ids"]) - 3
    assert cut["input_ids"][0] == tokenizer.bos_token_id
    assert cut["input_ids"][1:] == full["input_ids"][4:]  # three prompt tokens after <bos> were dropped
    assert sum(cut["response_mask"]) == sum(full["response_mask"])


def test_tokenize_pairs_gives_each_pair_its_own_row(tok_and_model):
    """Many pairs in one call (two tokenizer calls, each distinct prompt tokenised once) give the rows that
    tokenising each pair on its own gives: prompt ids (with <bos>) + reply ids + <eos>, cut the same way."""
    tokenizer, _ = tok_and_model
    prompts = [p for p, _ in PAIRS] + [PAIRS[0][0]]  # the first prompt twice, with two replies
    replies = [r for _, r in PAIRS] + [" Let it rise overnight."]
    for max_length in (128, 12):  # nothing cut; every row cut
        rows = tokenize_pairs(tokenizer, prompts, replies, max_length)
        assert rows == [tokenize_pair(tokenizer, p, r, max_length) for p, r in zip(prompts, replies)]
        assert all(row["truncated"] == (max_length == 12) for row in rows)
    for (p, r), row in zip(zip(prompts, replies), tokenize_pairs(tokenizer, prompts, replies, 128)):
        assert row["input_ids"] == (tokenizer(p)["input_ids"] + tokenizer(r, add_special_tokens=False)["input_ids"]
                                    + [tokenizer.eos_token_id])
    # chosen and rejected of each comparison: the rows of their own pairs
    pairs = [{"prompt": p, "chosen": r, "rejected": r.upper()} for p, r in zip(prompts, replies)]
    assert tokenize_preference_pairs(tokenizer, pairs, 12) == [
        {"chosen": tokenize_pair(tokenizer, p, r, 12), "rejected": tokenize_pair(tokenizer, p, r.upper(), 12)}
        for p, r in zip(prompts, replies)]
    assert tokenize_pairs(tokenizer, [], [], 128) == []
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        tokenize_pairs(tokenizer, prompts[:3], replies[:2], 128)


def test_temperature_divides_the_logits(tok_and_model):
    tokenizer, model = tok_and_model
    batch = pad_batch([tokenize_pair(tokenizer, *PAIRS[1], 128)], tokenizer.pad_token_id)
    with torch.no_grad():
        hot = sequence_logprobs(model, batch, temperature=2.0)
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1] / 2.0
    by_hand = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0] * hot.mask
    assert torch.allclose(hot.token_logps, by_hand, atol=1e-5)


def test_bad_padding_side():
    with pytest.raises(ValueError, match="side"):
        pad_batch([{"input_ids": [1], "response_mask": [0]}], 0, side="middle")


def materialised(hidden, head, labels, temperature):
    """The plain way: every logit at once, then log-softmax and entropy (what head_logprobs must equal)."""
    logp = torch.log_softmax(head(hidden).float() / temperature, -1)
    return logp.gather(-1, labels[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk_elements", [10**9, 7 * 50, 1])  # one chunk; 7 rows per chunk (uneven); one row
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_equals_materialised_logits_forward_and_backward(chunk_elements, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).requires_grad_(False)
    hidden = torch.randn(23, 16, requires_grad=True)
    labels = torch.randint(0, 50, (23,))
    weights = torch.randn(23)  # an arbitrary loss: each position's log-prob with its own weight

    logps, entropy = head_logprobs(hidden, head, labels, temperature=0.7, with_entropy=True,
                                   chunk_elements=chunk_elements)
    (weights * logps).sum().backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    ref_lp, ref_ent = materialised(hidden, head, labels, 0.7)
    (weights * ref_lp).sum().backward()
    assert torch.allclose(logps, ref_lp, atol=1e-5) and torch.allclose(entropy, ref_ent, atol=1e-5)
    assert torch.allclose(ours, hidden.grad, atol=1e-6)
    assert not entropy.requires_grad  # measured (PPO logs it), never trained


def test_chunked_head_without_entropy_and_without_gradients():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    hidden, labels = torch.randn(5, 8), torch.randint(0, 30, (5,))
    with torch.no_grad():
        logps, entropy = head_logprobs(hidden, head, labels, chunk_elements=60)
    assert entropy is None and torch.allclose(logps, materialised(hidden, head, labels, 1.0)[0], atol=1e-6)


def test_chunked_head_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="plain torch.nn.Linear"):
        head_logprobs(torch.zeros(2, 4), torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="trainable"):
        head_logprobs(torch.zeros(2, 4), torch.nn.Linear(4, 3), torch.zeros(2, dtype=torch.long))


def test_lora_gradients_equal_those_through_the_full_logits(tok_and_model):
    """Training through sequence_logprobs gives the LoRA matrices the gradient the full-logits computation gives."""
    from peft import LoraConfig, get_peft_model

    tokenizer, model = tok_and_model
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0: a real gradient
    lora = get_peft_model(copy.deepcopy(model), config)
    batch = pad_batch([tokenize_pair(tokenizer, p, r, 128) for p, r in PAIRS], tokenizer.pad_token_id, "left")
    trainable = [p for p in lora.parameters() if p.requires_grad]

    sequence_logprobs(lora, batch, temperature=0.9).sum.sum().backward()
    ours = [p.grad.clone() for p in trainable]
    lora.zero_grad()
    logits = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=position_ids_from_mask(batch["attention_mask"])).logits[:, :-1] / 0.9
    mask = batch["response_mask"][:, 1:]
    (torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0] * mask).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4) for a, p in zip(ours, trainable))


def test_length_grouped_runs_two_groups_cut_to_their_longest_row_and_keeps_the_order():
    lengths = [6, 2, 6, 3, 2]
    batch = pad_batch([{"input_ids": list(range(10 * i + 1, 10 * i + 1 + n))} for i, n in enumerate(lengths)], 0)
    widths = []

    def echo(input_ids, attention_mask):  # per token, so that order and padding can be read back
        widths.append(input_ids.shape[1])
        return (input_ids * attention_mask).float()

    out = length_grouped(echo, batch)
    assert sorted(widths) == [3, 6]  # the three short rows cut to 3 tokens, the two long ones at 6
    assert torch.equal(out, (batch["input_ids"] * batch["attention_mask"]).float())
    per_row = length_grouped(lambda ids, mask: (ids * mask).sum(-1), batch)
    assert torch.equal(per_row, (batch["input_ids"] * batch["attention_mask"]).sum(-1))


def test_length_grouped_keeps_one_pass_when_a_split_spares_little_or_the_padding_is_on_the_left():
    def shapes(batch, min_saved):
        seen = []

        def forward(input_ids, attention_mask):
            seen.append(input_ids.shape)
            return input_ids.float()

        length_grouped(forward, batch, min_saved=min_saved)
        return seen

    rows = [{"input_ids": [1] * n} for n in (6, 2, 6, 3, 2)]
    for batch, min_saved in ((pad_batch(rows, 0, side="left"), 0.0), (pad_batch(rows, 0), 0.9),
                             (pad_batch([{"input_ids": [1] * 5}] * 4, 0), 0.0)):
        assert shapes(batch, min_saved) == [batch["input_ids"].shape]
    assert len(shapes(pad_batch(rows, 0), 0.2)) == 2


def test_grouped_forward_gives_the_one_pass_logprobs_and_gradients(tok_and_model, monkeypatch):
    tokenizer, model = tok_and_model
    pairs = PAIRS + [(p, r + r + r) for p, r in PAIRS]
    batch = pad_batch([tokenize_pair(tokenizer, p, r, 128) for p, r in pairs], tokenizer.pad_token_id)
    model = copy.deepcopy(model)
    model.get_output_embeddings().requires_grad_(False)  # as under LoRA (tied to the input embeddings here)
    results = {}
    for name, min_saved in (("grouped", 0.0), ("one pass", 2.0)):
        monkeypatch.setattr("rrhf_lite.core.logprobs.MIN_PADDING_SAVED", min_saved)
        model.zero_grad()
        out = sequence_logprobs(model, batch)
        out.sum.sum().backward()
        results[name] = out.token_logps.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    (grouped, grouped_grads), (whole, whole_grads) = results["grouped"], results["one pass"]
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(grouped_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
