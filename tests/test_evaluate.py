"""Evaluation helpers: accuracy against labels and the judge, calibration and ECE."""

import math

import pytest
import torch

from rrhf_lite.methods.evaluate import calibration, gold_agreement, pairwise_accuracy


def test_accuracies():
    assert pairwise_accuracy([2, 1, 0], [1, 2, -1]) == pytest.approx(2 / 3)
    # The reward model orders pair 1 like the judge, pair 2 not.
    assert gold_agreement([2, 0], [1, 1], [5, 3], [0, 0]) == pytest.approx(0.5)


def test_calibration_is_symmetric_and_ece_hand_value():
    # One comparison with gap ln 3: predicted 0.75 for the chosen reply (outcome 1) and 0.25 reversed (outcome 0).
    cal = calibration([math.log(3)], [0.0], bins=4)
    assert cal.predicted == pytest.approx([0.25, 0.75]) and cal.observed == [0.0, 1.0] and cal.counts == [1, 1]
    assert cal.ece == pytest.approx(0.25)


def test_well_calibrated_synthetic_model_has_small_ece():
    # Gaps drawn so that outcome frequencies match sigmoid(gap): 3 of 4 pairs at gap ln 3 say chosen > rejected.
    chosen, rejected = [math.log(3)] * 3 + [0.0], [0.0] * 3 + [math.log(3)]
    assert calibration(chosen, rejected, bins=4).ece == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------------------------------
# KL from the sampled ids, against the exact KL of a vocabulary small enough to enumerate every reply
# --------------------------------------------------------------------------------------------------------------------
def _tiny_vocabulary_models():
    """A 5-token tokenizer (pad, bos, eos, a, b) and two different random Llamas over it: policy and reference."""
    import tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "a": 3, "b": 4}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="a"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    config = LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(10)  # sharper next-token distributions: a KL of about 1.2 nats
        models.append(model)
    return tokenizer, *models


@torch.no_grad()
def _exact_kl(policy, reference, prompt_ids: list[int], eos: int, max_new_tokens: int, temperature: float) -> float:
    """KL(pi || pi_ref) of the reply distribution, summed over every reply: each sequence that ends at its first
    ``eos`` within ``max_new_tokens`` tokens, or runs to ``max_new_tokens`` tokens without one (as sampling stops)."""
    kl, frontier = 0.0, [([], 0.0, 0.0)]  # (reply so far, log pi, log pi_ref)
    for _ in range(max_new_tokens):
        grown = []
        for reply, lp, lq in frontier:
            ids = torch.tensor([prompt_ids + reply])
            p = torch.log_softmax(policy(ids).logits[0, -1].double() / temperature, -1)
            q = torch.log_softmax(reference(ids).logits[0, -1].double() / temperature, -1)
            for token in range(p.shape[0]):
                step = (reply + [token], lp + p[token].item(), lq + q[token].item())
                if token == eos:
                    kl += math.exp(step[1]) * (step[1] - step[2])
                else:
                    grown.append(step)
        frontier = grown
    return kl + sum(math.exp(lp) * (lp - lq) for _, lp, lq in frontier)  # replies cut at max_new_tokens


def test_kl_from_sampled_ids_matches_the_exact_kl():
    from rrhf_lite.core.sampling import generate_tokens
    from rrhf_lite.methods.evaluate import kl_to_reference

    tokenizer, policy, reference = _tiny_vocabulary_models()
    prompt, max_new_tokens, temperature, n = "a b", 3, 0.7, 4000
    exact = _exact_kl(policy, reference, tokenizer(prompt)["input_ids"], tokenizer.eos_token_id, max_new_tokens,
                      temperature)
    generation = generate_tokens(policy, tokenizer, [prompt] * n, max_new_tokens=max_new_tokens,
                                 temperature=temperature, batch_size=n, seed=0)
    assert 0.2 < sum(generation.ended) / n < 0.8  # both endings occur: sampled eos, and cut at max_new_tokens
    per_sample = kl_to_reference(policy, tokenizer, generation, reference=reference, temperature=temperature)
    estimate, error = per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)
    assert exact > 0.5
    # Within Monte Carlo error. (Decoding to text, re-tokenising and appending <eos> to every reply gives 1.77 here
    # against an exact 1.24: about 25 standard errors off.)
    assert abs(estimate - exact) < 4 * error, f"estimate {estimate:.4f} +- {error:.4f}, exact {exact:.4f}"


def test_bootstrap_interval_resamples_prompts():
    from rrhf_lite.methods.evaluate import bootstrap_interval

    assert bootstrap_interval([2.0] * 12, replies_per_prompt=2) == pytest.approx((2.0, 2.0))  # no spread, no interval
    # Two replies per prompt, in evaluation order (all prompts, then all prompts again): each prompt's two replies
    # average to the same value, so resampling prompts finds no spread although single replies vary widely.
    assert bootstrap_interval([0.0, 10.0, 4.0, 10.0, 0.0, 6.0], replies_per_prompt=2) == pytest.approx((5.0, 5.0))
    # Normal values: the interval is about mean +- 1.96 sd / sqrt(n).
    values = torch.randn(400, generator=torch.Generator().manual_seed(0)).tolist()
    lo, hi = bootstrap_interval(values)
    mean = sum(values) / 400
    assert lo < mean < hi and (hi - lo) / 2 == pytest.approx(1.96 / 20, rel=0.15)
    # 40 distinct prompts asked 10 times each, replies alike within a prompt: the interval rests on 40 prompts, not
    # on 400 replies, and is about sqrt(10) times wider than treating the replies as independent would make it.
    per_prompt = torch.randn(40, generator=torch.Generator().manual_seed(1))
    replies = per_prompt.repeat(10) + 0.01 * torch.randn(400, generator=torch.Generator().manual_seed(2))
    clustered, independent = bootstrap_interval(replies, 10), bootstrap_interval(replies)
    assert (clustered[1] - clustered[0]) / (independent[1] - independent[0]) == pytest.approx(10 ** 0.5, rel=0.25)
    with pytest.raises(ValueError, match="split"):
        bootstrap_interval([1.0, 2.0, 3.0], replies_per_prompt=2)


def test_paired_difference_cancels_what_the_prompts_share():
    """Two methods on the same prompts: prompt difficulty varies a lot, the methods differ by 0.3 on every prompt.
    Their own intervals overlap; the paired difference is 0.3 with a narrow interval that excludes 0."""
    from rrhf_lite.methods.evaluate import bootstrap_interval, paired_difference

    difficulty = 3 * torch.randn(100, generator=torch.Generator().manual_seed(0))
    noise = 0.1 * torch.randn(200, generator=torch.Generator().manual_seed(1))
    a, b = difficulty.repeat(2) + 0.3 + noise, difficulty.repeat(2)
    (a_lo, a_hi), (b_lo, b_hi) = bootstrap_interval(a, 2), bootstrap_interval(b, 2)
    assert a_lo < b_hi and b_lo < a_hi  # the separate intervals overlap
    mean, lo, hi = paired_difference(a, b, 2)
    assert mean == pytest.approx(0.3, abs=0.02) and 0.25 < lo < mean < hi < 0.35
    assert paired_difference(b, b, 2) == pytest.approx((0.0, 0.0, 0.0))
