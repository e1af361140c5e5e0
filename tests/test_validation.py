"""Bad input: every problem is named by column and row, before any model is loaded or trained."""

import math
import warnings

import datasets
import pytest
from conftest import SMALL  # tests/conftest.py

from rrhf_lite.core.logprobs import pad_batch, tokenize_pair
from rrhf_lite.core.models import load_tokenizer
from rrhf_lite.core.validation import (
    DataValidationError,
    DataWarning,
    report_truncation,
    sampled_replies,
    validate_demonstrations,
    validate_preference_dataset,
    validate_rankings,
    validate_tokenizer,
)
from rrhf_lite.course.profiles import get_profile
from rrhf_lite.course.training import train_folder
from rrhf_lite.methods.candidates import build_rankings, rankings_to_pairs
from rrhf_lite.methods.dpo import tokenize_preferences, train_dpo
from rrhf_lite.methods.ranking import shorten_rankings, tokenize_rankings, train_pro, train_rrhf
from rrhf_lite.methods.reward import tokenize_comparisons, train_reward_model
from rrhf_lite.methods.sft import tokenize_demonstrations, train_sft

P = "\n\nHuman: How do I boil water?\n\nAssistant:"


def demos(**bad):
    rows = {"prompt": [P, P, P], "completion": [" Heat it.", " Use a kettle.", " Wait."]}
    for column, (row, value) in bad.items():
        rows[column][row] = value
    return datasets.Dataset.from_dict(rows)


def pairs(as_rows=False, **bad):
    rows = {"prompt": [P, P, P], "chosen": [" Heat it.", " Kettle.", " Stove."], "rejected": [" No.", " Eh.", " Hm."]}
    for column, (row, value) in bad.items():
        rows[column][row] = value
    if as_rows:  # a list of dicts can hold anything; an Arrow string column only strings and None (a missing value)
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    return datasets.Dataset.from_dict(rows)


def rankings(**bad):
    rows = {"prompt": [P, P, P], "responses": [[" a", " b", " c"], [" d", " e"], [" f", " g"]],
            "scores": [[1.0, 2.0, 3.0], [0.5, -0.5], [2.0, 1.0]]}
    for column, (row, value) in bad.items():
        rows[column][row] = value
    return rows  # a dict of columns: mixed types (a string among scores) cannot go into an Arrow table


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- one test per bad input -------------------------------------------------------------------------------------------

def test_a_dict_of_columns_of_unequal_length_is_named_before_anything_loads():
    columns = {"prompt": [P, P, P], "chosen": [" a", " b"], "rejected": [" c", " d", " e"]}
    assert "'chosen'" in error(validate_preference_dataset, columns) and "has 2 values but 'prompt' has 3" in error(
        validate_preference_dataset, columns)
    assert "expected a list of values" in error(validate_preference_dataset, {**columns, "chosen": " a"})


def test_a_dataset_a_dict_of_columns_and_a_list_of_rows_tokenise_alike(tokenizer):
    dataset = pairs()
    columns, rows = dataset.to_dict(), pairs(as_rows=True)
    assert tokenize_preferences(tokenizer, columns, 64) == tokenize_preferences(tokenizer, dataset, 64) == \
        tokenize_preferences(tokenizer, rows, 64)
    assert tokenize_comparisons(tokenizer, columns, 64) == tokenize_comparisons(tokenizer, rows, 64)
    assert tokenize_demonstrations(tokenizer, demos().to_dict(), 64) == tokenize_demonstrations(tokenizer, demos(), 64)
    assert tokenize_rankings(tokenizer, rankings(), 64) == tokenize_rankings(tokenizer, datasets.Dataset.from_dict(
        rankings()), 64)


def test_held_out_pairs_score_alike_as_a_dataset_a_dict_or_a_list_of_rows(saved_model):
    """train_reward_model's eval_pairs: a list of rows passed validation and then failed at the first evaluation."""
    from rrhf_lite.core.models import load_for_training
    from rrhf_lite.methods.reward import score_pairs

    model, tokenizer = load_for_training(saved_model, get_profile("tiny", **SMALL), head="reward")
    scored = [score_pairs(model, tokenizer, data, 64) for data in (pairs(), pairs().to_dict(), pairs(as_rows=True))]
    for chosen, rejected in scored[1:]:
        assert chosen.tolist() == scored[0][0].tolist() and rejected.tolist() == scored[0][1].tolist()


