"""HH-RLHF parsing: prompt/response split, turns, the fixture file, bad rows named by column and row."""

import json
from pathlib import Path

import datasets
import pytest

from rrhf_lite.core.preferences import (
    hh_dataset_to_preferences,
    hh_to_preference,
    load_hh_rlhf,
    parse_turns,
    split_prompt_response,
)
from rrhf_lite.core.validation import DataValidationError, validate_preference_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "hh_rlhf_sample.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_split_at_the_last_assistant_turn():
    prompt, reply = split_prompt_response("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant: Bye!")
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant:"
    assert reply == " Bye!"
    with pytest.raises(ValueError, match="no"):
        split_prompt_response("\n\nHuman: only a question")


def test_prompt_plus_reply_is_the_original_dialogue():
    for row in ROWS:
        if hh_to_preference_or_none(row):
            pref = hh_to_preference(row["chosen"], row["rejected"])
            assert pref["prompt"] + pref["chosen"] == row["chosen"]
            assert pref["prompt"] + pref["rejected"] == row["rejected"]


def hh_to_preference_or_none(row):
    try:
        return hh_to_preference(row["chosen"], row["rejected"])
    except DataValidationError:
        return None


def test_multi_turn_parse():
    turns = parse_turns(ROWS[2]["chosen"])
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[0]["content"] == "Can you help me plan a picnic?"
    assert turns[-1]["content"].startswith("Pack sandwiches")
    with pytest.raises(ValueError, match="before the first turn"):
        parse_turns("hello\n\nHuman: hi")


def test_assistant_inside_a_reply_is_not_a_turn():
    pref = hh_to_preference(ROWS[4]["chosen"], ROWS[4]["rejected"])
    assert pref["chosen"] == " Something like: Thanks, Sam (Assistant: Jo) works well."


def test_mismatched_prompts_name_column_and_row():
    with pytest.raises(DataValidationError, match=r"column 'rejected', row 3: .*differs"):
        hh_to_preference(ROWS[3]["chosen"], ROWS[3]["rejected"], row=3)
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(DataValidationError, match="row 3"):
        hh_dataset_to_preferences(ds)
    assert len(hh_dataset_to_preferences(ds, on_mismatch="skip")) == len(ROWS) - 1


def test_load_local_file_in_hh_format():
    ds = load_hh_rlhf(data_files=str(FIXTURE))
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == len(ROWS) - 1
    assert ds[1]["prompt"].endswith("How often do I water it?\n\nAssistant:")
    assert len(load_hh_rlhf(data_files=str(FIXTURE), max_rows=2)) == 2


def test_validation_names_column_and_row():
    ds = load_hh_rlhf(data_files=str(FIXTURE))
    with pytest.raises(DataValidationError, match=r"column 'rejected', row 4: expected a non-empty string"):
        validate_preference_dataset(ds)  # the last fixture row has an empty rejected reply
    with pytest.raises(DataValidationError, match=r"column 'chosen', all rows: missing"):
        validate_preference_dataset(ds.remove_columns("chosen"))
    validate_preference_dataset(ds.select(range(4)))
