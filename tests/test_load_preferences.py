"""load_preferences: a hub id or a local file/folder, in three formats told apart by the columns, to the same
prompt/chosen/rejected strings; max_rows parses nothing after the rows it keeps; bad input named by column and row."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: nothing below may need one
os.environ["HF_DATASETS_OFFLINE"] = "1"

import copy  # noqa: E402
import gzip  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

from rrhf_lite.core.logprobs import tokenize_pair  # noqa: E402
from rrhf_lite.core.models import HH_CHAT_TEMPLATE, build_tokenizer  # noqa: E402
from rrhf_lite.core.preferences import HH_RLHF, load_hh_rlhf, load_preferences  # noqa: E402
from rrhf_lite.core.validation import DataValidationError, DataWarning  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "hh_rlhf_sample.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# Two comparisons (one of them multi-turn): the messages before the reply, the chosen and the rejected reply ...
CONVERSATIONS = [
    ([user("How long should I boil an egg?")], "About nine minutes.", "Eggs come from hens."),
    ([user("Can you help me plan a picnic?"), assistant("Sure. Where?"), user("A park.")],
     "Pack sandwiches.", "I do not like picnics."),
]
# ... and what every format of them must become, written out by hand.
EXPECTED = [
    {"prompt": "\n\nHuman: How long should I boil an egg?\n\nAssistant:",
     "chosen": " About nine minutes.", "rejected": " Eggs come from hens."},
    {"prompt": "\n\nHuman: Can you help me plan a picnic?\n\nAssistant: Sure. Where?\n\nHuman: A park.\n\nAssistant:",
     "chosen": " Pack sandwiches.", "rejected": " I do not like picnics."},
]


def rows_in(fmt):
    """The comparisons as stored in format ``fmt`` (a fresh copy, for a test to spoil), with an extra column that
    must not come back."""
    return copy.deepcopy(_rows_in(fmt))


def _rows_in(fmt):
    if fmt == "hh":  # raw dialogues: prompt + reply, character for character
        return [{"chosen": e["prompt"] + e["chosen"], "rejected": e["prompt"] + e["rejected"], "id": k}
                for k, e in enumerate(EXPECTED)]
    if fmt == "strings":
        return [dict(e, gold_chosen=1.0) for e in EXPECTED]
    if fmt == "conversational":  # explicit prompt
        return [{"prompt": p, "chosen": [assistant(c)], "rejected": [assistant(r)], "id": k}
                for k, (p, c, r) in enumerate(CONVERSATIONS)]
    if fmt == "implicit":  # the prompt is what chosen and rejected share
        return [{"chosen": p + [assistant(c)], "rejected": p + [assistant(r)]} for p, c, r in CONVERSATIONS]
    raise ValueError(fmt)


OTHER_SPLIT = [{"prompt": "\n\nHuman: Other split?\n\nAssistant:", "chosen": " Yes.", "rejected": " No."}]


def write_file(path: Path, rows) -> Path:
    """``rows`` in the format that ``path``'s name says."""
    name = path.name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    elif name.endswith(".json"):  # one JSON array
        path.write_text(json.dumps(rows, indent=1))
    elif name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif name.endswith(".csv"):
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        raise ValueError(name)
    return path


def write_source(tmp_path: Path, container: str, rows) -> Path:
    """``rows`` as the train split of a source of kind ``container``; a test split holds other rows."""
    if container.startswith("file"):
        return write_file(tmp_path / f"prefs{container[len('file'):]}", rows)
    if container.startswith("folder"):
        write_file(tmp_path / f"train{container[len('folder'):]}", rows)
        write_file(tmp_path / "test.jsonl", OTHER_SPLIT)
        return tmp_path
    if container == "saved":
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    elif container == "saved_dict":
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(OTHER_SPLIT)}).save_to_disk(str(tmp_path / "saved"))
    else:
        raise ValueError(container)
    return tmp_path / "saved"


CONTAINERS = ["file.jsonl", "file.jsonl.gz", "file.json", "file.parquet", "file.csv", "folder.jsonl",
              "folder.parquet", "saved", "saved_dict"]
CASES = [(fmt, container) for fmt in ("hh", "strings", "conversational", "implicit") for container in CONTAINERS
         if not (container.endswith(".csv") and fmt in ("conversational", "implicit"))]  # CSV holds no lists


