"""Sampling, best-of-n and candidate datasets: generation stops at EOS, the estimator is exact, filters keep
what their threshold says, datasets reload with their columns."""

import math
import random

import datasets
import pytest
import torch

from rrhf_lite.core.models import build_tokenizer
from rrhf_lite.core.sampling import generate, generate_tokens, sample_candidates
from rrhf_lite.course.pretrain import build_tiny_model
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.world import TinyWorld, gold_rewards
from rrhf_lite.methods.best_of_n import best_of_n_curve, best_of_n_expectation, best_of_n_kl, select_best
from rrhf_lite.methods.candidates import (
    build_rankings,
    merge_sources,
    perplexities,
    perplexity_filter,
    rankings_to_pairs,
)


@pytest.fixture(scope="module")
def tok_and_model():
    tokenizer = build_tokenizer(TinyWorld(seed=0).dialogues(1500), vocab_size=500)
    model = build_tiny_model(tokenizer, get_profile("tiny", n_layer=1, hidden_size=64, intermediate_size=128,
                                                      n_head=2)).eval()
    return tokenizer, model


PROMPTS = TinyWorld(seed=0).sample_prompts(6, "test")


def test_generation_stops_at_eos_and_drops_what_follows(tok_and_model):
    tokenizer, model = tok_and_model
    # An untrained model rarely says <|eos|> on its own: bias it (through the model's generation config, which
    # generate() applies), so that some rows end early in the batch while others run to max_new_tokens.
    model.generation_config.sequence_bias = {(tokenizer.eos_token_id,): 2.0}
    out = generate_tokens(model, tokenizer, PROMPTS * 4, max_new_tokens=12, temperature=1.0, seed=1)
    assert any(out.ended) and not all(out.ended)
    for ids, ended in zip(out.reply_ids, out.ended):
        assert tokenizer.pad_token_id not in ids  # nothing after the end survives
        if ended:
            assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
        else:
            assert tokenizer.eos_token_id not in ids and len(ids) == 12
    model.generation_config.sequence_bias = None


def test_batched_left_padded_greedy_equals_one_at_a_time(tok_and_model):
    tokenizer, model = tok_and_model
    together = generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=0)
    alone = [generate(model, tokenizer, [p], max_new_tokens=8, temperature=0)[0] for p in PROMPTS]
    assert together == alone
    assert tokenizer.padding_side == "right"  # restored