def test_missing_column_is_named():
    assert error(validate_demonstrations, demos().remove_columns("completion")).startswith(
        "column 'completion', all rows: missing")
    assert error(validate_preference_dataset, pairs().remove_columns("rejected")).startswith(
        "column 'rejected', all rows: missing")
    no_scores = rankings()
    del no_scores["scores"]
    assert error(validate_rankings, no_scores).startswith("column 'scores', all rows: missing")
    # a list of rows: the first row without the key is named
    rows = [{"prompt": P, "completion": " a"}, {"prompt": P, "completion": " b"}, {"prompt": P}]
    assert error(validate_demonstrations, rows).startswith("column 'completion', row 2: missing")


def test_empty_dataset_is_an_error():
    assert "no rows" in error(validate_demonstrations, demos().select([]))


@pytest.mark.parametrize("value", ["", "   \n", None, 7])
def test_empty_or_non_string_prompt_is_named(value):
    rows = [{"prompt": P, "completion": " a"}, {"prompt": value, "completion": " b"}]  # a list of rows works too
    assert error(validate_demonstrations, rows).startswith("column 'prompt', row 1: expected")
    assert error(validate_preference_dataset, pairs(prompt=(2, value), as_rows=True),
                 allow_empty_responses=True).startswith("column 'prompt', row 2:")
    assert error(validate_rankings, rankings(prompt=(0, value)),
                 allow_empty_responses=True).startswith("column 'prompt', row 0:")


def test_empty_response_is_named():
    assert error(validate_demonstrations, demos(completion=(2, " "))).startswith(
        "column 'completion', row 2: expected a non-empty string")
    assert error(validate_preference_dataset, pairs(chosen=(1, ""))).startswith(
        "column 'chosen', row 1: expected a non-empty string")
    assert error(validate_rankings, rankings(responses=(1, [" d", ""]))).startswith(
        "column 'responses', row 1: reply 1: expected a non-empty string")
    # a missing reply (None: what a missing value becomes) is an error even where empty replies are allowed
    assert error(validate_preference_dataset, pairs(rejected=(0, None)), allow_empty_responses=True).startswith(
        "column 'rejected', row 0: expected a string, got None")