@pytest.mark.parametrize("max_rows", [None, 1])
@pytest.mark.parametrize("fmt, container", CASES)
def test_every_format_from_every_source_gives_the_same_pairs(tmp_path, fmt, container, max_rows):
    source = write_source(tmp_path, container, rows_in(fmt))
    ds = load_preferences(source, max_rows=max_rows)
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds.to_list() == EXPECTED[:max_rows]
    assert load_preferences(str(source), split="train").to_list() == EXPECTED  # a str is a path too


def test_raw_hh_rows_split_as_hh_rlhf_is(capsys):
    original = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    with pytest.warns(DataWarning, match="empty replies"):  # the last fixture row's rejected reply is empty
        ds = load_preferences(FIXTURE)
    assert "dropped 1 of 6 rows" in capsys.readouterr().out  # row 3: its two dialogues have different prompts
    kept = original[:3] + original[4:]
    assert len(ds) == len(kept)
    for pair, row in zip(ds, kept):
        assert pair["prompt"] + pair["chosen"] == row["chosen"]
        assert pair["prompt"] + pair["rejected"] == row["rejected"]
    assert ds[2]["prompt"].count("\n\nHuman:") == 3  # the multi-turn picnic
    with pytest.warns(DataWarning):
        assert load_hh_rlhf(data_files=str(FIXTURE)).to_list() == ds.to_list()


def test_a_folder_reads_the_files_of_the_split(tmp_path):
    write_file(tmp_path / "train-00000-of-00002.jsonl", rows_in("strings")[:1])
    write_file(tmp_path / "train-00001-of-00002.jsonl", rows_in("strings")[1:])
    write_file(tmp_path / "test.jsonl.gz", OTHER_SPLIT)
    (tmp_path / "README.md").write_text("not data")
    assert load_preferences(tmp_path).to_list() == EXPECTED  # both train files, in the order of their names
    assert load_preferences(tmp_path, max_rows=2).to_list() == EXPECTED  # max_rows across the files
    assert load_preferences(tmp_path, split="test").to_list() == OTHER_SPLIT
    with pytest.raises(FileNotFoundError, match=r"no file for split 'validation'.*'test.jsonl.gz', "
                                                r"'train-00000-of-00002.jsonl'.*one of \['test', 'train'\]"):
        load_preferences(tmp_path, split="validation")
    write_file(tmp_path / "test.parquet", OTHER_SPLIT)
    with pytest.raises(ValueError, match="split 'test' has files of different formats"):
        load_preferences(tmp_path, split="test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no file for split 'train'.*none ending in"):
        load_preferences(empty)


def test_a_saved_dataset_dict_reads_the_split(tmp_path):
    source = write_source(tmp_path, "saved_dict", rows_in("hh"))
    assert load_preferences(source, split="test").to_list() == OTHER_SPLIT
    with pytest.raises(KeyError, match=r"no split 'validation'; its splits are \['train', 'test'\]"):
        load_preferences(source, split="validation")


def test_a_single_file_is_read_whatever_the_split(tmp_path):
    source = write_file(tmp_path / "prefs.jsonl", rows_in("strings"))
    assert load_preferences(source, split="test").to_list() == EXPECTED


@pytest.fixture(scope="module")
def tokenizer():
    """A tokenizer like the package's own models' (``<|bos|>``, ``<|eos|>``, the HH chat template)."""
    dialogues = [e["prompt"] + e["chosen"] + e["prompt"] + e["rejected"] for e in EXPECTED]
    return build_tokenizer(dialogues * 50, vocab_size=300)


@pytest.mark.parametrize("fmt", ["conversational", "implicit"])
def test_the_hh_chat_template_renders_what_the_hh_format_writes(tmp_path, tokenizer, fmt):
    assert tokenizer.chat_template == HH_CHAT_TEMPLATE
    source = write_file(tmp_path / "prefs.jsonl", rows_in(fmt))
    assert load_preferences(source, tokenizer=tokenizer).to_list() == EXPECTED == load_preferences(source).to_list()
    # The template writes <|bos|> before the prompt and <|eos|> after the reply; they were cut from the text, so
    # that tokenize_pair's own <|bos|> and <|eos|> make exactly the template's tokens, each special token once.
    prompt, reply = CONVERSATIONS[1][0], assistant(CONVERSATIONS[1][1])
    rendered = tokenizer.apply_chat_template(prompt + [reply], tokenize=False)
    pair = load_preferences(source, tokenizer=tokenizer)[1]
    ids = tokenize_pair(tokenizer, pair["prompt"], pair["chosen"], max_length=1000)["input_ids"]
    assert tokenizer.decode(ids) == rendered
    assert ids.count(tokenizer.bos_token_id) == 1 and ids.count(tokenizer.eos_token_id) == 1


CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_another_chat_template_renders_its_own_format(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", CHATML)
    rows = rows_in("implicit")
    rows[0]["chosen"].insert(0, {"role": "system", "content": "Be brief."})  # a template can render any role
    rows[0]["rejected"].insert(0, {"role": "system", "content": "Be brief."})
    ds = load_preferences(write_file(tmp_path / "prefs.jsonl", rows), tokenizer=tokenizer)
    assert ds.to_list() == [
        {"prompt": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow long should I boil an egg?"
                   "<|im_end|>\n<|im_start|>assistant\n",
         "chosen": "About nine minutes.<|im_end|>\n", "rejected": "Eggs come from hens.<|im_end|>\n"},
        {"prompt": "<|im_start|>user\nCan you help me plan a picnic?<|im_end|>\n<|im_start|>assistant\nSure. Where?"
                   "<|im_end|>\n<|im_start|>user\nA park.<|im_end|>\n<|im_start|>assistant\n",
         "chosen": "Pack sandwiches.<|im_end|>\n", "rejected": "I do not like picnics.<|im_end|>\n"},
    ]
    # A template that ends a reply with the eos token (and a newline): both are cut, tokenize_pair adds the eos.
    monkeypatch.setattr(tokenizer, "chat_template", CHATML.replace(
        "<|im_end|>\n{% endfor %}",
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}\n{% endfor %}"))
    ds = load_preferences(write_file(tmp_path / "prefs.jsonl", rows), tokenizer=tokenizer)
    assert ds["chosen"] == ["About nine minutes.", "Pack sandwiches."]


def test_a_tokenizer_without_chat_template_falls_back_to_the_hh_format(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    source = write_file(tmp_path / "prefs.jsonl", rows_in("conversational"))
    assert load_preferences(source, tokenizer=tokenizer).to_list() == EXPECTED
    rows = rows_in("conversational")
    rows[1]["prompt"].insert(0, {"role": "system", "content": "Be brief."})
    source = write_file(tmp_path / "system.jsonl", rows)
    with pytest.raises(DataValidationError, match=r"column 'prompt', row 1: message 0 has role 'system'"):
        load_preferences(source, tokenizer=tokenizer)


def test_conversations_that_do_not_split_into_prompt_and_reply_are_named(tmp_path, tokenizer):
    def fails(rows, match, **kwargs):
        with pytest.raises(DataValidationError, match=match):
            load_preferences(write_file(tmp_path / "bad.jsonl", rows), **kwargs)

    rows = rows_in("implicit")
    rows[1]["rejected"][0] = user("Can you help me plan a barbecue?")
    fails(rows, r"column 'rejected', row 1: its messages before the last reply differ from the chosen one's")
    rows = rows_in("implicit")
    rows[0]["chosen"].append(user("Thanks!"))
    fails(rows, r"column 'chosen', row 0: its last message is from 'user'; a conversation must end with the "
                r"assistant's reply")
    rows = rows_in("conversational")
    rows[1]["rejected"] = [{"role": "assistant", "text": "Play snap."}]
    fails(rows, r"column 'rejected', row 1: message 0: expected \{'role': str, 'content': str\}")
    rows = rows_in("conversational")
    rows[1]["prompt"] = []
    fails(rows, r"column 'prompt', row 1: no messages before the reply: the prompt is empty")
    rows = rows_in("conversational")
    rows[0]["prompt"].insert(0, {"role": "system", "content": "Be brief."})
    fails(rows, r"column 'prompt', row 0: the tokenizer's chat template failed: roles must be user or assistant",
          tokenizer=tokenizer)  # the HH template allows no system message


def test_a_template_that_cannot_be_cut_into_prompt_and_reply_is_named(tmp_path, tokenizer, monkeypatch):
    # Writes the number of messages first: the prompt's rendering is no prefix of the conversation's.
    monkeypatch.setattr(tokenizer, "chat_template", "{{ messages | length }}" + CHATML)
    with pytest.raises(DataValidationError, match=r"column 'chosen', row 0: the chat template renders the "
                                                  r"conversation as .* which does not start with"):
        load_preferences(write_file(tmp_path / "prefs.jsonl", rows_in("implicit")), tokenizer=tokenizer)


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.jsonl.gz", "folder"])
def test_max_rows_parses_nothing_after_the_rows_it_keeps(tmp_path, name):
    rows = [dict(EXPECTED[k % 2], chosen=f" Reply {k}.") for k in range(20_000)]
    path = tmp_path / ("train.jsonl" if name == "folder" else name)
    write_file(path, rows)
    with path.open("ab") if not name.endswith(".gz") else gzip.open(path, "ab") as f:
        f.write(b'{"prompt": "a corrupt line, never parsed\n')
    source = tmp_path if name == "folder" else path
    ds = load_preferences(source, max_rows=5)
    assert ds.to_list() == rows[:5]
    assert len(load_preferences(source, max_rows=20_000)) == 20_000  # the last good row, not one more
    with pytest.raises(ValueError, match=r"train.jsonl', line 20001: not valid JSON" if name == "folder" else
                       rf"{name}', line 20001: not valid JSON"):  # the whole file: its bad line is read, and named
        load_preferences(source)


def test_a_corrupt_line_among_the_kept_rows_is_named(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(EXPECTED[0]) + "\n\n" + "{not json\n")
    assert load_preferences(path, max_rows=1).to_list() == EXPECTED[:1]
    with pytest.raises(ValueError, match=r"prefs.jsonl', line 3: not valid JSON"):  # line 2 is blank
        load_preferences(path, max_rows=2)


def test_a_hub_id_is_streamed_when_max_rows_is_given(monkeypatch):
    calls = []

    def endless():  # a dataset that never ends: only streaming and taking the first rows can finish
        for k in itertools.count():
            yield {"chosen": f"\n\nHuman: Q{k}?\n\nAssistant: Yes.", "rejected": f"\n\nHuman: Q{k}?\n\nAssistant: No."}

    def fake_load_dataset(path, split=None, streaming=False, **kwargs):
        calls.append((path, split, streaming, *kwargs.values()))
        if streaming:
            return datasets.IterableDataset.from_generator(endless)
        return datasets.Dataset.from_list(list(itertools.islice(endless(), 4)))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_preferences("someone/prefs", split="test", max_rows=3)
    assert calls == [("someone/prefs", "test", True)]
    assert ds.to_list() == [{"prompt": f"\n\nHuman: Q{k}?\n\nAssistant:", "chosen": " Yes.", "rejected": " No."}
                            for k in range(3)]
    assert len(load_preferences("someone/prefs", split="test")) == 4
    assert calls[-1] == ("someone/prefs", "test", False)
    assert len(load_hh_rlhf(max_rows=2)) == 2 and calls[-1] == (HH_RLHF, "train", True)
    load_preferences("someone/prefs", split="test", max_rows=2, revision="abc123")  # a pinned commit reaches the hub
    assert calls[-1] == ("someone/prefs", "test", True, "abc123")


def test_an_unknown_format_names_the_column_and_the_accepted_formats(tmp_path):
    def fails(rows, match):
        with pytest.raises(DataValidationError, match=match):
            load_preferences(write_file(tmp_path / "bad.jsonl", rows))

    accepted = r".*accepted formats: raw HH-RLHF dialogues"
    fails([{"chosen": "Yes.", "rejected": "No."}],
          r"column 'prompt', all rows: missing; the dataset has \['chosen', 'rejected'\]" + accepted)
    fails([{"prompt": "Q?", "chosen": "Yes."}], r"column 'rejected', all rows: missing" + accepted)
    fails([{"prompt": "Q?", "chosen": 1, "rejected": 2}], r"column 'chosen', row 0: expected a string or a list of "
                                                          r"messages, got 1 \(int\)" + accepted)
    fails([{"prompt": [user("Q?")], "chosen": "Yes.", "rejected": "No."}], r"column 'prompt', row 0: expected a "
                                                                            r"string" + accepted)


def test_bad_values_are_named_by_column_and_row(tmp_path):
    rows = rows_in("strings")
    rows[1]["prompt"] = " "
    with pytest.raises(DataValidationError, match=r"column 'prompt', row 1: expected a non-empty string"):
        load_preferences(write_file(tmp_path / "bad.jsonl", rows))
    rows = rows_in("strings")
    rows[1]["rejected"] = None
    with pytest.raises(DataValidationError, match=r"column 'rejected', row 1: expected a string, got None"):
        load_preferences(write_file(tmp_path / "bad.jsonl", rows))
    rows = rows_in("hh")
    rows[1]["rejected"] = None
    with pytest.raises(DataValidationError, match=r"column 'rejected', row 1: expected a string, got None"):
        load_preferences(write_file(tmp_path / "bad.jsonl", rows))
    rows = rows_in("strings")
    rows[0]["chosen"] = ""
    with pytest.warns(DataWarning, match=r"empty replies \(1 in 'chosen', of 2 rows\) are kept"):
        assert load_preferences(write_file(tmp_path / "empty.jsonl", rows))[0]["chosen"] == ""


def test_sources_that_are_not_there_or_not_data(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file or folder: 'nowhere/prefs.jsonl'"):
        load_preferences("nowhere/prefs.jsonl")
    # a mistyped local folder shaped like a hub id (owner/name) is not looked up on the hub when its first part is a
    # folder here; nor is anything with more than one "/", or a bare name
    (tmp_path / "data").mkdir()
    for typo in ("data/my-prefs", "data/my/prefs", "my-prefs"):
        with pytest.raises(FileNotFoundError, match=f"no such file or folder: '{typo}'"):
            with monkeypatch.context() as m:
                m.chdir(tmp_path)
                load_preferences(typo)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot read this kind of file"):
        load_preferences(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="max_rows must be a positive number"):
        load_preferences(FIXTURE, max_rows=0)
    for wrong in (True, 2.5, "3"):  # read as 1 row, 2 rows (JSON Lines) and an error deep in datasets before
        with pytest.raises(ValueError, match=rf"max_rows must be a positive number of rows .*got {wrong!r}"):
            load_preferences(FIXTURE, max_rows=wrong)


# --- bad files: each named with its file and, where there is one, its line or row ---------------------------------
def test_text_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(json.dumps(EXPECTED[0]).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    for max_rows in (None, 5):
        with pytest.raises(ValueError, match=r"prefs.jsonl', line 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
            load_preferences(path, max_rows=max_rows)
    array = tmp_path / "prefs.json"
    array.write_bytes(b'[\n{"prompt": "caf\xe9"}\n]')
    with pytest.raises(ValueError, match=r"prefs.json', line 2: not UTF-8 text"):
        load_preferences(array)


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json", "prefs.jsonl.gz"])
def test_a_file_saved_by_a_windows_editor_is_read_byte_order_mark_and_crlf_aside(tmp_path, name):
    """Notepad and Excel's "CSV UTF-8" start a file with a byte order mark; it was refused as 'not valid JSON' on
    line 1 (a CSV with one was read)."""
    rows = [dict(row) for row in EXPECTED]
    text = json.dumps(rows, indent=1) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows)
    data = b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    for max_rows in (None, 1):
        assert [dict(r) for r in load_preferences(path, max_rows=max_rows)] == rows[:max_rows]


def test_an_empty_file_and_a_fake_gzip_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    for max_rows in (None, 3):
        with pytest.raises(ValueError, match=r"empty.jsonl': no rows"):
            load_preferences(tmp_path / "empty.jsonl", max_rows=max_rows)
    fake = tmp_path / "prefs.jsonl.gz"
    fake.write_text(json.dumps(EXPECTED[0]) + "\n")  # plain text under a .gz name
    with pytest.raises(ValueError, match=r"prefs.jsonl.gz': cannot be read \(BadGzipFile.*must be a gzip"):
        load_preferences(fake)


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json"])
def test_a_column_whose_values_change_type_is_named_not_converted(tmp_path, name):
    """A number among strings: named with its line (JSON Lines) or row (an array), with or without max_rows; a JSON
    array read with max_rows used to turn the column into JSON text ('" yes"', '5') without a word."""
    rows = [dict(EXPECTED[0]), dict(EXPECTED[1], rejected=5)]
    path = tmp_path / name
    path.write_text(json.dumps(rows, indent=1) if name.endswith(".json") else
                    "".join(json.dumps(r) + "\n" for r in rows))
    where = r"line 2" if name.endswith(".jsonl") else r"row 1"
    for max_rows in (None, 2):
        with pytest.raises(DataValidationError, match=rf"column 'rejected', row 1: '.*{name}', {where}: a number "
                                                     rf"\(5\), where .* holds a string"):
            load_preferences(path, max_rows=max_rows)


def test_raw_hh_rows_that_cannot_be_split_are_dropped_with_their_own_reason(tmp_path, capsys):
    h = "\n\nHuman: hi\n\nAssistant: yo"
    rows = [{"chosen": h, "rejected": h + " a"}, {"chosen": "\n\nHuman: no reply", "rejected": h},
            {"chosen": h, "rejected": "\n\nHuman: other\n\nAssistant: z"}]
    kept = load_preferences(write_file(tmp_path / "hh.jsonl", rows))
    assert len(kept) == 1
    said = capsys.readouterr().out
    assert "dropped 2 of 3 rows" in said and "no Assistant turn in 'chosen' (first: row 1)" in said
    assert "the chosen and rejected prompts differ (first: row 2)" in said