def test_static_cache_samples_the_tokens_of_the_default_cache(tok_and_model):
    """generate_tokens preallocates the key/value cache (cache_implementation="static"); with the same seed it must
    draw exactly the tokens that generate() draws with its default, growing cache, in a left-padded batch."""
    tokenizer, model = tok_and_model
    prompts = PROMPTS * 3
    ours = generate_tokens(model, tokenizer, prompts, max_new_tokens=10, temperature=0.7, seed=5)
    torch.manual_seed(5)
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                             repetition_penalty=1.0, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    default = [row[:row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
               for row in out[:, enc["input_ids"].shape[1]:].tolist()]
    assert ours.reply_ids == default


def test_sampling_is_seeded_and_candidates_are_grouped(tok_and_model):
    tokenizer, model = tok_and_model
    a = sample_candidates(model, tokenizer, PROMPTS[:3], 4, max_new_tokens=6, seed=3)
    b = sample_candidates(model, tokenizer, PROMPTS[:3], 4, max_new_tokens=6, seed=3)
    assert a == b and [len(c) for c in a] == [4, 4, 4]
    assert len({r for c in a for r in c}) > 3  # independent samples, not copies


def test_pad_equal_to_eos_is_refused(tok_and_model):
    tokenizer, model = tok_and_model
    broken = type(tokenizer).from_pretrained  # noqa: F841 - only to show we do not mutate the shared tokenizer
    tokenizer_copy = __import__("copy").deepcopy(tokenizer)
    tokenizer_copy.pad_token = tokenizer_copy.eos_token
    with pytest.raises(ValueError, match="pad token distinct from eos"):
        generate_tokens(model, tokenizer_copy, PROMPTS[:1], max_new_tokens=2)


# --- best-of-n -------------------------------------------------------------------------------------------------
def test_best_of_n_kl_bound():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_n_expectation_hand_values():
    # Three samples with values 1, 2, 3 (selected by themselves). n=1: the mean, 2. n=3: the max, 3.
    # n=2: subsets {1,2},{1,3},{2,3} -> best 2, 3, 3 -> mean 8/3.
    v = torch.tensor([[3.0, 1.0, 2.0]])
    assert best_of_n_expectation(v, v, 1).item() == pytest.approx(2.0)
    assert best_of_n_expectation(v, v, 2).item() == pytest.approx(8 / 3)
    assert best_of_n_expectation(v, v, 3).item() == pytest.approx(3.0)
    # Selecting by a proxy that ranks them backwards picks the worst.
    assert best_of_n_expectation(-v, v, 3).item() == pytest.approx(1.0)


def test_best_of_n_expectation_matches_brute_force():
    rng = random.Random(0)
    proxy = torch.tensor([[rng.gauss(0, 1) for _ in range(6)] for _ in range(4)])
    gold = torch.tensor([[rng.gauss(0, 1) for _ in range(6)] for _ in range(4)])
    import itertools

    for n in (1, 2, 4, 6):
        brute = []
        for p, g in zip(proxy.tolist(), gold.tolist()):
            subsets = list(itertools.combinations(range(6), n))
            brute.append(sum(g[max(s, key=p.__getitem__)] for s in subsets) / len(subsets))
        assert best_of_n_expectation(proxy, gold, n).tolist() == pytest.approx(brute, abs=1e-5)


def test_curve_rises_with_n_when_selecting_on_the_truth():
    gold = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    rows = best_of_n_curve(gold, gold, [1, 2, 4, 8, 16])
    assert [r["n"] for r in rows] == [1, 2, 4, 8, 16]
    assert all(a["gold"] < b["gold"] for a, b in zip(rows, rows[1:]))
    assert all(r["gold"] == pytest.approx(r["gold_oracle"]) for r in rows)
    with pytest.raises(ValueError, match="between 1 and"):
        best_of_n_curve(gold, gold, [32])


def test_select_best():
    assert select_best([["a", "b", "c"], ["d", "e"]], [[0.1, 0.9, 0.5], [2.0, -1.0]]) == ["b", "d"]


# --- candidates, pairs and perplexity filtering ------------------------------------------------------------------
def test_rankings_and_pairs_reload_with_their_columns(tmp_path):
    w = TinyWorld(seed=0)
    prompts = w.sample_prompts(3)
    rng = random.Random(0)
    from rrhf_lite.course.world import expert_response, sample_response

    sources = {"sft": [[sample_response(p, rng) for _ in range(2)] for p in prompts],
               "expert": [[expert_response(p)] for p in prompts]}
    responses, labels = merge_sources(sources)
    assert labels[0] == ["sft", "sft", "expert"] and responses[1][2] == expert_response(prompts[1])
    rankings = build_rankings(prompts, sources, gold_rewards, gold_rewards)
    rankings.save_to_disk(tmp_path / "rankings")
    reloaded = datasets.load_from_disk(tmp_path / "rankings")
    assert reloaded.column_names == ["prompt", "responses", "sources", "scores", "gold_scores"]
    assert reloaded.to_dict() == rankings.to_dict()

    pairs = rankings_to_pairs(reloaded)
    assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(pairs.column_names)
    for row in pairs:
        assert row["score_chosen"] > row["score_rejected"]
        assert row["chosen"] == expert_response(row["prompt"])  # the expert is the world's best reply


def test_sources_must_cover_the_same_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        merge_sources({"a": [["x"]], "b": [["y"], ["z"]]})


def test_tied_rankings_give_no_pair():
    ds = datasets.Dataset.from_dict({"prompt": ["p", "q"], "responses": [["a", "b"], ["c", "d"]],
                                     "scores": [[1.0, 1.0], [0.0, 2.0]]})
    pairs = rankings_to_pairs(ds)
    assert pairs["prompt"] == ["q"] and pairs["chosen"] == ["d"] and pairs["rejected"] == ["c"]


def test_perplexity_filter_keeps_what_its_threshold_says():
    pairs = datasets.Dataset.from_dict({"prompt": list("abcd"), "chosen": list("abcd"), "rejected": list("abcd"),
                                        "ppl_chosen": [1.0, 5.0, 2.0, 9.0], "ppl_rejected": [2.0, 1.0, 6.0, 3.0]})
    kept = perplexity_filter(pairs, max_perplexity=5.0)
    assert kept.dataset["prompt"] == ["a", "b"] and kept.threshold == 5.0 and kept.kept_fraction == 0.5
    # the median of the eight perplexities (1 1 2 2 3 5 6 9) is 2.5: only pair "a" has both at or below it
    by_quantile = perplexity_filter(pairs, quantile=0.5)
    assert by_quantile.threshold == pytest.approx(2.5) and by_quantile.dataset["prompt"] == ["a"]
    assert perplexity_filter(pairs, quantile=1.0).kept_fraction == 1.0
    with pytest.raises(ValueError, match="exactly one"):
        perplexity_filter(pairs)
    with pytest.raises(ValueError, match="no column"):
        perplexity_filter(pairs.remove_columns("ppl_chosen"), quantile=0.5)


def test_perplexity_is_exp_of_minus_mean_logprob(tok_and_model):
    tokenizer, model = tok_and_model
    ppl = perplexities(model, tokenizer, PROMPTS[:2], [" Boil fresh water.", " Good luck!"], 128)
    # an untrained model is close to uniform over the vocabulary: perplexity near V
    assert ppl.shape == (2,) and all(0.5 * len(tokenizer) < p < 2 * len(tokenizer) for p in ppl.tolist())
