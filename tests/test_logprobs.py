"""Response log-probs: masks, truncation, and batched results equal a naive one-at-a-time loop."""

import math

import pytest
import torch

from rrhf_lite.logprobs import pad_batch, sequence_logprobs, tokenize_pair
from rrhf_lite.models import build_tiny_model, build_tokenizer
from rrhf_lite.profiles import get_profile
from rrhf_lite.world import TinyWorld

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
