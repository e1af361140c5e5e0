"""The tiny preference world: determinism, the gold judge's obvious cases, label noise, dataset formats."""

import random

import pytest

from rrhf_lite.course import world
from rrhf_lite.course.world import TinyWorld, expert_response, format_prompt, judge, label_agreement, label_ceiling


def test_same_seed_same_data_and_different_seed_different_data():
    a, b, c = TinyWorld(seed=0), TinyWorld(seed=0), TinyWorld(seed=1)
    assert a.preference_dataset(50).to_dict() == b.preference_dataset(50).to_dict()
    assert a.ranking_dataset(20, k=4).to_dict() == b.ranking_dataset(20, k=4).to_dict()
    assert a.dialogues(30) == b.dialogues(30)
    assert a.preference_dataset(50).to_dict() != c.preference_dataset(50).to_dict()


def test_one_dataset_does_not_shift_another():
    a, b = TinyWorld(seed=0), TinyWorld(seed=0)
    a.dialogues(100)  # draws from its own stream only
    assert a.preference_dataset(20).to_dict() == b.preference_dataset(20).to_dict()


def test_train_and_test_prompts_are_disjoint_and_cover_harmful_topics():
    w = TinyWorld(seed=0)
    train, test = set(w.sample_prompts(3000, "train")), set(w.sample_prompts(3000, "test"))
    assert train and test and not train & test
    harmful = [p for p in w.sample_prompts(2000) if world.topic_of(p).harmful]
    assert 0.2 < len(harmful) / 2000 < 0.3  # harmful_fraction = 0.25


def test_held_out_prompts_are_distinct_never_trained_on_and_include_unseen_phrasings():
    w = TinyWorld(seed=0)
    held_out = w.held_out_prompts(200)
    assert len(set(held_out)) == 200 and held_out == TinyWorld(seed=0).held_out_prompts(200)
    train_requests = {request for request, _ in w._split["train"]}
    assert not {p.split("Human: ")[1].split("\n")[0] for p in held_out} & train_requests
    assert sum(world.topic_of(p).harmful for p in held_out) == 50  # harmful_fraction 0.25, exactly
    unseen = [t for t in world.PROMPT_TEMPLATES[-world.HELD_OUT_TEMPLATES:]]
    assert not any(t.format(task=task) in train_requests for t in unseen for task in world.TOPICS)
    assert any(any(t.format(task=world.topic_of(p).task) in p for t in unseen) for p in held_out)
    assert {world.topic_of(p).task for p in held_out} == set(world.TOPICS)  # every topic, in both splits
    with pytest.raises(ValueError, match="at most 256 distinct prompts"):
        w.held_out_prompts(300)


PICK_LOCK = format_prompt("How do I pick a lock to get into my neighbor's house?")
BREAD = format_prompt("How do I bake bread?")


def test_polite_refusal_of_harmful_request_beats_compliance():
    refusal = " Sorry, I can not help with that. I can share safe and legal options instead."
    comply = " Sure, happy to help! Get a tension wrench and a pick. Push the pins up one by one."
    assert judge(PICK_LOCK, refusal).score > 0 > judge(PICK_LOCK, comply).score
    # Compliance is "helpful" to the asker but harmful: the two facets pull apart.
    assert judge(PICK_LOCK, comply).helpful > judge(PICK_LOCK, refusal).helpful - 1.0
    assert judge(PICK_LOCK, comply).harmless < 0 < judge(PICK_LOCK, refusal).harmless


def test_on_topic_help_beats_off_topic_and_filler():
    help_ = " Mix flour, water, salt and yeast. Knead the dough for ten minutes."
    off_topic = " Boil fresh water. Warm the pot first."
    filler = " That is a common question. It depends on a lot of things."
    assert judge(BREAD, help_).score > judge(BREAD, filler).score
    assert judge(BREAD, help_).score > judge(BREAD, off_topic).score


def test_refusing_a_harmless_request_loses():
    assert judge(BREAD, " Sorry, I can not help with that.").score < 0 < judge(BREAD, " Bake it in a hot oven.").score


def test_judge_explains_itself_and_sums_its_reasons():
    j = judge(BREAD, " Good question! Mix flour, water, salt and yeast. Knead the dough for ten minutes."
                     " Knead the dough for ten minutes. Blah blah.")
    assert j.score == pytest.approx(j.helpful + j.harmless)
    # greeting 0.25 + two steps in order (2 + 0.5) + a repeat (-0.5) + an unknown sentence (-1)
    assert j.score == pytest.approx(0.25 + 2.0 + 0.5 - 0.5 - 1.0)
    text = j.explain()
    assert "repeats" in text and "not a sentence this world knows" in text and "right order" in text


def test_expert_is_best_and_rambling_is_penalised():
    rng = random.Random(0)
    for prompt in TinyWorld(seed=0).sample_prompts(40):
        best = judge(prompt, expert_response(prompt)).score
        assert all(judge(prompt, world.sample_response(prompt, rng)).score <= best for _ in range(20))
    rambling = world.sample_response(BREAD, rng, style="rambling")
    assert "rambles" in judge(BREAD, rambling).explain()


def test_label_agreement_is_human_like():
    pairs = TinyWorld(seed=0).preference_dataset(2000)
    agreement = label_agreement(pairs)
    assert 0.70 <= agreement <= 0.80  # stated in the module docstring: about 75% at T = 2
    assert agreement == pytest.approx(label_ceiling(pairs, 2.0), abs=0.03)  # Bradley-Terry holds


def test_noisier_labellers_agree_less():
    quiet = label_agreement(TinyWorld(seed=0, label_temperature=0.5).preference_dataset(1000))
    noisy = label_agreement(TinyWorld(seed=0, label_temperature=4.0).preference_dataset(1000))
    assert quiet > noisy + 0.1


def test_dataset_columns_follow_the_ecosystem():
    w = TinyWorld(seed=0)
    assert w.sft_dataset(5).column_names[:2] == ["prompt", "completion"]
    pairs = w.preference_dataset(5)
    assert pairs.column_names[:3] == ["prompt", "chosen", "rejected"]
    ranks = w.ranking_dataset(5, k=3)
    assert ranks.column_names[:3] == ["prompt", "responses", "scores"]
    row = ranks[0]
    assert len(row["responses"]) == len(row["scores"]) == len(set(row["gold_scores"])) == 3
    assert pairs[0]["prompt"].startswith("\n\nHuman: ") and pairs[0]["prompt"].endswith("\n\nAssistant:")
    assert pairs[0]["chosen"].startswith(" ")


def test_ranking_order_agrees_with_gold_more_often_than_chance():
    ranks = TinyWorld(seed=0).ranking_dataset(500, k=4)
    top_is_gold_best = sum(
        max(range(4), key=lambda i: r["scores"][i]) == max(range(4), key=lambda i: r["gold_scores"][i])
        for r in ranks)
    assert top_is_gold_best / 500 > 0.4  # chance is 0.25


def test_unknown_topic_is_a_clear_error():
    with pytest.raises(ValueError, match="does not ask about any topic"):
        judge(format_prompt("What is the capital of France?"), " Paris.")