def test_a_pair_that_compares_a_reply_with_itself_is_kept_with_a_warning_naming_its_row():
    with pytest.warns(DataWarning, match=r"1 of 3 rows compare a reply with itself \(rows 1, columns 'chosen', "
                                         r"'rejected'\): kept, but such a pair teaches nothing"):
        validate_preference_dataset(pairs(rejected=(1, " Kettle.")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct replies: nothing to say
        validate_preference_dataset(pairs())


def test_empty_replies_from_samples_are_kept_with_a_count():
    # A model's own sample can be empty (it ended at once): RRHF, PRO, DPO and the reward model keep it, and say so.
    with pytest.warns(DataWarning, match=r"empty replies \(1 in 'rejected', of 3 rows\)"):
        validate_preference_dataset(pairs(rejected=(2, "")), allow_empty_responses=True)
    with pytest.warns(DataWarning, match=r"empty replies \(2 in 'responses', of 3 rows\)"):
        validate_rankings(rankings(responses=(0, ["", " b", ""])), allow_empty_responses=True)


def test_the_courses_own_samples_are_not_warned_about_but_other_warnings_stay():
    # The pipeline trains on its models' samples inside sampled_replies(): an empty one is expected there (lesson 03
    # counts them), so no warning; anything else the validators say still comes through.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sampled_replies():
            validate_rankings(rankings(responses=(0, ["", " b", ""])), allow_empty_responses=True)
            warnings.warn("rankings: 1 of 3 rows are longer than max_length", DataWarning, stacklevel=1)
        validate_preference_dataset(pairs(rejected=(2, "")), allow_empty_responses=True)  # outside: warned again
    assert [str(w.message)[:30] for w in caught] == ["rankings: 1 of 3 rows are long", "comparisons: empty replies (1 "]


@pytest.mark.parametrize("score", ["high", None, True, [1.0]])
def test_non_numeric_score_is_named(score):
    message = error(validate_rankings, rankings(scores=(2, [1.0, score])))
    assert message.startswith("column 'scores', row 2: score 1 is") and "not a number" in message


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_score_is_named(score):
    ds = datasets.Dataset.from_dict(rankings(scores=(1, [score, 0.0])))  # also through an Arrow dataset
    assert error(validate_rankings, ds).startswith(f"column 'scores', row 1: score 0 is {score}; scores must be finite")


def test_responses_and_scores_of_different_lengths_are_named():
    assert error(validate_rankings, rankings(scores=(0, [1.0, 2.0]))).startswith(
        "column 'scores', row 0: 2 scores for 3 responses")
    assert error(validate_rankings, rankings(responses=(0, " a single string"))).startswith(
        "column 'responses', row 0: expected a list of replies")


def test_fewer_than_two_candidates_is_named():
    assert error(validate_rankings, rankings(responses=(2, [" f"]), scores=(2, [1.0]))).startswith(
        "column 'responses', row 2: 1 candidate(s); a ranking needs at least 2")


def test_scores_from_a_reward_model_gone_nan_are_caught_when_rankings_are_built():
    def score_fn(prompts, replies):
        return [math.nan if r == " e" else 1.0 for r in replies]

    with pytest.raises(DataValidationError, match=r"^column 'scores', row 1: score 0 is nan"):
        build_rankings([P, P], {"model": [[" d"], [" e"]], "expert": [[" f"], [" g"]]}, score_fn)
    with pytest.raises(DataValidationError, match=r"^column 'scores', row 0: score 1 is nan"):
        rankings_to_pairs(datasets.Dataset.from_dict(rankings(scores=(0, [1.0, math.nan, 3.0]))))
    with pytest.raises(DataValidationError, match=r"^column 'responses', row 1: 1 candidate"):
        shorten_rankings(rankings(responses=(1, [" d"]), scores=(1, [1.0])), 2)


# --- prompts longer than max_length ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(saved_model):
    return load_tokenizer(saved_model)


def test_long_prompts_lose_their_start_and_are_counted(tokenizer):
    long_prompt = "\n\nHuman: Tell me everything about the sea." * 20 + P
    ds = demos(prompt=(1, long_prompt))
    full = tokenize_pair(tokenizer, long_prompt, ds[1]["completion"], 10_000)
    with pytest.warns(DataWarning, match=r"SFT demonstrations: 1 of 3 rows are longer than max_length=48 tokens: "
                                         r"the prompt was cut from its start in 1, the reply cut at its end in 0 "
                                         r"\(first cut row: 1\)"):
        rows = tokenize_demonstrations(tokenizer, ds, 48)
    cut = rows[1]
    reply = sum(cut["response_mask"])
    assert len(cut["input_ids"]) == 48 and cut["input_ids"][0] == tokenizer.bos_token_id
    assert cut["input_ids"][-reply:] == full["input_ids"][-reply:]  # the whole reply, <|eos|> included
    assert cut["input_ids"][1:48 - reply] == full["input_ids"][-47:-reply]  # the end of the prompt
    assert cut["prompt_cut"] == len(full["input_ids"]) - 48 and cut["response_cut"] == 0
    assert not rows[0]["truncated"]
    assert rows[0]["input_ids"] == tokenize_pair(tokenizer, P, " Heat it.", 48)["input_ids"]


def test_a_reply_longer_than_max_length_is_cut_and_counted(tokenizer):
    long_reply = " Heat it." * 40
    with pytest.warns(DataWarning, match=r"2 of 3 rows .* cut from its start in 2 \(1 of them lost the whole prompt\)"
                                         r", the reply cut at its end in 1 \(first cut row: 0\)"):
        rows = tokenize_preferences(tokenizer, pairs(rejected=(0, long_reply), chosen=(2, " Heat it." * 3)), 26)
    assert rows[0]["rejected"]["prompt_kept"] == 0 and sum(rows[0]["rejected"]["response_mask"]) == 25
    assert rows[0]["rejected"]["input_ids"][-1] != tokenizer.eos_token_id  # a cut reply has lost its end
    assert rows[2]["chosen"]["prompt_kept"] > 0 and rows[2]["chosen"]["response_cut"] == 0
    with pytest.warns(DataWarning, match="1 of 1 rows"):
        counts = report_truncation([("rejected", 0, rows[0]["rejected"]), ("chosen", 0, rows[0]["chosen"])], 26, "x")
    assert counts == {"rows": 1, "prompt_cut": 1, "prompt_removed": 1, "reply_cut": 1}


def test_no_room_for_the_reply_is_an_error_naming_column_and_row(tokenizer):
    with pytest.raises(DataValidationError, match=r"^column 'completion', row 0: nothing of the reply fits in "
                                                  r"max_length=1"):
        tokenize_demonstrations(tokenizer, demos(), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataValidationError, match=r"^column 'responses', row 0: nothing of the reply"):
            tokenize_rankings(tokenizer, datasets.Dataset.from_dict(rankings()), 1)


# --- the tokenizer ----------------------------------------------------------------------------------------------------

def test_tokenizer_without_pad_token_is_refused(saved_model):
    tokenizer = load_tokenizer(saved_model)
    tokenizer.pad_token = None
    for call in (lambda: validate_tokenizer(tokenizer), lambda: tokenize_demonstrations(tokenizer, demos(), 64),
                 lambda: tokenize_comparisons(tokenizer, pairs(), 64),
                 lambda: tokenize_rankings(tokenizer, datasets.Dataset.from_dict(rankings()), 64)):
        with pytest.raises(ValueError, match=r"tokenizer\.pad_token: this tokenizer \(\w+\) has no pad token"):
            call()
    with pytest.raises(ValueError, match="pad_token_id is None"):
        pad_batch([tokenize_pair(tokenizer, P, " a", 64)], tokenizer.pad_token_id)
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(ValueError, match=r"tokenizer\.pad_token: .* uses its eos token '<\|eos\|>' as pad token"):
        tokenize_preferences(tokenizer, pairs(), 64)


# --- the trainers check their data first; the course's stages before they load a model ----------------------------

@pytest.mark.parametrize("train, expected", [
    (lambda m, t: train_sft(m, t, demos(completion=(1, ""))), "column 'completion', row 1"),
    (lambda m, t: train_reward_model(m, t, pairs(), eval_pairs=pairs(prompt=(2, ""))), "column 'prompt', row 2"),
    (lambda m, t: train_dpo(m, t, pairs(chosen=(0, None))), "column 'chosen', row 0"),
    (lambda m, t: train_rrhf(m, t, rankings(scores=(1, [0.5, math.nan]))), "column 'scores', row 1"),
    (lambda m, t: train_pro(m, t, rankings(responses=(0, [" a"]), scores=(0, [1.0]))), "column 'responses', row 0"),
])
def test_trainers_validate_their_data_first(train, expected):
    # No model and no tokenizer: reaching either would fail differently.
    with pytest.raises(DataValidationError, match=f"^{expected}: "):
        train(None, None)


@pytest.mark.parametrize("train, expected", [
    (lambda p, path, out: train_folder(p, "sft", path, demos(completion=(1, "")), out), "column 'completion', row 1"),
    (lambda p, path, out: train_folder(p, "reward", path, pairs(), out, eval_pairs=pairs(prompt=(2, ""))),
     "column 'prompt', row 2"),
    (lambda p, path, out: train_folder(p, "dpo", path, pairs(chosen=(0, None)), out), "column 'chosen', row 0"),
    (lambda p, path, out: train_folder(p, "rrhf", path, rankings(scores=(1, [0.5, math.nan])), out),
     "column 'scores', row 1"),
    (lambda p, path, out: train_folder(p, "pro", path, rankings(responses=(0, [" a"]), scores=(0, [1.0])), out),
     "column 'responses', row 0"),
])
def test_the_course_validates_training_data_before_loading_a_model(train, expected, tmp_path):
    # The model path does not exist: reaching the model loader would fail differently.
    with pytest.raises(DataValidationError, match=f"^{expected}: "):
        train(get_profile("tiny", **SMALL), tmp_path / "no-model-here", tmp_path / "out")
    assert not (tmp_path / "out").exists()
